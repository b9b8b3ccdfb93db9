"""The bus as the rest of xpunet sees it: Protocols, no I/O.

Services depend on these Protocols; ``xpunet.bus.nats`` implements them over
NATS and JetStream KV, and tests of pure logic may use a fake that executes.

Buckets (JetStream KV):

* ``xpunet-k8s``    — normalised API objects, key ``<kind>.<namespace>.<name>``
  (cluster-scoped kinds: ``<kind>.<name>``), plus one in-sync marker per kind at
  ``sync.<kind>`` written by the watcher once its initial list is in KV.
* ``xpunet-intent`` — compiled intents: ``node.<node>.<...>`` for one node,
  ``global.<...>`` for every node; a datapath watches its node prefix and global.
* ``xpunet-status`` — per-node applied revision, health, reports of rejected input.

Values are msgpack maps with a schema version (``xpunet.wire``; the bus itself
moves bytes); a deleted key is an explicit removal (``KVEntry.value is None``),
never an empty value.  Keys: ``[-/_=.a-zA-Z0-9]``, no leading/trailing dot
(``xpunet.bus.keys.validate_key``).  Errors: ``xpunet.bus.errors``.

Watches are iterated with ``async for``; leaving the loop early should close
the watch (``async with contextlib.aclosing(store.watch(p)) as w:``) so the
server-side consumer goes away at once rather than on inactivity.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, Self

BUCKET_K8S = "xpunet-k8s"
BUCKET_INTENT = "xpunet-intent"
BUCKET_STATUS = "xpunet-status"


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One key's state at a revision.  ``value is None`` means the key was deleted (or purged)."""

    key: str
    value: bytes | None
    revision: int
    headers: Mapping[str, str] = field(default_factory=dict)  # carries W3C trace context


@dataclass(frozen=True, slots=True)
class InSync:
    """Yielded once by a watch after the snapshot of current values, before live updates."""

    revision: int  # the highest revision in the snapshot (0 for an empty snapshot)


@dataclass(frozen=True, slots=True)
class Message:
    """A core NATS message as a subscriber sees it."""

    subject: str
    data: bytes
    headers: Mapping[str, str] = field(default_factory=dict)  # carries W3C trace context
    reply: str = ""  # respond with ``bus.publish(msg.reply, ...)`` when set


class Subscription(Protocol):
    """Messages on a core subject, in arrival order; ``async with`` unsubscribes on exit."""

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> Message: ...

    async def unsubscribe(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class Watch(Protocol):
    """What ``StateStore.watch`` returns: an async iterator that can be closed (an async generator fits)."""

    def __aiter__(self) -> Self: ...

    async def __anext__(self) -> KVEntry | InSync: ...

    async def aclose(self) -> None: ...


class StateStore(Protocol):
    """A JetStream KV bucket."""

    @property
    def bucket(self) -> str: ...

    async def get(self, key: str) -> KVEntry | None: ...

    async def put(self, key: str, value: bytes, *, headers: Mapping[str, str] | None = None) -> int:
        """Write one value; returns its revision."""
        ...

    async def delete(self, key: str) -> None: ...

    async def put_many(
        self, changes: Mapping[str, bytes | None], *, headers: Mapping[str, str] | None = None
    ) -> int:
        """Apply many writes (``None`` deletes) pipelined; returns the last revision."""
        ...

    async def compare_and_set(self, key: str, value: bytes, *, revision: int) -> int:
        """Write only if the key is at ``revision`` (0: only if absent).  Raises ``CasConflict``."""
        ...

    async def keys(self, prefix: str = "") -> list[str]: ...

    def watch(self, prefix: str | tuple[str, ...] = "") -> Watch:
        """Current values of every key under ``prefix``, then ``InSync``, then every later change in order.

        The snapshot omits deleted keys; after ``InSync`` a delete or purge is a
        ``KVEntry`` with ``value=None``.  Revisions strictly increase; a watch
        survives reconnects and server restarts without gaps or duplicates.
        A tuple of prefixes (not overlapping) is one watch over all of them: changes
        under different prefixes come in the bucket's revision order too, which
        separate watches do not promise.
        """
        ...


class Bus(Protocol):
    """A connection to the bus: core subjects (events, requests) and KV buckets (state)."""

    @property
    def connected(self) -> bool: ...

    async def publish(
        self, subject: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> None: ...

    async def subscribe(self, subject: str, *, queue: str = "") -> Subscription: ...

    # A per-call deadline is part of a request's contract (as in nats-py), hence ASYNC109.
    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> Message: ...

    async def kv(self, bucket: str, *, history: int = 1, create: bool = True) -> StateStore: ...

    async def flush(self, timeout: float = 5.0) -> None: ...  # noqa: ASYNC109

    async def drain(self) -> None:
        """Stop intake, deliver what is buffered, close."""
        ...


async def snapshot(store: StateStore, prefix: str = "") -> AsyncIterator[KVEntry]:
    """The current values under ``prefix``: a watch read up to its InSync, then closed."""
    watch = store.watch(prefix)
    try:
        async for item in watch:
            if isinstance(item, InSync):
                return
            yield item
    finally:
        close = getattr(watch, "aclose", None)
        if close is not None:
            await close()
