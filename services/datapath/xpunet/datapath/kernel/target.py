"""The kernel target: pipeline entries programmed into a network namespace's nftables and routes.

``KernelTarget`` offers ``apply`` (an ordered batch), ``read`` (what is
applied), ``reconcile`` (with a desired entry set) and ``counters``; the
datapath reaches it through ``xpunet.datapath.kernel_adapter`` (its Target
protocol).  The translation is the pure
``KernelState``; this class only sequences it with the two adapters:

* each ``apply`` is one nftables transaction of element and counter
  adds/deletes (never a table flush; libnftables in-process, or the ``nft``
  binary where the library is missing), then the route changes over netlink;
* ``reconcile`` reads back the table and the xpunet-protocol routes, and
  changes only what differs from the desired entries — after a datapath
  restart nothing that is already right is touched, so traffic keeps flowing.

An nft failure leaves the kernel as it was (the transaction is atomic) and the
state is rolled back to match; a failed route is reported in the result and
redone by the next ``reconcile``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from xpunet.datapath.kernel.codec import delete_keys_script, parse_map_elements, parse_table, script
from xpunet.datapath.kernel.links import Overlay
from xpunet.datapath.kernel.nft import BackendName, Nft, choose_backend
from xpunet.datapath.kernel.render import (
    AFFINITY_LIVE,
    COUNTER,
    CT_TIMEOUT,
    ROUTE,
    VIRTUAL,
    Delta,
    Items,
    KernelState,
    counter_name,
)
from xpunet.datapath.kernel.routes import Routes
from xpunet.datapath.kernel.ruleset import (
    AFFINITY_GROUP_MASK,
    CONTAINERS,
    MARKER_COUNTER,
    STATIC_COUNTERS,
    bootstrap_script,
)
from xpunet.datapath.kernel.vxlan import DEFAULT_IFNAME, FDB, LINK, NEIGH
from xpunet.p4rt.errors import TargetError
from xpunet.pipeline.diff import Batch, Update
from xpunet.pipeline.entries import EntryKey, TableEntry

log = logging.getLogger(__name__)
OVERLAY = frozenset({LINK, FDB, NEIGH})

AffinityPurges = dict[tuple[int, int], frozenset[tuple[int, int]]]
"""(IP version, backend group) → the group's backends now (empty: the group is gone)."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one apply or reconcile changed in the target, and what it could not do."""

    added: int = 0
    deleted: int = 0
    problems: tuple[str, ...] = ()  # entries the target cannot express (left out: fail closed)
    route_errors: tuple[str, ...] = ()


LARGE_DELTA = 20_000
"""An apply or reconcile changing at least this many kernel items (from empty, a resync at scale)
freezes the heap once the new state is built (see :func:`_keep_long_lived`)."""


def _affinity_purges(delta: Delta) -> AffinityPurges:
    """Affinity groups that lost a backend (or went away) in ``delta``."""
    out: AffinityPurges = {}
    for (container, key), old in delta.delete.items():
        if container != AFFINITY_LIVE:
            continue
        live = frozenset(cast(tuple[tuple[int, int], ...], delta.add.get((container, key), ())))
        if set(cast(tuple[tuple[int, int], ...], old)) - live:
            out[cast(tuple[int, int], key)] = live
    return out


