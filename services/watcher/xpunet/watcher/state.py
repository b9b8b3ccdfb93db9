"""The watcher's pure core: raw API objects in, coalesced KV changes out.

``MirrorState`` is fed by a source (the API informers or the manifest
directory) and drained by the KV writer.  It normalises each raw object
(``xpunet.model.parse``), encodes it (the injected ``Encoder``, the wire codec
in production) and compares the bytes with what it last wrote for that key:
an update that changes nothing the system uses (status heartbeats,
managedFields, annotations) produces no write.  Changes to a key that has not
been written yet coalesce: only the newest value is written.

Malformed objects: the object is reported (``Rejection``) and skipped, and its
key keeps the last good value in KV.  Fail-static is deliberate: the API server
validates objects, so a normalisation failure is our bug or an API feature we
do not support yet, and deleting the key would make a pod vanish from every
policy IP set or a policy stop applying (opening traffic) because of it.  An
explicit delete of the object still deletes the key, and a relist does not
treat the malformed object's key as stale (the object exists).

No I/O here; the clock is passed in (``now``) for the event→KV lag metric.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from xpunet.model import K8sObject, Kind, ModelError
from xpunet.model.keys import DEFAULT_NAMESPACE, NAMESPACED, object_key
from xpunet.model.parse import (
    parse_endpoint_slice,
    parse_namespace,
    parse_network_policy,
    parse_node,
    parse_pod,
    parse_service,
)
from xpunet.wire import encode, encode_object

log = logging.getLogger(__name__)

Encoder = Callable[[K8sObject], bytes]

PARSERS: Final[Mapping[Kind, Callable[[Mapping[str, Any]], K8sObject]]] = {
    Kind.POD: parse_pod,
    Kind.NAMESPACE: parse_namespace,
    Kind.NODE: parse_node,
    Kind.SERVICE: parse_service,
    Kind.ENDPOINT_SLICE: parse_endpoint_slice,
    Kind.NETWORK_POLICY: parse_network_policy,
}
# API kind names ("Pod") → our Kind, for manifests and watch events.
API_KINDS: Final[Mapping[str, Kind]] = {
    "Pod": Kind.POD,
    "Namespace": Kind.NAMESPACE,
    "Node": Kind.NODE,
    "Service": Kind.SERVICE,
    "EndpointSlice": Kind.ENDPOINT_SLICE,
    "NetworkPolicy": Kind.NETWORK_POLICY,
}
SYNC_PREFIX: Final = "sync"
SYNC_SCHEMA: Final = "xpunet.sync"


def sync_key(kind: Kind) -> str:
    """The in-sync marker of a kind in ``xpunet-k8s``."""
    return f"{SYNC_PREFIX}.{kind.value}"


def sync_marker(kind: Kind) -> bytes:
    """The marker's value: constant per kind, so a relist does not rewrite it."""
    return encode(SYNC_SCHEMA, {"kind": kind.value})


def raw_key(kind: Kind, raw: Mapping[str, Any]) -> str | None:
    """The key of a raw object from its metadata alone (None if it has no usable name).

    Used for objects that fail to normalise, and for deletes, so neither depends
    on the rest of the object being valid.
    """
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name, ns = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not name:
        return None
    if not _key_safe(name) or (isinstance(ns, str) and ns and not _key_safe(ns)):
        return None
    return object_key(kind, ns if isinstance(ns, str) else None, name)


# NATS KV keys allow [-/_=.a-zA-Z0-9]; Kubernetes names are a subset, but a manifest
# may carry anything, and a bad key must not poison a whole batch.
_KEY_TOKEN = re.compile(r"[-_.a-zA-Z0-9]+")


def _key_safe(token: str) -> bool:
    return _KEY_TOKEN.fullmatch(token) is not None and not token.startswith(".") and ".." not in token


def object_ref(kind: Kind, raw: Mapping[str, Any]) -> str:
    """ "namespace/name" or "name" for logs, never failing."""
    meta = raw.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    name = meta.get("name") or "?"
    if kind in NAMESPACED:
        return f"{meta.get('namespace') or DEFAULT_NAMESPACE}/{name}"
    return str(name)


def resource_version(raw: Mapping[str, Any]) -> str:
    meta = raw.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


@dataclass(frozen=True, slots=True)
class Normalised:
    """One raw object, normalised and encoded; ``value is None``: rejected for ``reason``."""

    key: str | None
    value: bytes | None
    ref: str
    resource_version: str
    reason: str = ""


