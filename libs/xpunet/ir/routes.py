"""Route intents: where each node's pods live and how to reach that node.  Pure.

One :class:`NodeRoute` per node, global (every datapath needs every other
node's pod CIDRs), under ``global.routes.node.<node>`` in ``xpunet-intent``.
Until the routing service publishes them from BGP, they are derived from Node
objects with :func:`routes_from_nodes`: a node's ``spec.podCIDRs`` are its pod
CIDRs, its InternalIPs (else ExternalIPs) are where it is reached, and the next
hop kind is ``direct`` (nodes share a routed fabric) or ``vxlan`` (an overlay
with one VNI).

Semantics the datapath implements: a packet for an address inside another
node's pod CIDR of the same family goes to that node; ``direct`` routes it to
the node's address of the same family (a family the node has no address in is
unreachable directly); ``vxlan`` encapsulates it to the node's first address
(IPv4 preferred as the underlay), whatever the inner family.

Compatibility: fields are only added (with defaults); decoders ignore unknown
fields.  Changes are noted in docs/intents.md.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from xpunet.model.objects import Node

SCHEMA_VERSION = 1
ROUTES_NODE_SCHEMA = "routes.node"
GLOBAL_ROUTES_PREFIX = "global.routes.node."
DEFAULT_VNI = 4096

NextHopKind = Literal["direct", "vxlan"]


def node_route_key(node: str) -> str:
    return GLOBAL_ROUTES_PREFIX + node


@dataclass(frozen=True, slots=True)
class NodeRoute:
    """How to reach the pods of one node."""

    node: str
    pod_cidrs_v4: tuple[str, ...] = ()  # normalised networks, sorted
    pod_cidrs_v6: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()  # where the node is reached: IPv4 first, then IPv6, each sorted
    next_hop: NextHopKind = "direct"
    vni: int = DEFAULT_VNI  # used when next_hop is "vxlan"

    def address_of(self, version: int) -> str | None:
        """The node's first address of IP ``version`` (4 or 6), or None."""
        return next((a for a in self.addresses if ipaddress.ip_address(a).version == version), None)

    @property
    def underlay_address(self) -> str | None:
        """The VXLAN tunnel endpoint: IPv4 preferred."""
        return self.addresses[0] if self.addresses else None


class RouteError(ValueError):
    """A Node cannot be turned into a route (names the node and the field)."""


def _split_cidrs(node: str, cidrs: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for c in cidrs:
        try:
            net = ipaddress.ip_network(c, strict=False)
        except ValueError as exc:
            raise RouteError(f"node {node}: spec.podCIDRs: {c!r} is not a CIDR") from exc
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return tuple(str(n) for n in sorted(set(v4))), tuple(str(n) for n in sorted(set(v6)))


def _addresses(node: Node) -> tuple[str, ...]:
    def pick(kind: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out = []
        for a in node.addresses:
            if a.type != kind:
                continue
            try:
                out.append(ipaddress.ip_address(a.address))
            except ValueError as exc:
                raise RouteError(f"node {node.name}: status.addresses: {a.address!r} is not an IP") from exc
        return out

    ips = pick("InternalIP") or pick("ExternalIP")
    v4 = sorted({ip for ip in ips if ip.version == 4})
    v6 = sorted({ip for ip in ips if ip.version == 6})
    return tuple(str(ip) for ip in (*v4, *v6))


def route_from_node(node: Node, *, next_hop: NextHopKind = "direct", vni: int = DEFAULT_VNI) -> NodeRoute:
    v4, v6 = _split_cidrs(node.name, node.pod_cidrs)
    return NodeRoute(node.name, v4, v6, _addresses(node), next_hop, vni)


def routes_from_nodes(
    nodes: Iterable[Node], *, next_hop: NextHopKind = "direct", vni: int = DEFAULT_VNI
) -> tuple[NodeRoute, ...]:
    """The route intent of every node, sorted by name.  Raises RouteError on a malformed Node."""
    if not 0 < vni < 1 << 24:
        raise RouteError(f"vni {vni} is outside 1..16777215")
    return tuple(route_from_node(n, next_hop=next_hop, vni=vni) for n in sorted(nodes, key=lambda n: n.name))


def _register_schemas() -> None:
    # Registered here so anyone importing the schema can decode_object() route values.
    from xpunet.wire import register

    register(ROUTES_NODE_SCHEMA, NodeRoute)


_register_schemas()
