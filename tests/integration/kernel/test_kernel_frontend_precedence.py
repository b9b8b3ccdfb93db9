"""A frontend address that is also a node address shadows a NodePort of the same port (real TCP).

The pipeline looks ``service_frontend`` up first and ``node_port`` only on a
miss.  Service A has an externalIP equal to the node's address, port 30090,
externalTrafficPolicy Local (no SNAT); service B has NodePort 30090 with
externalTrafficPolicy Cluster (SNAT to the node), with an endpoint or
without one (reject).  A pod reaching the node's address on 30090 must get
A's backend with its own source address, neither B's SNAT nor B's reject;
B's NodePort still answers on the node's other address (and a client of
both is not remembered in B's affinity group with A's backend).  The interpreter
says the same for every flow.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import GATEWAY4, Topology, in_ns
from xpunet.ir.lb import Affinity, Backend, BackendSet, Frontend, LbNodeAddresses, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Forward, Packet, Pipeline, Reject
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

PODS = {
    "client": (11, "10.0.5.2", "fd00:5::2"),
    "a": (12, "10.0.5.3", "fd00:5::3"),
    "b": (13, "10.0.5.4", "fd00:5::4"),
}
NODE4, OTHER4 = "192.168.50.1", "192.168.50.2"
PORT = 30090


def one(pod: str | None) -> BackendSet:
    if pod is None:
        return BackendSet()
    be = Backend(PODS[pod][1], 8080)
    return BackendSet((be,), build_table([be.identity]))


def intents(b_backend: str | None) -> NodeIntents:
    a = LbServicePort(
        1,
        "d",
        "a",
        "ipv4",
        "TCP",
        PORT,
        frontends=(Frontend("cluster_ip", "10.96.5.1", PORT), Frontend("external_ip", NODE4, PORT)),
        internal=one("a"),
        external_snat=False,
    )
    b = LbServicePort(
        2,
        "d",
        "b",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.5.2", 80), Frontend("node_port", None, PORT)),
        internal=one(b_backend),
        external_snat=True,
        # Affinity on B too: had its mark rule claimed A's connection, the client would be
        # remembered in B's group with A's backend, and its next connection to B sent there.
        affinity=Affinity(60),
    )
    eps = tuple(PolicyEndpoint("d", n, f"u-{n}", "n1", (v4, v6)) for n, (_, v4, v6) in PODS.items())
    return NodeIntents("n1", eps, (), (a, b), addresses=LbNodeAddresses("n1", (NODE4, OTHER4)))


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, (port, v4, v6) in PODS.items():
            t.add_pod(name, port, v4, v6)
        t.serve("a", "tcp/8080")
        t.serve("b", "tcp/8080")
        for addr in (NODE4, OTHER4):
            in_ns(t.node, "ip", "addr", "add", f"{addr}/32", "dev", "lo")
        yield t
    finally:
        t.close()


def interpreted(pipe: Pipeline, dst: str, sport: int) -> str:
    r = pipe.process(Packet(PODS["client"][0], PODS["client"][1], dst, TCP, sport, PORT, TCP_SYN), now=0.0)
    if isinstance(r.verdict, Reject):
        return "REFUSED"
    assert isinstance(r.verdict, Forward), r.verdict
    name = next(n for n, (p, _, _) in PODS.items() if p == r.verdict.port)
    return f"OK {name} {r.packet_out.src}"


@pytest.mark.parametrize("b_backend", ["b", None])
async def test_a_frontend_on_a_node_address_shadows_the_nodeport(
    topo: Topology, b_backend: str | None
) -> None:
    ports = NodePorts({f"d/{n}": p for n, (p, _, _) in PODS.items()}, host=1)
    low = lower(intents(b_backend), ports)
    assert low.problems == ()
    kt = KernelTarget(netns=topo.node, port_names={p: f"xv{p}" for p, _, _ in PODS.values()})
    try:
        assert (await kt.apply(diff((), low.entries))).problems == ()
    finally:
        await kt.close()
    pipe = Pipeline(low.entries, port_addresses={p: (GATEWAY4,) for p, _, _ in PODS.values()})
    client = PODS["client"][1]
    want = [interpreted(pipe, NODE4, 41000), interpreted(pipe, OTHER4, 41001)]
    got = topo.connect("client", [(NODE4, PORT), (OTHER4, PORT)], timeout=5)
    assert got == want
    # What the pipeline says, spelled out: A with the client's own source; B masqueraded or refused.
    assert want[0] == f"OK a {client}"
    assert want[1] == (f"OK b {GATEWAY4}" if b_backend else "REFUSED")
