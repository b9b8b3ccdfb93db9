"""From two sets of table entries to an ordered batch of P4Runtime-style updates.  Pure.

P4Runtime lets a server apply the updates of one WriteRequest in any order, so
an order that matters is expressed as *phases*: a writer sends each phase as
its own WriteRequest(s) and waits for it before the next one.

Tables are ranked by what they point at.  Inserts and modifies go from the
referenced to the referencing (a next hop before the route using it, Maglev
buckets before their group, the group before the frontend, policy before the
port that admits a pod's traffic), deletes go the other way.  A changed action
or parameter on an existing key is a MODIFY, never a delete and insert, so
traffic on that key is never without an entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.pipeline.schema import CONTROL

UpdateKind = Literal["INSERT", "MODIFY", "DELETE"]

# Lower rank = referenced by higher ranks.  Tables not listed rank 0.
_RANK_BY_ALIAS: Mapping[str, int] = {
    "next_hop": 0,
    "maglev_backend_v4": 0,
    "maglev_backend_v6": 0,
    "ip_set_src_v4": 0,
    "ip_set_src_v6": 0,
    "ip_set_dst_v4": 0,
    "ip_set_dst_v6": 0,
    "ct_timeout": 0,
    "node_address_v4": 0,
    "node_address_v6": 0,
    "backend_group": 1,
    "fib_v4": 1,
    "fib_v6": 1,
    "acl_ingress": 1,
    "acl_egress": 1,
    "service_frontend_v4": 2,
    "service_frontend_v6": 2,
    "node_port_v4": 2,
    "node_port_v6": 2,
    "endpoint_by_ip_v4": 2,
    "endpoint_by_ip_v6": 2,
    "port_info": 3,
}
MAX_RANK = 3


def table_rank(table: str) -> int:
    return _RANK_BY_ALIAS.get(table.removeprefix(f"{CONTROL}."), 0)


@dataclass(frozen=True, slots=True)
class Update:
    kind: UpdateKind
    entry: TableEntry


@dataclass(frozen=True, slots=True)
class Batch:
    """Updates in phases; each phase must be acknowledged before the next is sent."""

    phases: tuple[tuple[Update, ...], ...]

    @property
    def updates(self) -> tuple[Update, ...]:
        return tuple(u for phase in self.phases for u in phase)

    def __len__(self) -> int:
        return sum(len(p) for p in self.phases)

    def counts(self) -> dict[UpdateKind, int]:
        out: dict[UpdateKind, int] = {"INSERT": 0, "MODIFY": 0, "DELETE": 0}
        for u in self.updates:
            out[u.kind] += 1
        return out


def _sort_key(e: TableEntry) -> tuple[str, str]:
    # Deterministic order inside a phase (repr of a frozen value is stable).
    return (e.table, repr(e.match) + repr(e.priority))


def diff(old: Iterable[TableEntry], new: Iterable[TableEntry]) -> Batch:
    """The ordered updates that turn the ``old`` entries into the ``new`` ones."""
    old_by_key: dict[EntryKey, TableEntry] = {e.key: e for e in old}
    new_by_key: dict[EntryKey, TableEntry] = {e.key: e for e in new}
    writes: list[list[Update]] = [[] for _ in range(MAX_RANK + 1)]
    deletes: list[list[Update]] = [[] for _ in range(MAX_RANK + 1)]
    for key, e in sorted(new_by_key.items(), key=lambda kv: _sort_key(kv[1])):
        before = old_by_key.get(key)
        if before is None:
            writes[table_rank(e.table)].append(Update("INSERT", e))
        elif (before.action, before.params) != (e.action, e.params):
            writes[table_rank(e.table)].append(Update("MODIFY", e))
    for key, e in sorted(old_by_key.items(), key=lambda kv: _sort_key(kv[1])):
        if key not in new_by_key:
            deletes[table_rank(e.table)].append(Update("DELETE", e))
    phases = [tuple(p) for p in writes if p] + [tuple(p) for p in reversed(deletes) if p]
    return Batch(tuple(phases))


def apply_batch(entries: Iterable[TableEntry], batch: Batch) -> set[TableEntry]:
    """The entries after a batch (what a target holds once every phase succeeded)."""
    by_key = {e.key: e for e in entries}
    for u in batch.updates:
        if u.kind == "DELETE":
            by_key.pop(u.entry.key, None)
        else:
            by_key[u.entry.key] = u.entry
    return set(by_key.values())
