"""Differential test: the kernel target and the reference interpreter agree on generated clusters.

For generated policies and services (seeded, so a failure replays), the same
lowered entries go to the interpreter and to a kernel target in a node
namespace; every pod-to-pod flow (ports 80 and 81) and every pod-to-service
flow is then both interpreted and tried with a real TCP connection.

Pod-to-pod: the verdicts must be equal (delivered to the same pod / dropped /
refused).  Pod-to-service: the kernel picks its backend with ``jhash``, the
interpreter with CRC-32 over the Maglev table, so the *chosen* backend may
differ; the test checks what must agree instead: an empty service is refused
by both; a connection the kernel delivers reaches a backend of the service
that the interpreter would also deliver to; a connection the kernel drops
had a backend the interpreter would also drop to.  Per-flow stickiness is
conntrack's (covered by the affinity and reconcile traffic tests), not
compared here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import Direction, IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.interpreter import TCP, TCP_SYN, Drop, Forward, Packet, Pipeline, Reject
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

PODS = {f"p{i}": (20 + i, f"10.0.2.{i}", f"fd00:2::{i}") for i in range(1, 5)}
SERVICES = {"10.96.1.1": 1, "10.96.1.2": 2}
PORT_CHOICES = [None, (PortRange("TCP", 80, 80),), (PortRange("TCP", 81, 81),), (PortRange("TCP", 80, 8080),)]
DIRECTIONS: tuple[Direction, ...] = ("ingress", "egress")


def generate(seed: int) -> tuple[NodeIntents, dict[str, tuple[str, ...]]]:
    rnd = random.Random(seed)
    names = sorted(PODS)
    sets: dict[str, IPSet] = {}
    eps = []
    for name in names:
        rules: dict[str, list[PolicyRule]] = {"ingress": [], "egress": []}
        for direction in DIRECTIONS:
            for index in range(rnd.randint(0, 2)):
                peers = sorted(rnd.sample(names, rnd.randint(1, 3)))
                set_id = "set-" + "-".join(peers)
                sets[set_id] = IPSet(set_id, tuple(f"{PODS[p][1]}/32" for p in peers))
                ports = rnd.choice(
                    [
                        None,
                        (PortRange("TCP", 80, 80),),
                        (PortRange("TCP", 81, 81),),
                        (PortRange("TCP", 80, 8080),),
                    ]
                )
                origin = RuleOrigin("d", f"pol-{name}", direction, index)
                rules[direction].append(PolicyRule(origin, rnd.choice([set_id, None]), ports))
        eps.append(
            PolicyEndpoint(
                "d",
                name,
                f"u-{name}",
                "n1",
                PODS[name][1:],
                ingress_isolated=rnd.random() < 0.6,
                egress_isolated=rnd.random() < 0.4,
                ingress=tuple(rules["ingress"]),
                egress=tuple(rules["egress"]),
            )
        )
    services = []
    members: dict[str, tuple[str, ...]] = {}
    for vip, sid in SERVICES.items():
        chosen = tuple(sorted(rnd.sample(names, rnd.randint(0 if sid == 1 else 1, 3))))
        members[vip] = chosen
        bs = tuple(Backend(PODS[p][1], 8080) for p in chosen)
        table = build_table([b.identity for b in bs]) if bs else ()
        services.append(
            LbServicePort(
                sid,
                "d",
                f"s{sid}",
                "ipv4",
                "TCP",
                80,
                frontends=(Frontend("cluster_ip", vip, 80),),
                internal=BackendSet(bs, table),
            )
        )
    return NodeIntents("n1", tuple(eps), tuple(sets.values()), tuple(services)), members


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, (port, v4, v6) in PODS.items():
            t.add_pod(name, port, v4, v6)
            t.serve(name, "tcp/80", "tcp/81", "tcp/8080")
        yield t
    finally:
        t.close()


def expected(verdict: object, pod_by_port: dict[int, str]) -> str:
    if isinstance(verdict, Forward):
        return f"OK {pod_by_port[verdict.port]}"
    if isinstance(verdict, Reject):
        return "REFUSED"
    assert isinstance(verdict, Drop), verdict
    return "TIMEOUT"


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_kernel_and_interpreter_agree(topo: Topology, seed: int) -> None:
    intents, members = generate(seed)
    ports = NodePorts({f"d/{n}": p for n, (p, _, _) in PODS.items()}, host=1)
    low = lower(intents, ports)
    assert low.problems == ()
    pipe = Pipeline(low.entries)
    kt = KernelTarget(netns=topo.node, port_names={p: f"xv{p}" for p, _, _ in PODS.values()})
    try:
        result = await kt.apply(diff((), low.entries))
        assert result.problems == ()
        assert result.route_errors == ()
    finally:
        await kt.close()
    pod_by_port = {p: n for n, (p, _, _) in PODS.items()}
    sport = 40000

    def interpret(src: str, dst: str, dport: int) -> str:
        nonlocal sport
        sport += 1
        pkt = Packet(PODS[src][0], PODS[src][1], dst, TCP, sport, dport, TCP_SYN)
        return expected(pipe.process(pkt, now=0.0).verdict, pod_by_port)

    mismatches: list[tuple[object, ...]] = []
    for src in sorted(PODS):
        targets = [(PODS[d][1], port) for d in sorted(PODS) if d != src for port in (80, 81)]
        targets += [(vip, 80) for vip in SERVICES]
        got = topo.connect(src, targets, parallel=True, timeout=2)
        for (dst, dport), kernel in zip(targets, got, strict=True):
            kernel_short = " ".join(kernel.split()[:2])
            if dst not in SERVICES:
                want = interpret(src, dst, dport)
                if kernel_short != want:
                    mismatches.append((src, dst, dport, want, kernel))
                continue
            backends = members[dst]
            per_backend = {b: interpret(src, PODS[b][1], 8080) for b in backends}
            if not backends:
                ok = kernel == "REFUSED" and interpret(src, dst, dport) == "REFUSED"
            elif kernel.startswith("OK"):
                chosen = kernel.split()[1]
                ok = chosen in backends and per_backend[chosen] == f"OK {chosen}"
            else:
                ok = kernel == "TIMEOUT" and "TIMEOUT" in per_backend.values()
            if not ok:
                mismatches.append((src, dst, dport, per_backend, kernel))
    assert mismatches == []
