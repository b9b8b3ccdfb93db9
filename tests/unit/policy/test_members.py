"""``CidrList``: sorted, reference-counted member CIDRs under adds, removes and reads in any mix."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.policy.members import SHARD_TARGET, CidrEntry, CidrList, cidr_entry, host_entry, shard_count
from xpunet.policy.selectors import sort_cidrs

POOL: tuple[CidrEntry, ...] = (
    *(host_entry(f"10.0.{i // 200}.{i % 200}") for i in range(300)),
    *(host_entry(f"fd00::{i:x}") for i in range(60)),
    cidr_entry("10.0.0.0/24"),
    cidr_entry("0.0.0.0/0"),
    cidr_entry("192.168.0.0/16"),
    cidr_entry("fd00::/64"),
)

# (True, i): add POOL[i]; (False, i): remove one earlier add of POOL[i]; None: read members.
operations = st.lists(
    st.one_of(st.tuples(st.booleans(), st.integers(0, len(POOL) - 1)), st.none()), max_size=400
)


def replay(initial: list[int], ops: list[object], read: Callable[[CidrList, tuple[str, ...]], None]) -> None:
    """Apply ``ops`` to a list made of ``initial``; at each read and at the end, ``read(list, want)``
    (want: the sorted support of the multiset so far)."""
    counts: dict[int, int] = {}
    for i in initial:
        counts[i] = counts.get(i, 0) + 1
    members = CidrList(POOL[i] for i in initial)
    for op in [*ops, None]:
        if op is None:
            read(members, sort_cidrs({POOL[i][3] for i, n in counts.items() if n}))
            continue
        assert isinstance(op, tuple)
        adding, i = op
        if adding:
            counts[i] = counts.get(i, 0) + 1
            members.add(POOL[i])
        elif counts.get(i):
            counts[i] -= 1
            members.remove(POOL[i])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), max_size=80), operations)
def test_members_are_the_sorted_support_of_the_multiset(initial: list[int], ops: list[object]) -> None:
    def read(members: CidrList, want: tuple[str, ...]) -> None:
        assert members.members() == want
        assert len(members) == len(want)

    replay(initial, ops, read)


def test_entries_sort_like_sort_cidrs_and_print_canonically() -> None:
    assert host_entry("fd00:0::1")[3] == "fd00::1/128"
    assert cidr_entry("10.1.2.3/8")[3] == "10.0.0.0/8"
    cidrs = ["fd00::/64", "10.0.0.2/32", "9.0.0.0/8", "10.0.0.0/24", "fd00::1/128"]
    assert tuple(e[3] for e in sorted(cidr_entry(c) for c in cidrs)) == sort_cidrs(set(cidrs))


def test_an_unchanged_list_returns_the_same_tuple() -> None:
    members = CidrList([host_entry("10.0.0.1")])
    first = members.members()
    members.add(host_entry("10.0.0.1"))  # a second reference: no change in the members
    assert members.members() is first
    members.remove(host_entry("10.0.0.1"))
    assert members.members() is first


def test_a_bulk_change_between_reads_matches_single_changes() -> None:
    members = CidrList(POOL[:10])
    assert len(members.members()) == 10
    for entry in POOL[5:200]:  # more than the bulk threshold: re-sorted, not inserted one by one
        members.add(entry)
    for entry in POOL[:3]:
        members.remove(entry)
    assert members.members() == sort_cidrs({e[3] for e in POOL[3:200]})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(POOL) - 1), max_size=200), operations)
def test_shards_partition_the_members_by_hash_and_only_changed_shards_are_new(
    initial: list[int], ops: list[object]
) -> None:
    previous: list[tuple[tuple[str, ...], ...]] = []

    def read(members: CidrList, support: tuple[str, ...]) -> None:
        shards = members.shards()
        count = shard_count(len(support))
        assert len(shards) == count
        before = previous[-1] if previous else ()
        for k, shard in enumerate(shards):
            assert shard == tuple(c for c in support if zlib.crc32(c.encode()) % count == k)
            if len(before) == count and shard == before[k]:
                assert shard is before[k]  # unchanged: the same tuple (writers compare by identity)
        previous.append(shards)

    replay(initial, ops, read)


def test_shard_count_doubles_past_each_multiple_of_the_target() -> None:
    assert [shard_count(n) for n in (0, 1, SHARD_TARGET, SHARD_TARGET + 1, 4 * SHARD_TARGET + 1)] == [
        1,
        1,
        1,
        2,
        8,
    ]
