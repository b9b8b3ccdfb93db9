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

Values are msgpack maps with a schema version (``xpunet.bus.codec``); a deleted
key is an explicit removal (``KVEntry.value is None``), never an empty value.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

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

    def watch(self, prefix: str = "") -> AsyncIterator[KVEntry | InSync]:
        """Current values of every key under ``prefix``, then ``InSync``, then every later change in order."""
        ...
