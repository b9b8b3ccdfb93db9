"""VXLAN next hops → overlay items: derived MACs, FDB entries, neighbours, on-link routes.  Pure."""

from __future__ import annotations

import ipaddress

import pytest

from xpunet.datapath.kernel.render import ROUTE, KernelState
from xpunet.datapath.kernel.vxlan import FDB, LINK, NEIGH, link_local, vtep_mac
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

NAMES = {2: "uplink0"}


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def route(node: str, i: int, address: str, vni: int = 4096) -> NodeRoute:
    return NodeRoute(node, (f"10.244.{i}.0/24",), (f"fd00:10:244:{i}::/64",), (address,), "vxlan", vni)


def entries(*routes: NodeRoute, node: str = "n1") -> tuple[TableEntry, ...]:
    low = lower(NodeIntents(node, routes=routes), NodePorts({}, host=1, uplinks=(2,)))
    assert low.problems == ()
    return low.entries


def render(es: tuple[TableEntry, ...]) -> tuple[dict[tuple[str, tuple[object, ...]], object], list[str]]:
    s = KernelState(NAMES)
    s.replace_all(es)
    return s.items(), [p for ps in s.problems.values() for p in ps]


def test_macs_are_derived_from_the_vtep_alike_on_every_node() -> None:
    assert vtep_mac((4, ip("172.31.0.12"))) == "0e:78:ac:1f:00:0c"
    assert vtep_mac((6, ip("fd00::1"))).startswith("0e:79:")
    assert link_local("0e:78:ac:1f:00:0c") == ip("fe80::c78:acff:fe1f:c")


def test_overlay_items_from_lowered_routes() -> None:
    items, problems = render(
        entries(route("n1", 1, "172.31.0.11"), route("n2", 2, "172.31.0.12"), route("n3", 3, "172.31.0.13"))
    )
    assert problems == []
    # The device carries this node's derived MAC; its VTEP is its own (first) address.
    assert items[(LINK, ("vxlan0",))] == (4096, "0e:78:ac:1f:00:0b", "uplink0", 4, ip("172.31.0.11"))
    assert items[("port_kind", ("vxlan0",))] == "goto:svc_check"
    mac2 = "0e:78:ac:1f:00:0c"
    assert items[(FDB, ("vxlan0", mac2))] == (4, ip("172.31.0.12"))
    assert items[(NEIGH, ("vxlan0", 4, ip("172.31.0.12")))] == mac2
    assert items[(NEIGH, ("vxlan0", 6, link_local(mac2)))] == mac2
    assert len([k for k in items if k[0] == FDB]) == 2  # the other nodes only
    assert items[(ROUTE, (4, ip("10.244.2.0"), 24))] == (ip("172.31.0.12"), "vxlan0", "onlink")
    assert items[(ROUTE, (6, ip("fd00:10:244:2::"), 64))] == (link_local(mac2), "vxlan0")


@pytest.mark.parametrize(
    ("routes", "problem"),
    [
        pytest.param((route("n2", 2, "172.31.0.12"),), "no VTEP", id="own-address-unknown"),
        pytest.param(
            (route("n1", 1, "172.31.0.11"), route("n2", 2, "172.31.0.12"), route("n3", 3, "172.31.0.13", 7)),
            "only VNI",
            id="two-vnis",
        ),
    ],
)
def test_what_the_overlay_cannot_do_is_reported(routes: tuple[NodeRoute, ...], problem: str) -> None:
    _, problems = render(entries(*routes))
    assert any(problem in p for p in problems), problems


def test_leaving_the_overlay_removes_every_overlay_item() -> None:
    s = KernelState(NAMES)
    both = entries(route("n1", 1, "172.31.0.11"), route("n2", 2, "172.31.0.12"))
    s.replace_all(both)
    delta = s.replace_all(entries(route("n1", 1, "172.31.0.11")))
    gone = {k[0] for k in delta.delete}
    assert {LINK, FDB, NEIGH, ROUTE, "port_kind"} <= gone
    assert not delta.add
