"""diff(): referenced entries first, deleted last; changes are MODIFY; applying gives the target."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.diff import Update, _sort_key, apply_batch, diff, phased, table_rank
from xpunet.pipeline.entries import Exact, FieldMatch, Lpm, Optional, Range, TableEntry, Ternary, make_entry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

PORTS = NodePorts({"d/a": 11, "d/b": 12}, host=1, uplinks=(2,))
SVC = LbServicePort(
    7,
    "d",
    "web",
    "ipv4",
    "TCP",
    80,
    frontends=(Frontend("cluster_ip", "10.96.0.7", 80),),
    internal=BackendSet((Backend("10.0.1.2", 80),), (0, 0, 0)),
)
ROUTE = NodeRoute("n2", ("10.0.2.0/24",), (), ("192.168.0.2",))


def lowered(*, with_service: bool = True, with_route: bool = True, pods: int = 1) -> frozenset[TableEntry]:
    eps = tuple(
        PolicyEndpoint("d", n, n, "n1", (f"10.0.1.{i + 2}",)) for i, n in enumerate(("a", "b")[:pods])
    )
    ni = NodeIntents(
        "n1", eps, services=(SVC,) if with_service else (), routes=(ROUTE,) if with_route else ()
    )
    return frozenset(lower(ni, PORTS).entries)


def test_from_empty_inserts_referenced_tables_first() -> None:
    batch = diff((), lowered())
    assert batch.counts()["INSERT"] == len(lowered())
    assert len(batch.phases) >= 3
    ranks = [max(table_rank(u.entry.table) for u in phase) for phase in batch.phases]
    assert ranks == sorted(ranks)
    seen: list[str] = [u.entry.alias for u in batch.updates]
    assert seen.index("next_hop") < seen.index("fib_v4")
    assert seen.index("maglev_backend_v4") < seen.index("backend_group") < seen.index("service_frontend_v4")
    assert seen.index("acl_ingress") < seen.index("port_info")


def test_to_empty_deletes_in_reverse() -> None:
    batch = diff(lowered(), ())
    seen = [u.entry.alias for u in batch.updates]
    assert {u.kind for u in batch.updates} == {"DELETE"}
    assert seen.index("port_info") < seen.index("acl_ingress")
    assert seen.index("service_frontend_v4") < seen.index("backend_group") < seen.index("maglev_backend_v4")


def test_changed_action_is_a_modify_and_unchanged_is_nothing() -> None:
    old = make_entry("next_hop", {"next_hop_id": Exact(3)}, "via_direct_v4", {"node_addr": 1, "port": 2})
    new = dataclasses.replace(old, params=(("node_addr", 9), ("port", 2)))
    assert [u.kind for u in diff([old], [new]).updates] == ["MODIFY"]
    assert len(diff([old], [old])) == 0
    # origin takes no part: a re-attributed entry is not rewritten
    assert len(diff([old], [dataclasses.replace(old, origin="elsewhere")])) == 0


def test_removing_a_service_deletes_frontend_before_buckets_and_keeps_the_rest() -> None:
    batch = diff(lowered(), lowered(with_service=False))
    assert {u.kind for u in batch.updates} == {"DELETE"}
    seen = [u.entry.alias for u in batch.updates]
    assert seen.index("service_frontend_v4") < seen.index("backend_group") < seen.index("maglev_backend_v4")
    assert "port_info" not in seen


@settings(max_examples=40, deadline=None)
@given(st.booleans(), st.booleans(), st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2))
def test_applying_the_batch_gives_the_new_set(
    s1: bool, r1: bool, p1: int, s2: bool, r2: bool, p2: int
) -> None:
    old = lowered(with_service=s1, with_route=r1, pods=p1)
    new = lowered(with_service=s2, with_route=r2, pods=p2)
    batch = diff(old, new)
    assert apply_batch(old, batch) == set(new)
    assert len(diff(new, apply_batch(old, batch))) == 0


# --- the order inside a phase ------------------------------------------------------------------

_FIELD_MATCHES: dict[str, st.SearchStrategy[FieldMatch]] = {
    "exact": st.builds(Exact, st.integers(0, 70)),
    "big": st.builds(Exact, st.integers(0, 2**130)),
    "lpm": st.builds(Lpm, st.integers(0, 15).map(lambda v: v << 4), st.integers(0, 28)),
    "ternary": st.builds(Ternary, st.integers(0, 3), st.integers(0, 3)),
    "range": st.builds(Range, st.integers(0, 5), st.integers(5, 9)),
    "optional": st.builds(Optional, st.integers(0, 3)),
    "mixed_kind": st.one_of(st.builds(Exact, st.integers(0, 3)), st.builds(Optional, st.integers(0, 3))),
    "negative": st.builds(Exact, st.integers(-3, 3)),
}


@st.composite
def _updates(draw: st.DrawFn) -> list[Update]:
    """Updates on two tables, each with its own shape: fixed fields of one kind each (the packed-int
    sort), or fields that come and go, mixed kinds, negative values (the tuple-key sort)."""
    out: list[Update] = []
    seen: set[object] = set()
    for table in ("t.a", "t.b"):
        kinds = draw(st.lists(st.sampled_from(sorted(_FIELD_MATCHES)), max_size=3))
        varying = draw(st.booleans())
        for _ in range(draw(st.integers(0, 25))):
            match = tuple(
                (f"f{i}", draw(_FIELD_MATCHES[k]))
                for i, k in enumerate(kinds)
                if not varying or draw(st.booleans())
            )
            e = TableEntry(table, match, "a", (), draw(st.integers(0, 4)))
            if e.key not in seen:
                seen.add(e.key)
                out.append(Update(draw(st.sampled_from(("INSERT", "MODIFY", "DELETE"))), e))
    return out


@settings(max_examples=300, deadline=None)
@given(_updates())
def test_phase_order_is_the_sort_key_order(updates: list[Update]) -> None:
    """phased() sorts each table on packed ints when it can: the order must be that of _sort_key."""
    batch = phased(updates)
    assert sorted(map(_sort_key, (u.entry for u in batch.updates))) == sorted(
        map(_sort_key, (u.entry for u in updates))
    )
    for phase in batch.phases:
        assert list(phase) == sorted(phase, key=lambda u: _sort_key(u.entry))
