"""Maglev lookup tables (Eisenbud et al., NSDI 2016), weighted, deterministic.  Pure.

Every backend has a permutation of the table's buckets derived from two hashes
of its identity: ``offset = h1 mod M`` and ``skip = h2 mod (M - 1) + 1``;
bucket ``j`` of its preference list is ``(offset + j * skip) mod M``.  M is
prime, so every skip generates the whole table.  Backends take turns claiming
their next preferred free bucket until the table is full; because a backend's
preferences depend only on its own identity, removing one of N backends
reassigns about 1/N of the buckets.

Weights: each backend's share of buckets is fixed up front by largest-remainder
apportionment of M over the weights (so shares are exact to one bucket), and
turns are handed out in proportion to weight (a backend of weight w gets
w / w_max turns per round), so a heavy backend's buckets stay spread over its
preference list rather than filling the leftovers at the end.  With equal
weights this is exactly the paper's algorithm.

Determinism: hashes are BLAKE2b-128 of the UTF-8 identity (never Python's
``hash()``, which is salted per process), and the turn order is the sorted order
of identities, so the table depends only on the set of (identity, weight)
pairs: not on input order, process or machine.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from functools import lru_cache

MIN_TABLE_SIZE = 251
MAX_TABLE_SIZE = 131071  # 2**17 - 1, a prime: bounds the intent size (NATS max payload is 1 MiB)
BUCKETS_PER_BACKEND = 100
_LOW_64 = (1 << 64) - 1


class MaglevError(ValueError):
    """Invalid input to the table builder (duplicate identity, bad weight or size)."""


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


@lru_cache(maxsize=4096)
def table_size(backends: int) -> int:
    """The smallest prime ≥ max(251, 100 * backends), capped at 131071; 0 without backends."""
    if backends <= 0:
        return 0
    n = max(MIN_TABLE_SIZE, BUCKETS_PER_BACKEND * backends)
    if n >= MAX_TABLE_SIZE:
        return MAX_TABLE_SIZE
    while not _is_prime(n):
        n += 1
    return n


@lru_cache(maxsize=1 << 18)
def identity_hashes(identity: str) -> tuple[int, int]:
    """Two independent 64-bit hashes of a backend identity (stable across processes and machines)."""
    # The two big-endian halves of one 128-bit digest (one int conversion instead of two slices).
    whole = int.from_bytes(hashlib.blake2b(identity.encode(), digest_size=16).digest(), "big")
    return whole >> 64, whole & _LOW_64


def _quotas(weights: Sequence[int], size: int) -> list[int]:
    """Largest-remainder apportionment of ``size`` buckets by weight; ties go to the lower index."""
    total = sum(weights)
    quotas = [size * w // total for w in weights]
    short = size - sum(quotas)
    if short:
        by_remainder = sorted(range(len(weights)), key=lambda i: (-(size * weights[i] % total), i))
        for i in by_remainder[:short]:
            quotas[i] += 1
    return quotas


def _fill_equal(size: int, offsets: list[int], skips: list[int]) -> list[int]:
    """The paper's fill for equal weights; returns buckets holding backend index + 1.

    This loop dominates the lb compiler's cost, hence the shape: no per-bucket
    allocation, whole rounds without a "table full" test, the modulo replaced by
    a conditional subtraction.
    """
    if len(offsets) == 1:
        return [1] * size  # one backend owns every bucket whatever its permutation
    table = [0] * size
    pos = list(offsets)
    turns = list(zip(range(len(offsets)), range(1, len(offsets) + 1), skips, strict=True))
    rounds, rest = divmod(size, len(offsets))
    for _ in range(rounds):
        for k, value, skip in turns:
            s = pos[k]
            while table[s]:
                s += skip
                if s >= size:
                    s -= size
            table[s] = value
            s += skip
            pos[k] = s - size if s >= size else s
    for k, value, skip in turns[:rest]:
        s = pos[k]
        while table[s]:
            s += skip
            if s >= size:
                s -= size
        table[s] = value
    return table


def _fill_weighted(size: int, offsets: list[int], skips: list[int], weights: list[int]) -> list[int]:
    """Weighted fill: quotas fix each share, turns per round follow weight / max weight."""
    n = len(offsets)
    table = [0] * size
    pos = list(offsets)
    remaining = _quotas(weights, size)
    credit = [0] * n
    top = max(weights)
    filled = 0
    while filled < size:
        for k in range(n):
            credit[k] += weights[k]
            while credit[k] >= top and remaining[k]:
                credit[k] -= top
                s = pos[k]
                skip = skips[k]
                while table[s]:
                    s += skip
                    if s >= size:
                        s -= size
                table[s] = k + 1
                s += skip
                pos[k] = s - size if s >= size else s
                remaining[k] -= 1
                filled += 1
            if not remaining[k]:
                credit[k] = 0
    return table


def build_table(
    identities: Sequence[str], weights: Sequence[int] | None = None, *, size: int | None = None
) -> tuple[int, ...]:
    """The Maglev table for these backends: ``table[bucket]`` is an index into ``identities``.

    ``weights`` (default all 1) are positive integers.  ``size`` defaults to
    :func:`table_size`; it must be prime and ≥ the number of backends.  The
    result is identical for the same (identity, weight) pairs in any order
    (indices follow the given order).  No backends: ``()``.
    """
    n = len(identities)
    if n == 0:
        return ()
    if weights is not None:
        if len(weights) != n:
            raise MaglevError(f"{len(weights)} weights for {n} backends")
        if min(weights) < 1:
            raise MaglevError(f"weights must be positive integers, got {sorted(set(weights))}")
    m = table_size(n) if size is None else size
    if m < n or (size is not None and not _is_prime(m)):
        raise MaglevError(f"table size {m} must be a prime >= the number of backends ({n})")
    order = sorted(range(n), key=identities.__getitem__)
    if len(set(identities)) != n:
        for a, b in itertools.pairwise(order):
            if identities[a] == identities[b]:
                raise MaglevError(f"duplicate backend identity {identities[a]!r}")
    offsets: list[int] = []
    skips: list[int] = []
    skip_range = m - 1
    for i in order:
        h1, h2 = identity_hashes(identities[i])
        offsets.append(h1 % m)
        skips.append(h2 % skip_range + 1)
    canonical_weights = None if weights is None else [weights[i] for i in order]
    if canonical_weights is None or min(canonical_weights) == max(canonical_weights):
        filled = _fill_equal(m, offsets, skips)
    else:
        filled = _fill_weighted(m, offsets, skips, canonical_weights)
    # Buckets hold canonical index + 1; map back to the caller's indices.  Up to
    # 255 backends a byte translation does that in C (a table is mostly built
    # for small sets), beyond it a lookup per bucket.
    if n < 256:
        back_bytes = bytearray(256)
        back_bytes[1 : n + 1] = bytes(order)
        return tuple(bytes(filled).translate(back_bytes))
    back = [0, *order]
    return tuple(map(back.__getitem__, filled))
