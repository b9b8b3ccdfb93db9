"""routes_from_nodes: pod CIDRs per family, addresses, next hop kinds, bad Nodes named."""

from __future__ import annotations

import pytest

from xpunet.ir.routes import NodeRoute, RouteError, node_route_key, routes_from_nodes
from xpunet.model.objects import Node, NodeAddress
from xpunet.wire import decode_object, encode_object


def node(name: str, cidrs: tuple[str, ...], *addrs: tuple[str, str]) -> Node:
    return Node(name, addresses=tuple(NodeAddress(t, a) for t, a in addrs), pod_cidrs=cidrs)


def test_dual_stack_node() -> None:
    (r,) = routes_from_nodes(
        [
            node(
                "n1",
                ("fd00:1::/64", "10.0.1.0/24"),
                ("InternalIP", "fc00::1"),
                ("InternalIP", "192.168.0.1"),
                ("ExternalIP", "203.0.113.1"),
                ("Hostname", "n1"),
            )
        ]
    )
    assert r == NodeRoute("n1", ("10.0.1.0/24",), ("fd00:1::/64",), ("192.168.0.1", "fc00::1"))
    assert r.address_of(6) == "fc00::1"
    assert r.underlay_address == "192.168.0.1"
    assert node_route_key("n1") == "global.routes.node.n1"


def test_external_ip_when_no_internal_and_sorted_by_name() -> None:
    routes = routes_from_nodes(
        [node("b", ()), node("a", ("10.0.2.5/24",), ("ExternalIP", "203.0.113.2"))], next_hop="vxlan", vni=7
    )
    assert [r.node for r in routes] == ["a", "b"]
    assert routes[0].pod_cidrs_v4 == ("10.0.2.0/24",)  # host bits cleared
    assert routes[0].addresses == ("203.0.113.2",)
    assert (routes[0].next_hop, routes[0].vni) == ("vxlan", 7)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(node("n9", ("10.0.0.0/33",)), "node n9: spec.podCIDRs: '10.0.0.0/33'", id="cidr"),
        pytest.param(node("n9", (), ("InternalIP", "not-an-ip")), "node n9: status.addresses", id="address"),
    ],
)
def test_bad_node_is_named(bad: Node, message: str) -> None:
    with pytest.raises(RouteError, match=message):
        routes_from_nodes([bad])


def test_bad_vni() -> None:
    with pytest.raises(RouteError, match="vni 0"):
        routes_from_nodes([], vni=0)


def test_route_round_trips_through_the_wire() -> None:
    (r,) = routes_from_nodes([node("n1", ("10.0.1.0/24",), ("InternalIP", "192.168.0.1"))])
    assert decode_object(encode_object(r)) == r
