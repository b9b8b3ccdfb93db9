"""Longest-prefix match → disjoint interval sets per membership bit, kept up to date incrementally.  Pure.

nft has no LPM with a "longest prefix wins" value, so an ``ip_set_*`` table
(prefix → set membership bits) becomes, per bit b, the merged address
intervals whose longest matching prefix carries b (``src4_b3`` …).

Re-sweeping every prefix on each change costs ~100 ms of CPU at 40,000
prefixes.  :class:`LpmIntervals` instead keeps the prefixes (sorted) and,
per bit, the sorted merged intervals; a changed prefix can only change the
answer inside its own span, so a change re-sweeps just the prefixes
overlapping that span (the changed ones, those nested in them, and at most
one enclosing prefix per length) and re-merges the intervals of each bit
that touch it.  Cost: the prefixes in the span plus a binary search per bit
in use, not the size of the table.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

Prefix = tuple[int, int]  # (network value, prefix length)
FULL_SWEEP_AT = 64
"""More pending prefixes than this (and than an eighth of the table): re-sweep the whole table."""
Interval = tuple[int, int]  # inclusive


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint, non-adjacent intervals covering the same addresses."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def lpm_segments(prefixes: Mapping[Prefix, int], width: int) -> list[tuple[int, int, int]]:
    """Disjoint ``(low, high, value)`` address intervals equal to longest-prefix match over ``prefixes``.

    ``prefixes`` maps (network value, prefix length) → value.  Prefixes are
    nested or disjoint, so a sweep with a stack of open prefixes yields each
    address range under its most specific prefix.  Addresses no prefix covers
    are left out.
    """
    spans = sorted(
        ((net, net + (1 << (width - plen)) - 1, plen, v) for (net, plen), v in prefixes.items()),
        key=lambda s: (s[0], s[2]),
    )
    out: list[tuple[int, int, int]] = []
    stack: list[tuple[int, int, int]] = []  # (high, value, next uncovered low) of open prefixes
    pos = 0

    def close_until(limit: int) -> None:
        nonlocal pos
        while stack and stack[-1][0] < limit:
            hi, v, _ = stack.pop()
            if pos <= hi:
                out.append((pos, hi, v))
                pos = hi + 1

    for lo, hi, _plen, v in spans:
        close_until(lo)
        if stack and pos < lo:
            out.append((pos, lo - 1, stack[-1][1]))
        pos = lo
        stack.append((hi, v, lo))
    close_until(1 << width)
    return out


def bit_intervals(prefixes: Mapping[Prefix, int], width: int) -> dict[int, list[Interval]]:
    """Per bit, the merged intervals whose longest matching prefix has that bit (from scratch)."""
    per_bit: dict[int, list[Interval]] = {}
    for lo, hi, bits in lpm_segments(prefixes, width):
        b = 0
        while bits:
            if bits & 1:
                per_bit.setdefault(b, []).append((lo, hi))
            bits >>= 1
            b += 1
    return {b: merge(spans) for b, spans in per_bit.items()}


class LpmIntervals:
    """The prefixes of one ``ip_set_*`` table and their per-bit intervals, updated per change."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.prefixes: dict[Prefix, int] = {}
        self._sorted: list[Prefix] = []  # prefixes by (network, length): range queries
        self.bits: dict[int, list[Interval]] = {}  # bit → sorted merged intervals
        self._pending: set[Prefix] = set()

    def span(self, p: Prefix) -> Interval:
        net, plen = p
        return (net, net + (1 << (self.width - plen)) - 1)

    def put(self, p: Prefix, bits: int) -> None:
        self.prefixes[p] = bits
        self._pending.add(p)

    def remove(self, p: Prefix) -> None:
        if p in self.prefixes:
            del self.prefixes[p]
            self._pending.add(p)

    def flush(self) -> tuple[set[tuple[int, Interval]], set[tuple[int, Interval]]]:
        """Apply the pending changes: the (bit, interval)s that went and those that came."""
        gone: set[tuple[int, Interval]] = set()
        came: set[tuple[int, Interval]] = set()
        pending, self._pending = self._pending, set()
        if not pending:
            return gone, came
        if len(pending) > max(FULL_SWEEP_AT, len(self.prefixes) // 8):
            # Many changes (a start, a resync): one sweep over everything is cheaper.
            self._sorted = sorted(self.prefixes)
            fresh = bit_intervals(self.prefixes, self.width)
            for b in set(fresh) | set(self.bits):
                old, new = set(self.bits.get(b, ())), set(fresh.get(b, ()))
                gone.update((b, x) for x in old - new)
                came.update((b, x) for x in new - old)
            self.bits = fresh
            return gone, came
        for p in pending:
            i = bisect.bisect_left(self._sorted, p)
            present = i < len(self._sorted) and self._sorted[i] == p
            if p in self.prefixes and not present:
                self._sorted.insert(i, p)
            elif p not in self.prefixes and present:
                del self._sorted[i]
        for lo, hi in merge(self.span(p) for p in pending):
            self._rerender(lo, hi, gone, came)
        return gone, came

    def _overlapping(self, lo: int, hi: int) -> dict[Prefix, int]:
        """Every prefix overlapping [lo, hi]: those starting inside it, and those enclosing ``lo``."""
        out: dict[Prefix, int] = {}
        i = bisect.bisect_left(self._sorted, (lo, -1))
        j = bisect.bisect_right(self._sorted, (hi, self.width + 1))
        for p in self._sorted[i:j]:
            out[p] = self.prefixes[p]
        for plen in range(self.width + 1):
            mask = ((1 << plen) - 1) << (self.width - plen)
            p = (lo & mask, plen)
            if p[0] < lo and p in self.prefixes:
                out[p] = self.prefixes[p]
        return out

    def _rerender(
        self, lo: int, hi: int, gone: set[tuple[int, Interval]], came: set[tuple[int, Interval]]
    ) -> None:
        fresh: dict[int, list[Interval]] = {}
        for slo, shi, bits in lpm_segments(self._overlapping(lo, hi), self.width):
            slo, shi = max(slo, lo), min(shi, hi)
            if slo > shi:
                continue
            b = 0
            while bits:
                if bits & 1:
                    fresh.setdefault(b, []).append((slo, shi))
                bits >>= 1
                b += 1
        for b in set(fresh) | set(self.bits):
            spans = self.bits.get(b, [])
            # Intervals touching [lo - 1, hi + 1] may change (or merge with the new ones).
            i = bisect.bisect_left(spans, (lo - 1, -1))
            if i > 0 and spans[i - 1][1] >= lo - 1:
                i -= 1
            j = bisect.bisect_right(spans, (hi + 1, 1 << (self.width + 1)))
            old = spans[i:j]
            pieces = list(fresh.get(b, ()))
            for olo, ohi in old:
                if olo < lo:
                    pieces.append((olo, min(ohi, lo - 1)))
                if ohi > hi:
                    pieces.append((max(olo, hi + 1), ohi))
            new = merge(pieces)
            if new == old:
                continue
            spans[i:j] = new
            if spans:
                self.bits[b] = spans
            else:
                self.bits.pop(b, None)
            # Net effect over the whole flush: an interval one region adds and the next one (sharing
            # it across the gap between them) removes again was never there.
            for x in old:
                if (b, x) in came:
                    came.discard((b, x))
                else:
                    gone.add((b, x))
            for x in new:
                if (b, x) in gone:
                    gone.discard((b, x))
                else:
                    came.add((b, x))
