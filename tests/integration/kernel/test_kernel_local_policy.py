"""externalTrafficPolicy Local on the kernel target, with real TCP across two node namespaces.

A NodePort (and externalIP) service with externalTrafficPolicy Local has one
endpoint on each node: ``web1`` on n1, ``web2`` on n2.  The intents are what
the lb service writes for that (docs/intents.md): the global external set
is empty (``drop``), each node's override names its own endpoint, the
internal set has both; the lowering flags the external frontends
``FLAG_LOCAL_PODS_USE_INTERNAL``.  The nodes are joined by one veth (the
underlay) and route each other's pod CIDRs directly.

* From outside n1 (a pod on n2, n2's own stack) to n1's NodePort: only
  ``web1`` answers, and it sees the client's own address.
* From a pod on n1 to n1's NodePort or to the externalIP: both endpoints
  answer (the internal set), again with the pod's own address.
* From n1's own stack (host traffic is not a pod's): only ``web1``.

For every flow the reference interpreter of the node the flow enters is asked
too (over many source ports): the set of backends it reaches and the source
they see must equal what the kernel's real connections show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology, connect_from, in_ns, programmed
from xpunet.ir.lb import (
    Backend,
    BackendSet,
    Frontend,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
)
from xpunet.ir.policy import PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Forward, Packet, Pipeline, ToNode
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower
from xpunet.pipeline.schema import FLAG_LOCAL_PODS_USE_INTERNAL

pytestmark = pytest.mark.root

NODES = {"n1": ("172.31.0.11", "fc00:31::11", 1), "n2": ("172.31.0.12", "fc00:31::12", 2)}
# node → pod → (vNIC port, IPv4, IPv6)
PODS = {
    "n1": {"c1": (11, "10.244.1.2", "fd00:10:244:1::2"), "web1": (12, "10.244.1.3", "fd00:10:244:1::3")},
    "n2": {"c2": (11, "10.244.2.2", "fd00:10:244:2::2"), "web2": (12, "10.244.2.3", "fd00:10:244:2::3")},
}
HOST_PORT, UPLINK_PORT = 1, 2
NODE_PORT = 30080
EXTERNAL = {4: "198.51.100.10", 6: "2001:db8:31::10"}
CONNECTIONS = 24  # per flow: both of two backends are reached unless jhash is 2**-23 unlucky


def backend_set(*ips: str, when_empty: str = "reject") -> BackendSet:
    bs = tuple(Backend(ip, 8080) for ip in sorted(ips))
    table = build_table([b.identity for b in bs]) if bs else ()
    return BackendSet(bs, table, when_empty)  # type: ignore[arg-type]  # "reject" / "drop" only


def pod_addr(node: str, pod: str, v: int) -> str:
    _, v4, v6 = PODS[node][pod]
    return v4 if v == 4 else v6


def node_addr(node: str, v: int) -> str:
    a4, a6, _ = NODES[node]
    return a4 if v == 4 else a6


def web(node: str, v: int) -> str:
    return pod_addr(node, "web1" if node == "n1" else "web2", v)


def intents(node: str) -> NodeIntents:
    services, overrides = [], []
    for sid, v, family, vip in ((1, 4, "ipv4", "10.96.0.10"), (2, 6, "ipv6", "fd00:96::10")):
        services.append(
            LbServicePort(
                sid,
                "d",
                "web",
                family,  # type: ignore[arg-type]  # literal from the tuple above
                "TCP",
                80,
                frontends=(
                    Frontend("cluster_ip", vip, 80),
                    Frontend("external_ip", EXTERNAL[v], 80),
                    Frontend("node_port", None, NODE_PORT),
                ),
                internal=backend_set(web("n1", v), web("n2", v)),
                # The global value under a Local policy: an empty set that drops; each node's own
                # endpoints come in its override.
                external=backend_set(when_empty="drop"),
                external_snat=False,
                node_specific=True,
            )
        )
        overrides.append(LbNodeOverride(sid, external=backend_set(web(node, v))))
    routes = tuple(
        NodeRoute(n, (f"10.244.{i}.0/24",), (f"fd00:10:244:{i}::/64",), (a4, a6))
        for n, (a4, a6, i) in NODES.items()
    )
    eps = tuple(PolicyEndpoint("d", p, f"u-{p}", node, (v4, v6)) for p, (_, v4, v6) in PODS[node].items())
    a4, a6, _ = NODES[node]
    return NodeIntents(
        node,
        eps,
        (),
        tuple(services),
        tuple(overrides),
        addresses=LbNodeAddresses(node, (a4, a6)),
        routes=routes,
    )


def entries(node: str) -> tuple[TableEntry, ...]:
    ports = NodePorts(
        {f"d/{p}": port for p, (port, _, _) in PODS[node].items()}, host=HOST_PORT, uplinks=(UPLINK_PORT,)
    )
    low = lower(intents(node), ports)
    assert low.problems == ()
    return low.entries


@dataclass
class Cluster:
    topos: dict[str, Topology]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    topos = {"n1": Topology(), "n2": Topology()}
    try:
        for node, t in topos.items():
            t.create_node()
            for name, (port, v4, v6) in PODS[node].items():
                t.add_pod(name, port, v4, v6)
            t.serve("web1" if node == "n1" else "web2", "tcp/8080")
        n1, n2 = topos["n1"].node, topos["n2"].node
        in_ns(n1, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0", "netns", n2)
        for node, t in topos.items():
            a4, a6, _ = NODES[node]
            in_ns(t.node, "ip", "addr", "add", f"{a4}/24", "dev", "uplink0")
            in_ns(t.node, "ip", "-6", "addr", "add", f"{a6}/64", "dev", "uplink0", "nodad")
            in_ns(t.node, "ip", "link", "set", "uplink0", "up")
        yield Cluster(topos)
    finally:
        for t in topos.values():
            t.close()


@pytest.fixture
async def targets(cluster: Cluster) -> AsyncIterator[dict[str, KernelTarget]]:
    out = {
        node: KernelTarget(netns=t.node, port_names={11: "xv11", 12: "xv12", UPLINK_PORT: "uplink0"})
        for node, t in cluster.topos.items()
    }
    async with programmed(out, entries):
        yield out


def pod_name(addr: str) -> str:
    return next(p for pods in PODS.values() for p, (_, v4, v6) in pods.items() if addr in (v4, v6))


def interpreted(node: str, in_port: int, src: str, dst: str, dport: int) -> set[str]:
    """What ``node``'s interpreter does with new flows from ``src``: "<backend> <source it sees>"."""
    pipe = Pipeline(entries(node))
    out = set()
    for sport in range(40000, 40000 + 4 * CONNECTIONS):
        r = pipe.process(Packet(in_port, src, dst, TCP, sport, dport, TCP_SYN), now=0.0)
        # Delivered to a local pod, or routed to the node of a remote one.
        assert isinstance(r.verdict, Forward | ToNode), (node, src, dst, r.verdict)
        out.add(f"{pod_name(r.packet_out.dst)} {r.packet_out.src}")
    return out


