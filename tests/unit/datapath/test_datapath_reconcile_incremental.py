"""The reconciler planning only the changed keys plans exactly what a full comparison plans.

Two reconcilers start from the same read-back (with stale and foreign
entries); the desired entries change step by step; one plans from the keys
that changed, the other compares every key.  Their batches must be equal at
every step, through rejections (transient and permanent), sweeps withheld and
then allowed, and the clock moving past retry times; occupancy is kept per
write and must equal a count of the applied entries.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.reconcile import Reconciler
from xpunet.datapath.target import ApplyResult, Rejected, TargetEntries
from xpunet.pipeline.entries import EntryKey, Exact, TableEntry, make_entry


def nh(i: int, port: int) -> TableEntry:
    return make_entry("next_hop", {"next_hop_id": Exact(i)}, "via_direct_v4", {"node_addr": i, "port": port})


step = st.tuples(
    st.dictionaries(
        st.integers(1, 12), st.one_of(st.none(), st.integers(1, 3)), max_size=4
    ),  # id → port / drop
    st.sets(st.integers(1, 12), max_size=3),  # ids the target rejects in this step
    st.booleans(),  # rejections are transient
    st.booleans(),  # sweep allowed
    st.sampled_from((0.0, 0.1, 100.0)),  # time advance
)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(st.integers(1, 12), st.integers(1, 3), max_size=8),
    st.sets(st.integers(1, 12), max_size=2),
    st.lists(step, min_size=1, max_size=12),
)
def test_incremental_plan_equals_full_plan(
    on_target: dict[int, int],
    foreign_ids: set[int],
    steps: list[tuple[dict[int, int | None], set[int], bool, bool, float]],
) -> None:
    readback = TargetEntries(
        tuple(nh(i, p) for i, p in on_target.items() if i not in foreign_ids),
        frozenset(nh(i, 1).key for i in foreign_ids),
    )
    inc, full = Reconciler(), Reconciler()
    inc.reset(readback)
    full.reset(readback)
    desired: dict[EntryKey, TableEntry] = {}
    now = 0.0
    first = True
    for changes, refused, transient, sweep, advance in steps:
        changed: set[EntryKey] = set()
        for i, port in changes.items():
            e = nh(i, port or 1)
            if port is None:
                desired.pop(e.key, None)
            else:
                desired[e.key] = e
            changed.add(e.key)
        now += advance
        a = inc.plan(desired, sweep=sweep, now=now, changed=None if first else changed)
        b = full.plan(desired, sweep=sweep, now=now)
        first = False
        assert a == b
        rejected = tuple(
            Rejected(u, "UNAVAILABLE" if transient else "INVALID_ARGUMENT", "no", transient)
            for u in a.updates
            if u.entry.param("node_addr") in refused
        )
        inc.record(a, ApplyResult(len(a), rejected), now=now)
        full.record(b, ApplyResult(len(b), rejected), now=now)
        assert inc.applied == full.applied
        counts: dict[str, int] = {}
        for e in inc.applied.values():
            counts[e.alias] = counts.get(e.alias, 0) + 1
        assert inc.occupancy() == counts
