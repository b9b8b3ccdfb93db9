"""Maglev bucket shares → kernel backend slots: equal weights one slot each, weights kept otherwise."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.kernel.render import KernelState
from xpunet.datapath.kernel.slots import SLOTS_PER_BACKEND, backend_slots, slot_counts
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort
from xpunet.lb.maglev import build_table
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower


@pytest.mark.parametrize(
    ("counts", "budget", "want"),
    [
        pytest.param([334, 333, 333], 96, [1, 1, 1], id="equal-weights-one-slot-each"),
        pytest.param([250, 750], 64, [1, 3], id="exact-ratio-reduced"),
        pytest.param([334, 667], 64, [21, 43], id="apportioned-to-budget"),
        pytest.param([1, 998], 64, [1, 63], id="a-tiny-share-keeps-one-slot"),
        pytest.param([], 0, [], id="empty"),
    ],
)
def test_slot_counts(counts: list[int], budget: int, want: list[int]) -> None:
    assert slot_counts(counts, budget) == want


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=12))
def test_slots_follow_maglev_weights(weights: list[int]) -> None:
    ids = [f"10.0.0.{i + 1}:80" for i in range(len(weights))]
    table = build_table(ids, weights)
    counts = Counter((i + 1, 80) for i in table)
    slots = backend_slots(counts)
    got = Counter(slots)
    assert set(got) == set(counts)  # every backend with buckets keeps a slot
    assert len(slots) <= SLOTS_PER_BACKEND * len(weights)
    total_w, total_s = sum(weights), len(slots)
    for i, w in enumerate(weights):
        # Within the Maglev rounding (one bucket) and the slot rounding (one slot in the budget).
        assert abs(got[(i + 1, 80)] / total_s - w / total_w) <= 1 / total_s + 1 / len(table) + 0.02


def test_weighted_group_renders_proportional_slots() -> None:
    bs = (Backend("10.0.1.10", 8080, weight=1), Backend("10.0.1.11", 8080, weight=3))
    svc = LbServicePort(
        7,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.7", 80),),
        internal=BackendSet(bs, build_table([b.identity for b in bs], [b.weight for b in bs])),
    )
    low = lower(NodeIntents("n1", services=(svc,)), NodePorts({}, host=1))
    s = KernelState({})
    s.replace_all(low.entries)
    items = s.items()
    slots = Counter(v for k, v in items.items() if k[0] == "fe_be4_tcp")
    # A prime Maglev table does not split 1:3 exactly; the slots keep the ratio to one slot.
    light, heavy = slots[(0x0A00010A, 8080)], slots[(0x0A00010B, 8080)]
    assert abs(heavy - 3 * light) <= 3
    assert items[("fe_pick4", (0x0A600007, 6, 80))] == f"goto:fe4_h{light + heavy}"
