"""Differential test of source NAT: the kernel target and the interpreter agree on who the backend sees.

Pods on one node namespace reach single-backend services (so the kernel's
jhash and the interpreter's Maglev pick the same backend): a ClusterIP, an
externalIP and a NodePort with externalTrafficPolicy Cluster (masqueraded
to the node's address on the egress port: the veth gateway address towards
a local pod), the same with Local (the client's address is kept), and a pod
reaching itself through its service (hairpin, masqueraded).  Each flow is a
real TCP connection whose server answers with the peer address it saw; the
interpreter, given the veth gateway addresses as its pod ports' addresses,
must name the same backend and the same source.  A flow whose reply tuple
is a live connection's must get another source port from both (the port
itself differs: Linux picks a random one of the class).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import GATEWAY4, GATEWAY6, Topology, in_ns
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbNodeAddresses, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Forward, Packet, Pipeline
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

PODS = {"client": (11, "10.0.3.2", "fd00:3::2"), "web": (12, "10.0.3.3", "fd00:3::3")}
NODE4, NODE6 = "192.168.30.1", "fc00:30::1"


def one_backend(ip: str, port: int = 8080) -> BackendSet:
    b = Backend(ip, port)
    return BackendSet((b,), build_table([b.identity]))


def services() -> tuple[LbServicePort, ...]:
    web4, web6 = PODS["web"][1], PODS["web"][2]
    out = []
    for sid, family, ext_ip, cluster_ip, web, snat in (
        (1, "ipv4", "198.51.100.1", "10.96.3.1", web4, True),
        (2, "ipv4", "198.51.100.2", "10.96.3.2", web4, False),
        (3, "ipv6", "2001:db8:30::1", "fd00:96:3::1", web6, True),
        (4, "ipv6", "2001:db8:30::2", "fd00:96:3::2", web6, False),
    ):
        fronts = [Frontend("cluster_ip", cluster_ip, 80), Frontend("external_ip", ext_ip, 80)]
        if sid in (1, 3):
            fronts.append(Frontend("node_port", None, 30081))
        out.append(
            LbServicePort(
                sid,
                "d",
                f"s{sid}",
                family,  # type: ignore[arg-type]  # literal from the table above
                "TCP",
                80,
                frontends=tuple(fronts),
                internal=one_backend(web),
                external_snat=snat,
            )
        )
    return tuple(out)


def intents() -> NodeIntents:
    eps = tuple(PolicyEndpoint("d", n, f"u-{n}", "n1", (v4, v6)) for n, (_, v4, v6) in PODS.items())
    return NodeIntents("n1", eps, (), services(), addresses=LbNodeAddresses("n1", (NODE4, NODE6)))


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, (port, v4, v6) in PODS.items():
            t.add_pod(name, port, v4, v6)
        t.serve("web", "tcp/8080")
        # The node's own addresses (NodePorts listen there); the test bed has no uplink device.
        in_ns(t.node, "ip", "addr", "add", f"{NODE4}/32", "dev", "lo")
        in_ns(t.node, "ip", "-6", "addr", "add", f"{NODE6}/128", "dev", "lo")
        yield t
    finally:
        t.close()


FLOWS = [
    ("client", "10.96.3.1", 80),  # ClusterIP: not masqueraded
    ("client", "198.51.100.1", 80),  # externalIP, Cluster: masqueraded
    ("client", NODE4, 30081),  # NodePort, Cluster
    ("client", "198.51.100.2", 80),  # externalIP, Local: client source kept
    ("web", "10.96.3.1", 80),  # hairpin
    ("client", "fd00:96:3::1", 80),
    ("client", "2001:db8:30::1", 80),
    ("client", NODE6, 30081),
    ("client", "2001:db8:30::2", 80),
    ("web", "fd00:96:3::1", 80),
]


async def test_kernel_and_interpreter_agree_on_the_source_the_backend_sees(topo: Topology) -> None:
    ports = NodePorts({f"d/{n}": p for n, (p, _, _) in PODS.items()}, host=1)
    low = lower(intents(), ports)
    assert low.problems == ()
    kt = KernelTarget(netns=topo.node, port_names={p: f"xv{p}" for p, _, _ in PODS.values()})
    try:
        result = await kt.apply(diff((), low.entries))
        assert result.problems == ()
    finally:
        await kt.close()
    pipe = Pipeline(low.entries, port_addresses={p: (GATEWAY4, GATEWAY6) for p, _, _ in PODS.values()})
    pod_by_port = {p: n for n, (p, _, _) in PODS.items()}
    want: list[str] = []
    for i, (client, dst, dport) in enumerate(FLOWS):
        port, v4, v6 = PODS[client]
        src = v6 if ":" in dst else v4
        r = pipe.process(Packet(port, src, dst, TCP, 41000 + i, dport, TCP_SYN), now=0)
        assert isinstance(r.verdict, Forward), (dst, r.verdict)
        want.append(f"OK {pod_by_port[r.verdict.port]} {r.packet_out.src}")
    # Generous timeout: a pod's first IPv6 packet may wait for neighbour discovery on both veths.
    got = [topo.connect(client, [(dst, dport)], timeout=10)[0] for client, dst, dport in FLOWS]
    assert got == want
    # The interpretation is the kernel's own behaviour, not a coincidence of defaults.
    assert want[1] == f"OK web {GATEWAY4}"
    assert want[3] == f"OK web {PODS['client'][1]}"
    assert want[4] == f"OK web {GATEWAY4}"
    assert want[9] == f"OK web {GATEWAY6}"


async def test_both_move_the_source_port_of_a_flow_whose_reply_tuple_is_taken(topo: Topology) -> None:
    # client:40000 reaches web through the ClusterIP, then web directly from the same port: the
    # second connection's reply tuple is the first one's (in TIME_WAIT in the kernel).  Linux moves
    # its source port (a random one of the class); the interpreter takes the next free one.
    ports = NodePorts({f"d/{n}": p for n, (p, _, _) in PODS.items()}, host=1)
    low = lower(intents(), ports)
    kt = KernelTarget(netns=topo.node, port_names={p: f"xv{p}" for p, _, _ in PODS.values()})
    try:
        assert (await kt.apply(diff((), low.entries))).problems == ()
    finally:
        await kt.close()
    client, web = PODS["client"][1], PODS["web"][1]
    flows = [("10.96.3.1", 80), (web, 8080)]
    got = [topo.connect("client", [flow], sport=40000)[0] for flow in flows]
    assert got == [f"OK web {client}"] * 2
    table = in_ns(topo.node, "conntrack", "-L", "-p", "tcp", "--orig-src", client).stdout
    direct = next(line for line in table.splitlines() if f"dst={web} sport=40000 dport=8080" in line)
    kernel_port = int(direct.rsplit("dport=", 1)[1].split()[0])  # the reply tuple's destination port
    pipe = Pipeline(low.entries)
    results = [
        pipe.process(Packet(11, client, dst, TCP, 40000, dport, TCP_SYN), now=0) for dst, dport in flows
    ]
    assert [isinstance(r.verdict, Forward) for r in results] == [True, True]
    assert results[0].packet_out.sport == 40000
    assert kernel_port != 40000
    assert results[1].packet_out.sport != 40000
    assert 1024 <= kernel_port <= 65535
    assert 1024 <= results[1].packet_out.sport <= 65535
