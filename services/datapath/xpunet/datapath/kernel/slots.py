"""Maglev buckets → the kernel's backend slots, keeping the backends' weights.  Pure.

The kernel does not copy a group's Maglev table bucket by bucket (a thousand
elements per frontend); it picks ``jhash mod S`` among S slots.  The Maglev
table already carries the weights: a backend of weight w holds its share of
the buckets, exact to one bucket (largest-remainder quotas).  So:

* shares within one bucket of each other (equal weights, the common case):
  one slot per backend, as many slots as backends;
* otherwise the bucket counts reduced by their greatest common divisor when
  that fits ``budget`` slots, else apportioned over ``budget`` slots by
  largest remainder, every backend keeping at least one slot.

Slots are listed backend by backend in address order, so the same counts give
the same slots on every node.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Backend = tuple[int, int]

SLOTS_PER_BACKEND = 32
"""Budget of a weighted group: at most this many slots per backend (share error below ~3%)."""


def slot_counts(counts: list[int], budget: int) -> list[int]:
    """Slots per backend, proportional to ``counts`` (all > 0), each ≥ 1, summing to ≤ ``budget``."""
    if not counts:
        return []
    if max(counts) - min(counts) <= 1:
        return [1] * len(counts)
    g = math.gcd(*counts)
    reduced = [c // g for c in counts]
    if sum(reduced) <= budget:
        return reduced
    total = sum(counts)
    budget = max(budget, len(counts))
    exact = [budget * c / total for c in counts]
    out = [max(1, math.floor(x)) for x in exact]
    spare = budget - sum(out)
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for i in by_remainder[: max(0, spare)]:
        out[i] += 1
    return out


def backend_slots(bucket_counts: Mapping[Backend, int]) -> list[Backend]:
    """The backend of each slot 0..S-1, from how many Maglev buckets each backend holds."""
    backends = sorted(b for b, n in bucket_counts.items() if n > 0)
    counts = slot_counts([bucket_counts[b] for b in backends], SLOTS_PER_BACKEND * len(backends))
    return [b for b, n in zip(backends, counts, strict=True) for _ in range(n)]
