"""The lb compiler's incremental state: objects in, changed intents out.  Pure.

Updates only mark what they touch dirty (a Service and its slices mark that
Service; a Node marks its addresses and, when its zone changes or it comes or
goes, the Services using topology hints); :meth:`LbCompiler.flush` recompiles
the dirty parts and returns the intents whose value changed, ``None`` for the
keys that must go.  Equal inputs give equal outputs whatever the order, split
or coalescing of the updates (the tests replay them reversed, split and
squashed).

Seeding: the lb service hands :meth:`LbCompiler.seed` the intents already in KV
before the first flush.  They keep their service-port ids, and the first flush
deletes those nothing produces any more (the stale sweep, done only once the
watcher's inventory is in sync).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from xpunet.ir.lb import (
    CONNTRACK_KEY,
    GLOBAL_SERVICE_PREFIX,
    ConntrackTimeouts,
    LbIntent,
    LbRejection,
    LbServicePort,
    rejected_status_key,
)
from xpunet.lb.compiler import Identities, TableCache, compile_node, compile_service, with_tables
from xpunet.lb.endpoints import ParsedSlice, likely_identities, parse_slice
from xpunet.lb.ids import ServicePortIds
from xpunet.lb.maglev import build_table
from xpunet.model.objects import EndpointSlice, Kind, Node, Service

logger = logging.getLogger(__name__)

ServiceRef = tuple[str, str]  # (namespace, name)
Owner = tuple[str, ...]  # ("svc", ns, name) | ("node", name) | ("conntrack",)
CONNTRACK_OWNER: Owner = ("conntrack",)

TableBuilder = Callable[[Sequence[Identities]], Sequence[tuple[int, ...]]]
"""Builds the Maglev tables of many backend sets at once (``build_table`` of each, in order)."""


def build_tables(idents: Sequence[Identities]) -> list[tuple[int, ...]]:
    """The sequential :data:`TableBuilder`."""
    return [build_table(ident) for ident in idents]


@dataclass(slots=True)
class Changes:
    """The result of a flush: intents to write (``None``: delete) and rejection reports."""

    intents: dict[str, LbIntent | None] = field(default_factory=dict)
    status: dict[str, LbRejection | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.intents or self.status)


class LbCompiler:
    def __init__(
        self,
        *,
        conntrack: ConntrackTimeouts | None = None,
        table_builder: TableBuilder = build_tables,
        prefetch: Callable[[Identities], None] | None = None,
    ) -> None:
        """``table_builder`` builds each flush's missing Maglev tables; ``prefetch`` (optional) is
        told the tables a new EndpointSlice will likely need, so they can be built meanwhile."""
        self._conntrack = conntrack or ConntrackTimeouts()
        self._build_tables = table_builder
        self._prefetch = prefetch
        self._services: dict[ServiceRef, Service] = {}
        self._slices: dict[tuple[str, str], ParsedSlice] = {}
        self._slices_of: dict[ServiceRef, set[str]] = {}
        self._nodes: dict[str, Node] = {}
        self._topology_services: set[ServiceRef] = set()
        self._ids = ServicePortIds()
        self._out: dict[str, LbIntent] = {}
        self._keys_of: dict[Owner, set[str]] = {}
        self._tables_of: dict[ServiceRef, TableCache] = {}
        self._status: dict[str, LbRejection] = {}
        self._unowned: set[str] = set()
        self._unowned_status: set[str] = set()
        self._dirty: set[Owner] = {CONNTRACK_OWNER}

    # --- input -----------------------------------------------------------

    def seed(self, intents: Mapping[str, LbIntent], status: Mapping[str, LbRejection] | None = None) -> None:
        """Adopt what KV already holds (before the first flush): ids are kept, stale keys swept later."""
        for key, value in sorted(intents.items()):
            self._out[key] = value
            self._unowned.add(key)
            suffix = key[len(GLOBAL_SERVICE_PREFIX) :]
            if (
                isinstance(value, LbServicePort)
                and key.startswith(GLOBAL_SERVICE_PREFIX)
                and not self._ids.seed(suffix, value.id)
            ):
                logger.warning("lb: ignoring id %s of %s (out of range or taken)", value.id, key)
        for key, rejection in (status or {}).items():
            self._status[key] = rejection
            self._unowned_status.add(key)

    def update(self, obj: Service | EndpointSlice | Node) -> None:
        if isinstance(obj, Service):
            ref = (obj.namespace, obj.name)
            if self._services.get(ref) != obj:
                self._services[ref] = obj
                self._dirty.add(("svc", *ref))
        elif isinstance(obj, EndpointSlice):
            self._update_slice(obj)
        else:
            self._update_node(obj)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        if kind is Kind.SERVICE and namespace is not None:
            if self._services.pop((namespace, name), None) is not None:
                self._dirty.add(("svc", namespace, name))
        elif kind is Kind.ENDPOINT_SLICE and namespace is not None:
            old = self._slices.pop((namespace, name), None)
            if old is not None and old.slice.service is not None:
                self._detach(namespace, old.slice.service, name)
        elif kind is Kind.NODE and self._nodes.pop(name, None) is not None:
            self._dirty.add(("node", name))
            self._dirty.update(("svc", *ref) for ref in self._topology_services)

    def _update_slice(self, es: EndpointSlice) -> None:
        old = self._slices.get((es.namespace, es.name))
        if old is not None and old.slice == es:
            return
        parsed = parse_slice(es)
        self._slices[(es.namespace, es.name)] = parsed
        if self._prefetch is not None:
            for ident in likely_identities(parsed):
                self._prefetch(ident)
        if old is not None and old.slice.service is not None and old.slice.service != es.service:
            self._detach(es.namespace, old.slice.service, es.name)
        if es.service is not None:
            self._slices_of.setdefault((es.namespace, es.service), set()).add(es.name)
            self._dirty.add(("svc", es.namespace, es.service))

    def _detach(self, namespace: str, service: str, slice_name: str) -> None:
        names = self._slices_of.get((namespace, service))
        if names is not None:
            names.discard(slice_name)
            if not names:
                del self._slices_of[(namespace, service)]
        self._dirty.add(("svc", namespace, service))

    def _update_node(self, node: Node) -> None:
        old = self._nodes.get(node.name)
        if old == node:
            return
        self._nodes[node.name] = node
        self._dirty.add(("node", node.name))
        if old is None or old.zone != node.zone:
            self._dirty.update(("svc", *ref) for ref in self._topology_services)

    # --- output ----------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._dirty) or bool(self._unowned) or bool(self._unowned_status)

    def intents(self) -> Mapping[str, LbIntent]:
        """Every intent as of the last flush."""
        return self._out

    def rejections(self) -> Mapping[str, LbRejection]:
        return self._status

    def flush(self) -> Changes:
        """Recompile what is dirty; return changed intents and status reports, and sweep stale seeds."""
        changes = Changes()
        released: list[str] = []
        # Two passes: compile every dirty owner with the Maglev tables nobody has
        # yet left as placeholders, build those in one batch (deduplicated across
        # Services; the builder may spread a cold start's thousands over several
        # processes), then put them in and diff.
        missing: set[Identities] = set()
        compiled = [(owner, *self._compile_owner(owner, missing)) for owner in sorted(self._dirty)]
        self._dirty.clear()
        if missing:
            idents = sorted(missing)
            built = dict(zip(idents, self._build_tables(idents), strict=True))
            for owner, new, _ in compiled:
                tables = self._tables_of.get((owner[1], owner[2])) if owner[0] == "svc" else None
                if tables and any(not t for t in tables.values()):
                    self._tables_of[(owner[1], owner[2])] = {i: t or built[i] for i, t in tables.items()}
                    for key, value in new.items():
                        new[key] = with_tables(value, built)
        for owner, new, rejection in compiled:
            self._replace(owner, new, changes, released)
            if owner[0] == "svc":
                self._report(owner[1], owner[2], rejection, changes)
        for key in sorted(self._unowned):
            changes.intents[key] = None
            self._out.pop(key, None)
            if key.startswith(GLOBAL_SERVICE_PREFIX):
                released.append(key[len(GLOBAL_SERVICE_PREFIX) :])
        self._unowned.clear()
        for key in sorted(self._unowned_status):
            changes.status[key] = None
            self._status.pop(key, None)
        self._unowned_status.clear()
        # Ids are freed after the whole flush so one flush never hands a freed id to another port.
        for suffix in released:
            self._ids.release(suffix)
        return changes

    def _compile_owner(
        self, owner: Owner, missing: set[Identities]
    ) -> tuple[dict[str, LbIntent], LbRejection | None]:
        if owner == CONNTRACK_OWNER:
            return {CONNTRACK_KEY: self._conntrack}, None
        if owner[0] == "node":
            node = self._nodes.get(owner[1])
            if node is None:
                return {}, None
            key, value = compile_node(node)
            return {key: value}, None
        ns, name = owner[1], owner[2]
        ref = (ns, name)
        svc = self._services.get(ref)
        if svc is None:
            self._topology_services.discard(ref)
            self._tables_of.pop(ref, None)
            return {}, None
        slices = [self._slices[(ns, s)] for s in sorted(self._slices_of.get(ref, ()))]
        tables: TableCache = {}
        out = compile_service(
            svc,
            slices,
            self._nodes,
            self._ids.get,
            tables=tables,
            previous_tables=self._tables_of.get(ref),
            missing=missing,
        )
        self._tables_of[ref] = tables
        if out.uses_topology:
            self._topology_services.add(ref)
        else:
            self._topology_services.discard(ref)
        rejection = LbRejection(ns, name, tuple(out.problems)) if out.problems else None
        return out.intents, rejection

    def _replace(self, owner: Owner, new: dict[str, LbIntent], changes: Changes, released: list[str]) -> None:
        old_keys = self._keys_of.get(owner, set())
        for key, value in new.items():
            self._unowned.discard(key)
            if self._out.get(key) != value:
                self._out[key] = value
                changes.intents[key] = value
        for key in old_keys - new.keys():
            self._out.pop(key, None)
            changes.intents[key] = None
            if key.startswith(GLOBAL_SERVICE_PREFIX):
                released.append(key[len(GLOBAL_SERVICE_PREFIX) :])
        if new:
            self._keys_of[owner] = set(new)
        else:
            self._keys_of.pop(owner, None)

    def _report(self, ns: str, name: str, rejection: LbRejection | None, changes: Changes) -> None:
        key = rejected_status_key(ns, name)
        self._unowned_status.discard(key)
        if rejection is None:
            if key in self._status:
                del self._status[key]
                changes.status[key] = None
        elif self._status.get(key) != rejection:
            self._status[key] = rejection
            changes.status[key] = rejection
            logger.warning("lb: rejected input of service %s/%s: %s", ns, name, "; ".join(rejection.problems))


def replay(compiler: LbCompiler, updates: Iterable[Service | EndpointSlice | Node]) -> Changes:
    """Apply updates then flush (a convenience for tests and benchmarks)."""
    for obj in updates:
        compiler.update(obj)
    return compiler.flush()