def normalise(kind: Kind, raw: Mapping[str, Any], encode: Encoder) -> Normalised:
    """Parse and encode one raw object; a malformed one comes back rejected, with its key if it has one."""
    try:
        obj = PARSERS[kind](raw)
    except ModelError as exc:
        return Normalised(raw_key(kind, raw), None, object_ref(kind, raw), resource_version(raw), str(exc))
    # The parser checked the names with the API's rules, which are stricter than a KV key's.
    namespace: str | None = getattr(obj, "namespace", None)
    ref = f"{namespace}/{obj.name}" if namespace is not None else obj.name
    return Normalised(object_key(kind, namespace, obj.name), encode(obj), ref, resource_version(raw))


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a list response, normalised: what ``decode_list_page`` returns."""

    items: list[Normalised]
    continue_token: str | None
    resource_version: str


def decode_list_page(kind: Kind, body: bytes) -> ListPage:
    """A list response body → its normalised items (wire-encoded).

    A module-level function of plain data, so it can run in a worker process:
    during a 177,000-object initial list this is most of the watcher's CPU.
    Raises ``ValueError``/``KeyError``/``TypeError`` for a body that is not a list response.
    """
    page = json.loads(body)
    meta = page["metadata"]
    items = [normalise(kind, raw, encode_object) for raw in page["items"] or ()]
    return ListPage(items, meta.get("continue") or None, str(meta["resourceVersion"]))


@dataclass(frozen=True, slots=True)
class Change:
    """One pending KV write (``value is None``: delete), with what the trace span needs."""

    key: str
    value: bytes | None
    kind: Kind | None  # None for sync markers
    ref: str
    resource_version: str
    observed: float  # when the source saw the event (clock of the caller), for lag


@dataclass(frozen=True, slots=True)
class Rejection:
    """An object that could not be normalised (logged, counted, skipped)."""

    kind: Kind
    ref: str
    reason: str


class MirrorState:
    """What is in the KV bucket, what the source says should be, and the difference still to write."""

    def __init__(self, encode: Encoder) -> None:
        self._encode = encode
        # Last value written (or found) per key, partitioned by kind for relists.
        self._written: dict[Kind | None, dict[str, bytes]] = {k: {} for k in Kind}
        self._written[None] = {}
        # Keys the source currently has, including objects we reject (fail-static).
        self._present: dict[Kind, set[str]] = {k: set() for k in Kind}
        self._pending: dict[str, Change] = {}
        self.rejections: list[Rejection] = []  # drained by the caller for logs and metrics

    # --- loading what the bucket holds (at takeover) ---------------------------------------------

    def load(self, entries: Mapping[str, bytes]) -> None:
        """Forget everything and take ``entries`` (the bucket's current contents) as written."""
        for part in self._written.values():
            part.clear()
        for present in self._present.values():
            present.clear()
        self._pending.clear()
        by_prefix = {k.value: k for k in Kind}
        for key, value in entries.items():
            prefix = key.partition(".")[0]
            self._written[by_prefix.get(prefix)][key] = value

    # --- source events --------------------------------------------------------------------------

    def upsert(self, kind: Kind, raw: Mapping[str, Any], *, now: float) -> str | None:
        """An object was added or modified.  Returns its key (None if it has none)."""
        return self.apply(kind, normalise(kind, raw, self._encode), now=now)

    def apply(self, kind: Kind, n: Normalised, *, now: float) -> str | None:
        """An added or modified object, already normalised (possibly in another process)."""
        if n.key is not None:
            # A rejected object exists too: a relist must not delete its last good value.
            self._present[kind].add(n.key)
        if n.value is None:
            self._reject(kind, n.ref, n.reason)
        else:
            assert n.key is not None
            self._set(Change(n.key, n.value, kind, n.ref, n.resource_version, now))
        return n.key

    def delete(self, kind: Kind, raw: Mapping[str, Any], *, now: float) -> None:
        key = raw_key(kind, raw)
        if key is None:
            return
        self._present[kind].discard(key)
        self._set(Change(key, None, kind, object_ref(kind, raw), resource_version(raw), now))

    def begin_relist(self, kind: Kind) -> None:
        """A full list of ``kind`` starts: presence is rebuilt from it (see ``end_relist``)."""
        self._present[kind] = set()

    def end_relist(self, kind: Kind, *, resource_version: str, now: float) -> int:
        """The full list is in: delete every key of ``kind`` the list did not contain.  Returns how many."""
        present = self._present[kind]
        stale = [k for k in self._written[kind] if k not in present]
        stale += [
            k for k, c in self._pending.items() if c.kind is kind and c.value is not None and k not in present
        ]
        for key in stale:
            self._set(Change(key, None, kind, key, resource_version, now))
        return len(stale)

    def mark_synced(self, kind: Kind, *, resource_version: str, now: float) -> None:
        """Queue the kind's in-sync marker behind everything queued so far."""
        self._set(Change(sync_key(kind), sync_marker(kind), None, kind.value, resource_version, now))

    def forget(self, kind: Kind, keys: Iterable[str], *, now: float) -> None:
        """Delete ``keys`` of ``kind`` (the directory source: a file's objects went away)."""
        for key in keys:
            self._present[kind].discard(key)
            self._set(Change(key, None, kind, key, "", now))

    def is_present(self, kind: Kind, key: str) -> bool:
        return key in self._present[kind]

    # --- the writer's side ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self, limit: int) -> list[Change]:
        """Up to ``limit`` pending changes, oldest first, removed from pending."""
        keys = list(itertools.islice(self._pending, limit))
        return [self._pending.pop(key) for key in keys]

    def committed(self, batch: Iterable[Change]) -> None:
        """``batch`` is in KV."""
        for c in batch:
            part = self._written[c.kind]
            if c.value is None:
                part.pop(c.key, None)
            else:
                part[c.key] = c.value

    def failed(self, batch: list[Change]) -> None:
        """Writing ``batch`` failed: requeue what no newer change superseded, at the front."""
        requeue = {c.key: c for c in batch if c.key not in self._pending}
        requeue.update(self._pending)
        self._pending = requeue

    def written(self, kind: Kind | None) -> Mapping[str, bytes]:
        return self._written[kind]

    # --- internals --------------------------------------------------------------------------------

    def _set(self, change: Change) -> None:
        current = self._written[change.kind].get(change.key)
        old = self._pending.get(change.key)
        if change.value == current:
            if old is not None:
                del self._pending[change.key]  # back to what KV holds: nothing to write
            return
        if old is not None:
            # Keep the first observation time: lag is measured from the oldest unwritten event.
            change = Change(
                change.key, change.value, change.kind, change.ref, change.resource_version, old.observed
            )
            self._pending[change.key] = change
        else:
            self._pending[change.key] = change

    def _reject(self, kind: Kind, ref: str, reason: str) -> None:
        self.rejections.append(Rejection(kind, ref, reason))
