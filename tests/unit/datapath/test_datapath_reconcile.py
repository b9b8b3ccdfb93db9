"""The reconciler (pure): only the difference, no sweep before sync, foreign keys left alone,
rejections retried with backoff or on change, stale views trigger a read-back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.reconcile import Reconciler
from xpunet.datapath.target import ApplyResult, Rejected, TargetEntries
from xpunet.pipeline.diff import apply_batch
from xpunet.pipeline.entries import EntryKey, Exact, TableEntry, make_entry


def nh(i: int, port: int = 2) -> TableEntry:
    return make_entry(
        "next_hop",
        {"next_hop_id": Exact(i)},
        "via_direct_v4",
        {"node_addr": i, "port": port},
        origin=f"route {i}",
    )


def by_key(*entries: TableEntry) -> dict[EntryKey, TableEntry]:
    return {e.key: e for e in entries}


def ok(batch_len: int) -> ApplyResult:
    return ApplyResult(batch_len)


def test_restart_with_equal_state_plans_nothing() -> None:
    r = Reconciler()
    r.reset(TargetEntries((nh(1), nh(2))))
    assert len(r.plan(by_key(nh(1), nh(2)), sweep=True, now=0)) == 0


@pytest.mark.parametrize(
    ("sweep", "deletes"),
    [pytest.param(False, 0, id="not-in-sync-keeps-stale"), pytest.param(True, 1, id="in-sync-sweeps")],
)
def test_stale_entries_swept_only_when_in_sync(sweep: bool, deletes: int) -> None:
    r = Reconciler()
    r.reset(TargetEntries((nh(1), nh(9))))
    batch = r.plan(by_key(nh(1), nh(2)), sweep=sweep, now=0)
    assert batch.counts() == {"INSERT": 1, "MODIFY": 0, "DELETE": deletes}


def test_changed_action_is_a_modify_and_foreign_keys_are_left_alone() -> None:
    r = Reconciler()
    r.reset(TargetEntries((nh(1),), foreign=frozenset({nh(3).key})))
    batch = r.plan(by_key(nh(1, port=5), nh(3)), sweep=True, now=0)
    assert batch.counts() == {"INSERT": 0, "MODIFY": 1, "DELETE": 0}
    assert list(r.conflicts) == [nh(3).key]
    assert any("did not write" in p for p in r.problems())


def test_transient_rejection_waits_for_backoff_permanent_waits_for_change() -> None:
    r = Reconciler()
    r.reset(TargetEntries(()))
    desired = by_key(nh(1), nh(2))
    batch = r.plan(desired, sweep=True, now=0)
    u1, u2 = batch.updates
    result = ApplyResult(
        2, (Rejected(u1, "RESOURCE_EXHAUSTED", "full", True), Rejected(u2, "INVALID_ARGUMENT", "bad", False))
    )
    fresh = r.record(batch, result, now=10.0)
    assert {f.code for f in fresh} == {"RESOURCE_EXHAUSTED", "INVALID_ARGUMENT"}
    assert r.applied == {}
    assert len(r.plan(desired, sweep=True, now=10.0)) == 0
    due = r.next_retry()
    assert due is not None
    assert due > 10.0
    assert r.rejected[u2.entry.key].retry_at == math.inf
    retry = r.plan(desired, sweep=True, now=due)
    assert [u.entry for u in retry.updates] == [u1.entry]
    # The permanent one is tried again as soon as the intent changes.
    changed = by_key(nh(1), nh(2, port=7))
    assert nh(2, port=7) in [u.entry for u in r.plan(changed, sweep=True, now=due).updates]


@pytest.mark.parametrize(
    ("kind_code", "resync"),
    [
        pytest.param(("INSERT", "ALREADY_EXISTS"), True, id="insert-exists"),
        pytest.param(("DELETE", "NOT_FOUND"), False, id="delete-missing-is-done"),
    ],
)
def test_stale_view(kind_code: tuple[str, str], resync: bool) -> None:
    r = Reconciler()
    kind, code = kind_code
    r.reset(TargetEntries((nh(1),) if kind == "DELETE" else ()))
    desired = by_key() if kind == "DELETE" else by_key(nh(1))
    batch = r.plan(desired, sweep=True, now=0)
    (u,) = batch.updates
    r.record(batch, ApplyResult(1, (Rejected(u, code, "x", False),)), now=0)
    assert r.needs_resync is resync
    if kind == "DELETE":
        assert r.applied == {}
        assert r.rejected == {}


entries = st.lists(st.builds(nh, st.integers(1, 30), st.integers(1, 4)), max_size=20)


@settings(max_examples=60, deadline=None)
@given(have=entries, want=entries)
def test_planned_batch_turns_target_into_desired(have: list[TableEntry], want: list[TableEntry]) -> None:
    r = Reconciler()
    r.reset(TargetEntries(tuple({e.key: e for e in have}.values())))
    desired = {e.key: e for e in want}
    batch = r.plan(desired, sweep=True, now=0)
    after = apply_batch(r.applied.values(), batch)
    assert {e.key: (e.action, e.params) for e in after} == {
        k: (e.action, e.params) for k, e in desired.items()
    }
    r.record(batch, ok(len(batch)), now=0)
    assert len(r.plan(desired, sweep=True, now=0)) == 0


@pytest.mark.parametrize("rejected", [False, True], ids=["all-acknowledged", "one-rejected"])
def test_from_empty_records_what_it_inserted(rejected: bool) -> None:
    """A plan from empty is all INSERTs; recording it (the one-dict fast path, or one by one when
    something was refused) leaves applied and occupancy exactly as the acknowledged updates say."""
    r = Reconciler()
    r.reset(TargetEntries(()))
    desired = by_key(nh(1), nh(2), nh(3))
    batch = r.plan(desired, sweep=True, now=0)
    assert batch.counts() == {"INSERT": 3, "MODIFY": 0, "DELETE": 0}
    refused = next(u for u in batch.updates if u.entry == nh(2))
    result = ApplyResult(3, (Rejected(refused, "INVALID_ARGUMENT", "no", False),) if rejected else ())
    desired[nh(4).key] = nh(4)  # the live desired map moving on does not leak into applied
    r.record(batch, result, now=0)
    want = [nh(1), nh(3)] if rejected else [nh(1), nh(2), nh(3)]
    assert r.applied == by_key(*want)
    assert r.occupancy() == {"next_hop": len(want)}
    assert len(r.plan(desired, sweep=True, now=0, changed=[nh(4).key])) == 1
