"""diff(): referenced entries first, deleted last; changes are MODIFY; applying gives the target."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.diff import apply_batch, diff, table_rank
from xpunet.pipeline.entries import Exact, TableEntry, make_entry
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