def _keep_long_lived(delta: Delta) -> None:
    # The state just grew by hundreds of thousands of long-lived objects that hold no cycles (entries,
    # tuples, dicts).  Left alone, the next full collection walks all of them (~0.5 s at 10,000
    # services) inside whatever runs next, e.g. the next change.  gc.freeze() moves every tracked
    # object to the permanent generation: collections ignore them, reference counting still frees
    # them when they are replaced.  Cyclic garbage that exists at this moment would never be
    # collected; a freeze happens only on such large applies, so that stays bounded.
    if len(delta) >= LARGE_DELTA:
        gc.freeze()


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # Rendering a large batch allocates hundreds of thousands of small tuples and no cycles: the
    # cyclic collector would otherwise take more than half of the time of a from-empty apply.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class KernelTarget:
    """Programs ``netns`` (empty: this process's namespace).

    ``port_names`` maps vNIC port ids to interface names in that namespace.
    ``nft_backend``: ``"lib"`` (libnftables in-process) or ``"process"`` (the
    ``nft`` binary); None picks libnftables when it is installed.
    """

    def __init__(
        self,
        *,
        netns: str = "",
        port_names: Mapping[int, str] | None = None,
        nft_backend: BackendName | None = None,
        vxlan_ifname: str = DEFAULT_IFNAME,
    ) -> None:
        self.netns = netns
        self.state = KernelState(port_names, vxlan_ifname=vxlan_ifname)
        self._nft = Nft(netns, backend=choose_backend(netns, nft_backend))
        self._routes = Routes(netns)
        self._overlay = Overlay(netns, vxlan_ifname)
        self._started = False

    async def start(self) -> None:
        """Give the table its chains and containers if they are missing or of another version."""
        doc = await self._nft.list_table()
        view = parse_table(doc) if doc is not None else None
        current = view is not None and MARKER_COUNTER in view.counters
        if view is not None and current and CONTAINERS.keys() <= view.containers.keys():
            self._started = True
            return
        log.info("kernel target %s: installing the xpunet ruleset", self.netns or "(own namespace)")
        await self._nft.run_script(
            bootstrap_script(
                existing_containers=view.containers if view else {},
                existing_counters=frozenset(view.counters) if view else frozenset(),
            )
        )
        self._started = True

    async def close(self) -> None:
        await self._nft.close()
        await self._routes.close()
        await self._overlay.close()

    async def _commit(self, delta: Delta) -> list[str]:
        t0 = time.perf_counter()
        with _no_gc():
            text = script(delta)
        t1 = time.perf_counter()
        await self._nft.apply_text(text)
        t2 = time.perf_counter()
        rdel = {k: v for k, v in delta.delete.items() if k[0] == ROUTE}
        radd = {k: v for k, v in delta.add.items() if k[0] == ROUTE}
        odel = {k: v for k, v in delta.delete.items() if k[0] in OVERLAY}
        oadd = {k: v for k, v in delta.add.items() if k[0] in OVERLAY}
        # The device, FDB and neighbours before the routes through them; gone after them.
        errors = await self._overlay.apply_adds(oadd, odel) if oadd else []
        errors += await self._routes.apply(rdel, radd) if rdel or radd else []
        errors += await self._overlay.apply_deletes(odel, oadd) if odel else []
        purges = _affinity_purges(delta)
        if purges:
            await self.purge_affinity(purges)
        log.debug(
            "kernel target %s: %d items: encode %.1f ms, nft %.1f ms, routes %.1f ms",
            self.netns or "(own namespace)",
            len(delta),
            (t1 - t0) * 1e3,
            (t2 - t1) * 1e3,
            (time.perf_counter() - t2) * 1e3,
        )
        return errors

    def _problems(self) -> tuple[str, ...]:
        return tuple(p for ps in self.state.problems.values() for p in ps)

    async def apply(self, batch: Batch) -> ApplyResult:
        """Apply the batch's updates as one nft transaction (phases need no separate writes here)."""
        if not self._started:
            await self.start()
        updates = batch.updates
        with _no_gc():
            # What each touched key held before, for the rollback (None: the key was new).
            get = self.state.entries.get
            before = [get(u.entry.key) for u in updates]
            delta = self.state.update(updates)
            _keep_long_lived(delta)
        try:
            route_errors = await self._commit(delta)
        except Exception:
            # The nft transaction did not apply (it is atomic): undo in reverse order, so a key the
            # batch touched twice ends as it began.
            with _no_gc():
                undo = [
                    Update("INSERT", old) if old is not None else Update("DELETE", u.entry)
                    for u, old in zip(reversed(updates), reversed(before), strict=True)
                ]
                self.state.update(undo)
            raise
        return ApplyResult(len(delta.add), len(delta.delete), self._problems(), tuple(route_errors))

    async def set_port_names(self, names: Mapping[int, str]) -> ApplyResult:
        """Change which interface a vNIC port id is (the datapath calls this as vNICs come and go)."""
        delta = self.state.set_port_names(names)
        route_errors = await self._commit(delta)
        return ApplyResult(len(delta.add), len(delta.delete), self._problems(), tuple(route_errors))

    async def read(self) -> list[TableEntry]:
        """The entries applied through this target (the kernel holds their translation, not the entries)."""
        return list(self.state.entries.values())

    async def actual_items(self) -> Items:
        """The kernel's current items: xpunet's table elements and counters, and xpunet routes."""
        doc = await self._nft.list_table()
        items: Items = parse_table(doc).items if doc is not None else {}
        items.update(await self._routes.read())
        items.update(await self._overlay.read())
        return items

    async def reconcile(self, desired: Iterable[TableEntry]) -> ApplyResult:
        """Make the kernel implement exactly ``desired``, changing only what differs."""
        await self.start()
        with _no_gc():
            _keep_long_lived(self.state.replace_all(desired))
            want = self.state.items()
        have = await self.actual_items()
        static = {(COUNTER, (n,)) for n in (*STATIC_COUNTERS, MARKER_COUNTER)}
        delta = Delta()
        for k, v in have.items():
            if k in static:
                continue
            # Timeout policies are named by their content: present is right.
            if want.get(k, delta) != v and not (k[0] == CT_TIMEOUT and k in want):
                delta.delete[k] = v
        for k, v in want.items():
            if k[0] in VIRTUAL:
                continue
            if have.get(k, delta) != v and not (k[0] == CT_TIMEOUT and k in have):
                delta.add[k] = v
        route_errors = await self._commit(delta)
        # Backends that left while no datapath ran: their learned affinity entries too.
        live = {
            cast(tuple[int, int], k[1]): frozenset(cast(tuple[tuple[int, int], ...], v))
            for k, v in want.items()
            if k[0] == AFFINITY_LIVE
        }
        await self.purge_affinity(live, complete=True)
        if delta:
            log.info(
                "kernel target %s: reconciled, %d added, %d deleted",
                self.netns or "(own namespace)",
                len(delta.add),
                len(delta.delete),
            )
        return ApplyResult(len(delta.add), len(delta.delete), self._problems(), tuple(route_errors))

    async def purge_affinity(self, purges: AffinityPurges, *, complete: bool = False) -> int:
        """Delete learned affinity entries of these groups whose backend left the group; returns how many.

        Runs after the transaction that removed the backends, so no new entry
        can name them; an entry that expires meanwhile is skipped.  With
        ``complete`` (reconcile), ``purges`` holds every affinity group there
        is, and entries of any other group go too.
        """
        stale: dict[str, list[tuple[object, ...]]] = {}
        for v in (4, 6) if complete else sorted({v for v, _ in purges}):
            addrs = parse_map_elements(await self._nft.list_map(f"aff{v}"), f"aff{v}")
            ports = parse_map_elements(await self._nft.list_map(f"aff{v}p"), f"aff{v}p")
            for (_, key), addr in addrs.items():
                live = purges.get((v, cast(int, key[0]) & AFFINITY_GROUP_MASK))
                if complete and live is None:
                    live = frozenset()
                if live is not None and (addr, ports.get((f"aff{v}p", key))) not in live:
                    stale.setdefault(f"aff{v}", []).append(key)
                    if (f"aff{v}p", key) in ports:
                        stale.setdefault(f"aff{v}p", []).append(key)
        if not stale:
            return 0
        try:
            await self._nft.run_script("".join(delete_keys_script(n, keys) for n, keys in stale.items()))
        except TargetError:
            # One of them expired between the listing and the delete: the rest one by one.
            for name, keys in stale.items():
                for key in keys:
                    with contextlib.suppress(TargetError):
                        await self._nft.run_script(delete_keys_script(name, [key]))
        n = len(stale.get("aff4", ())) + len(stale.get("aff6", ()))
        log.info("kernel target %s: %d affinity entries purged", self.netns or "(own namespace)", n)
        return n

    async def counters(self) -> dict[EntryKey, tuple[int, int]]:
        """Packets and bytes per ACL entry (allowed flows), from the entries' named counters."""
        raw = await self._nft.list_counters()
        out: dict[EntryKey, tuple[int, int]] = {}
        for e in self.state.entries.values():
            if e.alias in ("acl_egress", "acl_ingress"):
                out[e.key] = raw.get(counter_name(e), (0, 0))
        return out

    async def drop_counters(self) -> dict[str, tuple[int, int]]:
        """Packets and bytes per drop reason and ACL default (``drop_<reason>``, ``deny_<direction>``)."""
        raw = await self._nft.list_counters()
        return {n: raw.get(n, (0, 0)) for n in STATIC_COUNTERS}

    async def destroy(self) -> None:
        """Remove the table, xpunet's routes and overlay objects (node teardown, never in operation)."""
        routes = await self._routes.read()
        await self._routes.apply(routes, {})
        await self._overlay.apply_deletes(await self._overlay.read(), {})
        await self._nft.delete_table()
        self.state = KernelState(self.state.port_names)
        self._started = False
