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
from dataclasses import dataclass, fields
from operator import attrgetter
from typing import Literal

from xpunet.pipeline.entries import EntryKey, Exact, FieldMatch, Lpm, Optional, Range, TableEntry, Ternary
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


if tuple(f.name for f in fields(Update)) != ("kind", "entry"):  # pragma: no cover - a programming error
    raise RuntimeError("Update's fields changed: update new_update")
_new_object = object.__new__
_set_kind = Update.__dict__["kind"].__set__
_set_entry = Update.__dict__["entry"].__set__


def new_update(kind: UpdateKind, entry: TableEntry) -> Update:
    """``Update(kind, entry)`` without the frozen dataclass __init__ (a plan from empty makes
    one per desired entry: ~10M on a big node; about half the time)."""
    u: Update = _new_object(Update)
    _set_kind(u, kind)
    _set_entry(u, entry)
    return u


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


_KIND_RANK = {Exact: 0, Lpm: 1, Ternary: 2, Range: 3, Optional: 4}


def _match_order(m: FieldMatch) -> tuple[int, int, int]:
    if isinstance(m, Exact | Optional):
        return (_KIND_RANK[type(m)], m.value, 0)
    if isinstance(m, Lpm):
        return (1, m.value, m.prefix_len)
    if isinstance(m, Ternary):
        return (2, m.value, m.mask)
    return (3, m.low, m.high)


def _sort_key(e: TableEntry) -> tuple[str, tuple[tuple[str, tuple[int, int, int]], ...], int]:
    # Deterministic order inside a phase, numeric (a repr per entry costs more than the rest of a diff).
    return (e.table, tuple((n, _match_order(m)) for n, m in e.match), e.priority)


def diff(old: Iterable[TableEntry], new: Iterable[TableEntry]) -> Batch:
    """The ordered updates that turn the ``old`` entries into the ``new`` ones."""
    old_by_key: dict[EntryKey, TableEntry] = {e.key: e for e in old}
    new_by_key: dict[EntryKey, TableEntry] = {e.key: e for e in new}
    updates: list[Update] = []
    for key, e in new_by_key.items():
        before = old_by_key.get(key)
        if before is None:
            updates.append(Update("INSERT", e))
        elif (before.action, before.params) != (e.action, e.params):
            updates.append(Update("MODIFY", e))
    for key, e in old_by_key.items():
        if key not in new_by_key:
            updates.append(Update("DELETE", e))
    return phased(updates)


def phased(updates: Iterable[Update]) -> Batch:
    """Updates (at most one per key) in phases: writes by rising rank, then deletes by falling rank."""
    # Bucketed by (kind, table) first: one rank lookup per table, and each table sorted on its own.
    by_table: dict[tuple[bool, str], list[Update]] = {}
    held: list[Update] = []
    last_kind: str | None = None
    last_table: str | None = None
    for u in updates:
        kind, table = u.kind, u.entry.table
        # Runs of one kind and table (a service's buckets) skip the lookup: identity of the
        # (shared) strings suffices, a miss only costs the lookup.
        if table is not last_table or kind is not last_kind:
            held = by_table.setdefault((kind == "DELETE", table), [])
            last_kind, last_table = kind, table
        held.append(u)
    writes: list[list[tuple[str, list[Update]]]] = [[] for _ in range(MAX_RANK + 1)]
    deletes: list[list[tuple[str, list[Update]]]] = [[] for _ in range(MAX_RANK + 1)]
    for (delete, table), held in by_table.items():
        (deletes if delete else writes)[table_rank(table)].append((table, held))
    phases: list[tuple[Update, ...]] = []
    for tables in [*writes, *reversed(deletes)]:
        if not tables:
            continue
        tables.sort(key=lambda t: t[0])
        phase: list[Update] = []
        for _, held in tables:
            _sort_table(held)
            phase += held
        phases.append(tuple(phase))
    return Batch(tuple(phases))


def _sort_table(updates: list[Update]) -> None:
    """Sort one table's updates in :func:`_sort_key` order.

    When every entry has the same fields with the same match kinds (every exact
    table, most others), that order is the order of the concatenated
    non-negative match values (then the priority): each entry is then keyed by
    one int packing them at fixed widths, and its position below them, so the
    sort compares plain ints, the same order as the tuple key at a fraction of
    its time and memory (10M Maglev buckets on a node from empty).  The columns
    are extracted and packed with C-level loops (comprehensions, ``map``).
    Anything else sorts by the tuple key.
    """
    n = len(updates)
    if n < 2:
        return
    columns = _columns([u.entry.match for u in updates])
    if columns is not None:
        columns.append([u.entry.priority for u in updates])
    if columns is None or min(min(c) for c in columns) < 0:
        updates.sort(key=lambda u: _sort_key(u.entry))
        return
    columns.reverse()  # popped from the end, each column freed once packed (10M entries: ~100 MB each)
    keys = columns.pop()
    while columns:
        column = columns.pop()
        width = max(column).bit_length()
        keys = [(k << width) | v for k, v in zip(keys, column, strict=True)]
        del column
    # The position in the low bits: the sorted ints lead back to the updates.
    index_width = (n - 1).bit_length()
    keys = [(k << index_width) | i for i, k in enumerate(keys)]
    keys.sort()
    mask = (1 << index_width) - 1
    updates[:] = [updates[k & mask] for k in keys]


_COMPONENTS: Mapping[type, tuple[str, ...]] = {
    # What _match_order compares after the kind (a constant per column), zeros dropped.
    Exact: ("value",),
    Optional: ("value",),
    Lpm: ("value", "prefix_len"),
    Ternary: ("value", "mask"),
    Range: ("low", "high"),
}


def _columns(matches: list[tuple[tuple[str, FieldMatch], ...]]) -> list[list[int]] | None:
    """The ints each match is compared on, one list per component, or None when the matches do not
    all have the same fields with the same kinds."""
    first = matches[0]
    n = len(matches)
    if set(map(len, matches)) != {len(first)}:
        return None
    out: list[list[int]] = []
    for i, (name, m0) in enumerate(first):
        pairs = [m[i] for m in matches]
        if [p[0] for p in pairs].count(name) != n:
            return None
        fields = [p[1] for p in pairs]
        kind = type(m0)
        if set(map(type, fields)) != {kind}:
            return None
        for attr in _COMPONENTS[kind]:
            out.append(list(map(attrgetter(attr), fields)))
    return out


def apply_batch(entries: Iterable[TableEntry], batch: Batch) -> set[TableEntry]:
    """The entries after a batch (what a target holds once every phase succeeded)."""
    by_key = {e.key: e for e in entries}
    for u in batch.updates:
        if u.kind == "DELETE":
            by_key.pop(u.entry.key, None)
        else:
            by_key[u.entry.key] = u.entry
    return set(by_key.values())