def measured(ns: str, dst: str, dport: int) -> set[str]:
    # Generous timeout: a first IPv6 packet may wait for neighbour discovery on both veths.
    got = connect_from(ns, [(dst, dport)] * CONNECTIONS, timeout=10, parallel=True)
    assert all(g.startswith("OK ") for g in got), got
    return {g[3:] for g in got}


@pytest.mark.parametrize("v", [4, 6])
async def test_outside_clients_reach_only_the_local_endpoint_and_keep_their_source(
    cluster: Cluster, targets: dict[str, KernelTarget], v: int
) -> None:
    n1_addr = node_addr("n1", v)
    c2 = pod_addr("n2", "c2", v)
    host2 = node_addr("n2", v)
    n2 = cluster.topos["n2"]
    # A pod of n2 and n2's own stack: both enter n1 on its uplink.
    want_pod = {f"web1 {c2}"}
    assert interpreted("n1", UPLINK_PORT, c2, n1_addr, NODE_PORT) == want_pod
    assert measured(n2.pods["c2"].ns, n1_addr, NODE_PORT) == want_pod
    want_host = {f"web1 {host2}"}
    assert interpreted("n1", UPLINK_PORT, host2, n1_addr, NODE_PORT) == want_host
    assert measured(n2.node, n1_addr, NODE_PORT) == want_host


@pytest.mark.parametrize("v", [4, 6])
async def test_local_pods_use_the_internal_set_on_external_frontends(
    cluster: Cluster, targets: dict[str, KernelTarget], v: int
) -> None:
    c1 = pod_addr("n1", "c1", v)
    n1 = cluster.topos["n1"]
    want = {f"web1 {c1}", f"web2 {c1}"}  # both endpoints, no SNAT
    for dst, dport in ((node_addr("n1", v), NODE_PORT), (EXTERNAL[v], 80)):
        assert interpreted("n1", 11, c1, dst, dport) == want
        assert measured(n1.pods["c1"].ns, dst, dport) == want
    # The node's own stack is not a pod: the frontend's own (local) set.
    host1 = node_addr("n1", v)
    assert interpreted("n1", HOST_PORT, host1, host1, NODE_PORT) == {f"web1 {host1}"}
    assert measured(n1.node, host1, NODE_PORT) == {f"web1 {host1}"}


async def test_the_flag_is_what_routes_local_pods_and_reconcile_keeps_it(
    cluster: Cluster, targets: dict[str, KernelTarget]
) -> None:
    es = entries("n1")
    flagged = [
        e
        for e in es
        if e.alias.startswith(("service_frontend", "node_port"))
        and e.param("flags") & FLAG_LOCAL_PODS_USE_INTERNAL
    ]
    assert len(flagged) == 4  # externalIP and NodePort, both families
    # A restarted datapath finds everything in place (no flush, nothing rewritten).
    fresh = KernelTarget(netns=cluster.topos["n1"].node, port_names=targets["n1"].state.port_names)
    try:
        result = await fresh.reconcile(es)
        assert (result.added, result.deleted) == (0, 0)
    finally:
        await fresh.close()
    # n2's endpoint leaves the internal set: n1's pods now reach only web1; n1's external set is
    # unchanged, so nothing else moves.
    old = intents("n1")
    services = tuple(
        dataclasses.replace(s, internal=backend_set(web("n1", 4))) if s.family == "ipv4" else s
        for s in old.services
    )
    ports = NodePorts(
        {f"d/{p}": port for p, (port, _, _) in PODS["n1"].items()}, host=HOST_PORT, uplinks=(UPLINK_PORT,)
    )
    low = lower(dataclasses.replace(old, services=services), ports)
    assert low.problems == ()
    result = await targets["n1"].apply(diff(es, low.entries))
    assert result.problems == ()
    c1 = pod_addr("n1", "c1", 4)
    assert measured(cluster.topos["n1"].pods["c1"].ns, node_addr("n1", 4), NODE_PORT) == {f"web1 {c1}"}
