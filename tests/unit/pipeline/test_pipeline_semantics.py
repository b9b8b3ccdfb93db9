"""The interpreter on lowered entries agrees with NetworkPolicy and Service semantics.

Policy: random two-node clusters and policies are compiled by the policy
compiler, lowered per node, and every pod-to-pod (and outside-to-pod) packet is
walked through the source node's pipeline and, when it leaves for the other
node, through that node's; "delivered to the destination pod" must equal
``xpunet.policy.reference.is_allowed`` on the Kubernetes objects.

Services: random backend sets and flows; the backend is a usable one, the same
for every packet of a flow, replies come back from the frontend, affinity
sticks, and an empty set rejects.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import Affinity, Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Pod,
    Protocol,
)
from xpunet.pipeline.interpreter import TCP_SYN, Forward, Packet, Pipeline, Reject, ToNode
from xpunet.pipeline.lowering import PROTO_NUMBERS, NodePorts, lower, node_intents_from_kv
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.reference import Cluster, is_allowed

NODES = ("n1", "n2")
UPLINK = 2
ROUTES = tuple(
    NodeRoute(n, (f"10.0.{i + 1}.0/24",), (), (f"192.168.0.{i + 1}",)) for i, n in enumerate(NODES)
)
OUTSIDE = ("192.168.7.7", "10.9.0.1")
PORTS = (53, 80, 8080)
PROTOS: tuple[Protocol, ...] = ("TCP", "UDP")
label = st.dictionaries(st.sampled_from(("app", "tier")), st.sampled_from(("web", "db"))).map(Labels)
selector = st.builds(LabelSelector, label)
peer = st.one_of(
    st.builds(NetworkPolicyPeer, pod_selector=selector),
    st.builds(NetworkPolicyPeer, namespace_selector=st.builds(LabelSelector, st.just(Labels({"team": "x"})))),
    st.builds(
        NetworkPolicyPeer,
        ip_block=st.sampled_from(
            (IPBlock("10.0.0.0/8", ("10.0.2.0/25",)), IPBlock("192.168.0.0/16"), IPBlock("10.0.1.0/24"))
        ),
    ),
)
port = st.one_of(
    st.builds(NetworkPolicyPort, st.sampled_from(("TCP", "UDP"))),
    st.builds(NetworkPolicyPort, st.sampled_from(("TCP", "UDP")), st.sampled_from(PORTS)),
    st.builds(NetworkPolicyPort, st.just("TCP"), st.just(53), st.just(8080)),
    st.builds(NetworkPolicyPort, st.just("TCP"), st.just("http")),
)
rule = st.builds(
    NetworkPolicyRule, st.lists(port, max_size=2).map(tuple), st.lists(peer, max_size=2).map(tuple)
)


@st.composite
def clusters(draw: st.DrawFn) -> Cluster:
    pods = []
    for i in range(draw(st.integers(2, 5))):
        node = draw(st.sampled_from(NODES))
        ports = (ContainerPort(draw(st.sampled_from(PORTS)), "TCP", "http"),) if draw(st.booleans()) else ()
        pods.append(
            Pod(
                draw(st.sampled_from(("a", "b"))),
                f"p{i}",
                f"u{i}",
                node,
                (f"10.0.{NODES.index(node) + 1}.{i + 2}",),
                draw(label),
                ports,
                "Running",
                True,
            )
        )
    namespaces = (
        Namespace("a", Labels({NAMESPACE_NAME_LABEL: "a", "team": "x"})),
        Namespace("b", Labels({NAMESPACE_NAME_LABEL: "b"})),
    )
    policies = tuple(
        NetworkPolicy(
            draw(st.sampled_from(("a", "b"))),
            f"np{i}",
            pod_selector=draw(selector),
            policy_types=draw(st.sampled_from((("Ingress",), ("Egress",), ("Ingress", "Egress")))),
            ingress=tuple(draw(st.lists(rule, max_size=2))),
            egress=tuple(draw(st.lists(rule, max_size=2))),
        )
        for i in range(draw(st.integers(0, 3)))
    )
    return Cluster(tuple(pods), namespaces, policies)


def pipelines(cluster: Cluster) -> tuple[dict[str, Pipeline], dict[str, int]]:
    compiler = PolicyCompiler()
    for ns in cluster.namespaces:
        compiler.upsert_namespace(ns)
    for pod in cluster.pods:
        compiler.upsert_pod(pod)
    for pol in cluster.policies:
        compiler.upsert_policy(pol)
    compiler.flush()
    values: dict[str, object] = {**compiler.intents, **{f"global.routes.node.{r.node}": r for r in ROUTES}}
    port_of = {f"{p.namespace}/{p.name}": 10 + i for i, p in enumerate(cluster.pods)}
    out = {}
    for node in NODES:
        low = lower(node_intents_from_kv(node, values), NodePorts(port_of, host=1, uplinks=(UPLINK,)))
        assert low.problems == (), low.problems
        out[node] = Pipeline(low.entries)
    return out, port_of


def walk(pipes: dict[str, Pipeline], node: str, pkt: Packet) -> object:
    """The final verdict of a packet entering ``node``, following it to the other node if routed there."""
    r = pipes[node].process(pkt, now=0)
    if isinstance(r.verdict, ToNode):
        nxt = next(route.node for route in ROUTES if r.verdict.node_addr in route.addresses)
        out = r.packet_out
        return (
            pipes[nxt]
            .process(Packet(UPLINK, out.src, out.dst, out.protocol, out.sport, out.dport, TCP_SYN), now=0)
            .verdict
        )
    return r.verdict


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from(PORTS), st.sampled_from(PROTOS))
def test_pod_traffic_verdicts_match_the_policy_reference(
    cluster: Cluster, dport: int, proto: Protocol
) -> None:
    pipes, port_of = pipelines(cluster)
    sources = [(p.node, port_of[f"{p.namespace}/{p.name}"], p.ips[0]) for p in cluster.pods]
    sources += [(n, UPLINK, ip) for n in NODES for ip in OUTSIDE]
    for node, in_port, src_ip in sources:
        for dst in cluster.pods:
            pkt = Packet(in_port, src_ip, dst.ips[0], PROTO_NUMBERS[proto], 40000, dport, TCP_SYN)
            if in_port == UPLINK and dst.node != node:
                continue  # outside traffic enters at the destination's node
            dst_port = port_of[f"{dst.namespace}/{dst.name}"]
            delivered = walk(pipes, node or "n1", pkt) == Forward(dst_port, dst_port)
            expected = is_allowed(cluster, src_ip=src_ip, dst_ip=dst.ips[0], port=dport, protocol=proto)
            assert delivered == expected, (src_ip, dst.ips[0], dport, proto)
            event("allowed" if expected else "denied")


# --- services ---------------------------------------------------------------------------------

CLIENT_PORT = 10


def service_pipeline(backends: tuple[Backend, ...], affinity: int | None) -> Pipeline:
    from xpunet.ir.policy import PolicyEndpoint

    svc = LbServicePort(
        3,
        "d",
        "s",
        "ipv4",
        "TCP",
        443,
        frontends=(Frontend("cluster_ip", "10.96.0.3", 443),),
        internal=BackendSet(backends, build_table([b.identity for b in backends])),
        affinity=Affinity(affinity) if affinity else None,
    )
    client = PolicyEndpoint("d", "client", "u", "n1", ("10.0.1.2",))
    values: dict[str, object] = {
        "node.n1.policy.ep.d.client": client,
        "global.lb.svc.d.s.tcp-443.ipv4": svc,
        **{f"global.routes.node.{r.node}": r for r in ROUTES},
    }
    low = lower(
        node_intents_from_kv("n1", values), NodePorts({"d/client": CLIENT_PORT}, host=1, uplinks=(UPLINK,))
    )
    assert low.problems == ()
    return Pipeline(low.entries)


backend_sets = st.lists(st.integers(2, 250), min_size=0, max_size=6, unique=True).map(
    lambda hosts: tuple(Backend(f"10.0.{1 + h % 2}.{h}", 8443) for h in sorted(hosts))
)


@settings(max_examples=40, deadline=None)
@given(backend_sets, st.lists(st.integers(1024, 65535), min_size=1, max_size=8, unique=True), st.booleans())
def test_service_semantics(backends: tuple[Backend, ...], sports: list[int], affinity: bool) -> None:
    p = service_pipeline(backends, 300 if affinity else None)
    usable = {(b.ip, b.port) for b in backends}
    chosen: set[tuple[str, int]] = set()
    for t, sport in enumerate(sports):
        first = Packet(CLIENT_PORT, "10.0.1.2", "10.96.0.3", 6, sport, 443, TCP_SYN)
        r = p.process(first, now=t)
        if not backends:
            assert r.verdict == Reject("tcp-reset")
            continue
        backend = (r.packet_out.dst, r.packet_out.dport)
        assert backend in usable
        chosen.add(backend)
        for k in range(3):  # every packet of the flow goes to the same backend
            again = p.process(
                Packet(CLIENT_PORT, "10.0.1.2", "10.96.0.3", 6, sport, 443, 0x10), now=t + 0.1 * k
            )
            assert (again.packet_out.dst, again.packet_out.dport) == backend
        reply_port = UPLINK if backend[0].startswith("10.0.2.") else 1
        # replies from the backend come back from the frontend address and port
        reply = p.process(Packet(reply_port, backend[0], "10.0.1.2", 6, backend[1], sport, 0x12), now=t + 0.5)
        if reply_port == UPLINK:
            assert (reply.packet_out.src, reply.packet_out.sport) == ("10.96.0.3", 443)
            assert reply.verdict == Forward(CLIENT_PORT, CLIENT_PORT)
    if affinity and backends:
        assert len(chosen) == 1  # ClientIP: one client, one backend
