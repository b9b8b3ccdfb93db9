"""Match-action tables in memory: insert, modify, delete and look up entries by P4 semantics.  Pure.

Used by the reference interpreter (and through it by softipu).  Lookups are
indexed: exact fields hash, a single LPM field is searched by prefix length
from the longest, ternary/range/optional entries are scanned in priority
order within their exact-field bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from xpunet.pipeline.entries import EntryKey, Exact, Lpm, TableEntry, field_matches
from xpunet.pipeline.schema import TableSpec


class TableWriteError(KeyError):
    """INSERT of an existing key (ALREADY_EXISTS) or MODIFY/DELETE of a missing one (NOT_FOUND)."""


@dataclass(slots=True)
class _Bucket:
    entries: dict[EntryKey, TableEntry] = field(default_factory=dict)
    by_prefix: dict[int, dict[int, TableEntry]] = field(default_factory=dict)  # LPM tables
    ordered: list[TableEntry] | None = None  # priority tables, highest first; None: re-sort


class MemTable:
    """One table's entries with an index suited to its key."""

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self._exact = tuple(f.name for f in spec.key if f.match_kind == "exact")
        lpm = [f for f in spec.key if f.match_kind == "lpm"]
        self._lpm = lpm[0] if len(lpm) == 1 and len(spec.key) == len(self._exact) + 1 else None
        self._all_exact = len(self._exact) == len(spec.key)
        self._entries: dict[EntryKey, TableEntry] = {}
        self._exact_index: dict[tuple[int, ...], TableEntry] = {}
        self._buckets: dict[tuple[int, ...], _Bucket] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TableEntry]:
        return iter(self._entries.values())

    def get(self, key: EntryKey) -> TableEntry | None:
        return self._entries.get(key)

    def _exact_values(self, e: TableEntry) -> tuple[int, ...]:
        out = []
        for name in self._exact:
            m = e.match_of(name)
            out.append(m.value if isinstance(m, Exact) else 0)
        return tuple(out)

    def write(self, kind: str, e: TableEntry) -> None:
        """Apply one INSERT / MODIFY / DELETE; raises TableWriteError per P4Runtime rules."""
        present = e.key in self._entries
        if kind == "INSERT" and present:
            raise TableWriteError(f"{self.spec.alias}: entry already exists")
        if kind in ("MODIFY", "DELETE") and not present:
            raise TableWriteError(f"{self.spec.alias}: entry not found")
        if present:
            self._remove(self._entries[e.key])
        if kind != "DELETE":
            self._add(e)

    def _add(self, e: TableEntry) -> None:
        self._entries[e.key] = e
        ev = self._exact_values(e)
        if self._all_exact:
            self._exact_index[ev] = e
            return
        bucket = self._buckets.setdefault(ev, _Bucket())
        bucket.entries[e.key] = e
        if self._lpm is not None:
            m = e.match_of(self._lpm.name)
            plen, value = (m.prefix_len, m.value) if isinstance(m, Lpm) else (0, 0)
            bucket.by_prefix.setdefault(plen, {})[value] = e
        else:
            bucket.ordered = None

    def _remove(self, e: TableEntry) -> None:
        del self._entries[e.key]
        ev = self._exact_values(e)
        if self._all_exact:
            self._exact_index.pop(ev, None)
            return
        bucket = self._buckets[ev]
        del bucket.entries[e.key]
        if self._lpm is not None:
            m = e.match_of(self._lpm.name)
            plen, value = (m.prefix_len, m.value) if isinstance(m, Lpm) else (0, 0)
            bucket.by_prefix[plen].pop(value, None)
            if not bucket.by_prefix[plen]:
                del bucket.by_prefix[plen]
        else:
            bucket.ordered = None
        if not bucket.entries:
            del self._buckets[ev]

    def lookup(self, values: dict[str, int]) -> TableEntry | None:
        """The matching entry for packet field values (every key field must be given)."""
        ev = tuple(values[n] for n in self._exact)
        if self._all_exact:
            return self._exact_index.get(ev)
        bucket = self._buckets.get(ev)
        if bucket is None:
            return None
        if self._lpm is not None:
            width = self._lpm.bitwidth
            value = values[self._lpm.name]
            for plen in sorted(bucket.by_prefix, reverse=True):
                shift = width - plen
                hit = bucket.by_prefix[plen].get((value >> shift) << shift if shift < width else 0)
                if hit is not None:
                    return hit
            return None
        if bucket.ordered is None:
            bucket.ordered = sorted(bucket.entries.values(), key=lambda x: -x.priority)
        widths = {f.name: f.bitwidth for f in self.spec.key}
        for e in bucket.ordered:
            if all(field_matches(m, values[n], widths[n]) for n, m in e.match):
                return e
        return None
