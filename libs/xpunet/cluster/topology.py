"""Nodes, the fabric between them, the VXLAN overlay, and the harness's own pod plumbing.

The fabric namespace stands for the top-of-rack router: one veth per node
(``nN`` there, ``uplink0`` in the node), no bridge.  It answers ARP (proxy
ARP) and NDP (proxy NDP entries) for every node address, so all node
addresses share one on-link subnet and a directly routed next hop works
without any ``onlink`` trick.  In directly routed mode the fabric has a route
for each node's pod CIDRs (what BGP would announce to a ToR); with the VXLAN
overlay it has none, so cross-node pod traffic can only travel encapsulated.

``plain_*`` functions are the harness's stand-in for xpunet while the CNI and
the kernel target are not wired: a veth per pod and kernel routes, no policy,
no services.  The output of anything built on them says so.
"""

from __future__ import annotations

import hashlib
import logging

from xpunet.cluster.netns import add_netns, ip_batch, run, sysctls
from xpunet.cluster.plan import UPLINK_IF, VXLAN_IF, VXLAN_PORT, VXLAN_VNI, ClusterPlan, NodePlan
from xpunet.cluster.state import RunDir

log = logging.getLogger(__name__)

FABRIC_V4 = "172.31.0.1"
FABRIC_V6 = "fd00:172:31::1"

_FORWARDING = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


async def build_nodes(plan: ClusterPlan, rd: RunDir) -> None:
    """The fabric and every node namespace, linked; the overlay when the plan asks for it."""
    fabric = plan.fabric_netns
    rd.add_netns(fabric)
    await add_netns(fabric)
    await sysctls(fabric, _FORWARDING)
    for node in plan.nodes:
        rd.add_netns(node.netns)
        await add_netns(node.netns)
        await sysctls(node.netns, _FORWARDING)
        await ip_batch(
            fabric, [f"link add {node.fabric_if} type veth peer name {UPLINK_IF} netns {node.netns}"]
        )
        await sysctls(
            fabric,
            {
                f"net.ipv4.conf.{node.fabric_if}.proxy_arp": "1",
                f"net.ipv6.conf.{node.fabric_if}.proxy_ndp": "1",
                f"net.ipv4.conf.{node.fabric_if}.rp_filter": "0",
                # Proxy answers wait a random 0..0.8 s by default: the first connections across
                # nodes would stall behind ARP/NDP (beyond a 1 s probe) instead of flowing at once.
                f"net.ipv4.neigh.{node.fabric_if}.proxy_delay": "0",
                f"net.ipv6.neigh.{node.fabric_if}.proxy_delay": "0",
            },
        )
        cmds = [
            f"link set {node.fabric_if} up",
            f"addr add {FABRIC_V4}/32 dev {node.fabric_if}",
            f"addr add {FABRIC_V6}/128 dev {node.fabric_if} nodad",
            f"route add {node.address4}/32 dev {node.fabric_if}",
            f"route add {node.address6}/128 dev {node.fabric_if}",
        ]
        if plan.overlay == "none":
            cmds += [
                f"route add {node.pod_cidr4} via {node.address4} dev {node.fabric_if}",
                f"route add {node.pod_cidr6} via {node.address6} dev {node.fabric_if}",
            ]
        await ip_batch(fabric, cmds)
        await ip_batch(
            node.netns,
            [
                f"link set {UPLINK_IF} up",
                f"addr add {node.address4}/24 dev {UPLINK_IF}",
                f"addr add {node.address6}/64 dev {UPLINK_IF} nodad",
            ],
        )
    # Proxy NDP answers only for listed addresses: every other node's, on each node's link.
    await ip_batch(
        fabric,
        [
            f"neigh add proxy {other.address6} dev {node.fabric_if}"
            for node in plan.nodes
            for other in plan.nodes
            if other is not node
        ],
    )
    if plan.overlay == "vxlan":
        for node in plan.nodes:
            await build_overlay(plan, node)


async def build_overlay(plan: ClusterPlan, node: NodePlan) -> None:
    """``vxlan0`` on the underlay: head-end replication to every other node (no multicast, no learning)."""
    await ip_batch(
        node.netns,
        [
            f"link add {VXLAN_IF} type vxlan id {VXLAN_VNI} local {node.address4} dstport {VXLAN_PORT} "
            f"dev {UPLINK_IF} nolearning",
            f"link set {VXLAN_IF} up",
            f"addr add {node.overlay4}/24 dev {VXLAN_IF}",
            f"addr add {node.overlay6}/64 dev {VXLAN_IF} nodad",
        ],
    )
    fdb = [
        f"fdb append 00:00:00:00:00:00 dev {VXLAN_IF} dst {other.address4}"
        for other in plan.nodes
        if other is not node
    ]
    if fdb:
        await run("bridge", "-n", node.netns, "-batch", "-", stdin="\n".join(fdb) + "\n")


async def plain_routes(plan: ClusterPlan) -> None:
    """Harness routing (no xpunet): each node's route to every other node's pod CIDRs."""
    for node in plan.nodes:
        cmds: list[str] = []
        for other in plan.nodes:
            if other is node:
                continue
            if plan.overlay == "vxlan":
                via4, via6, dev = other.overlay4, other.overlay6, VXLAN_IF
            else:
                via4, via6, dev = other.address4, other.address6, UPLINK_IF
            cmds += [
                f"route add {other.pod_cidr4} via {via4} dev {dev} proto static",
                f"route add {other.pod_cidr6} via {via6} dev {dev} proto static",
            ]
        await ip_batch(node.netns, cmds)


def host_ifname(container_id: str) -> str:
    """The node-side name of a pod's veth: stable, unique per container, within IFNAMSIZ."""
    return "xph" + hashlib.sha256(container_id.encode()).hexdigest()[:11]


async def plain_attach(
    node: NodePlan,
    pod_netns: str,
    container_id: str,
    addresses: tuple[tuple[str, str], ...],  # (address, gateway) per family
) -> None:
    """Harness attachment (no CNI): a veth, the gateway on the node side, host routes to the pod."""
    host_if = host_ifname(container_id)
    await ip_batch(node.netns, [f"link add {host_if} type veth peer name eth0 netns {pod_netns}"])
    node_cmds = [f"link set {host_if} up"]
    pod_cmds = ["link set eth0 up"]
    for address, gateway in addresses:
        v6 = ":" in address
        full = 128 if v6 else 32
        node_cmds += [
            f"addr add {gateway}/{full} dev {host_if}" + (" nodad" if v6 else ""),
            f"route add {address}/{full} dev {host_if}",
        ]
        # A host address and an on-link gateway route: every packet goes through the node, also
        # to pods of the same node (no ARP/NDP between pods), as with a real CNI.
        pod_cmds += [
            f"addr add {address}/{full} dev eth0" + (" nodad" if v6 else ""),
            f"route add {gateway}/{full} dev eth0 scope link",
            f"route add default via {gateway} dev eth0",
        ]
    await sysctls(node.netns, {f"net.ipv4.conf.{host_if}.rp_filter": "0"})
    await ip_batch(node.netns, node_cmds)
    await ip_batch(pod_netns, pod_cmds)
