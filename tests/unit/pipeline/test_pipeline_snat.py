"""The interpreter's source NAT: externalTrafficPolicy Cluster and Local, hairpin, conntrack keys.

Node n1 (addresses 192.168.0.1 and fc00::1) holds the pods client (port 11)
and web (port 12); n2 holds a backend at 10.0.2.3.  One service port with a
ClusterIP, a NodePort, an externalIP and a LoadBalancer address is lowered
with the real lowering; the traffic policy and backends vary per case.  The
expected sources are the kernel target's (docs/kernel-target.md): Cluster
masquerades flows to external frontends to the node's address on the egress
port, Local keeps the client's address, a hairpin flow is masqueraded.
"""

from __future__ import annotations

import dataclasses

import pytest

from xpunet.ir.lb import Backend, BackendSet, Frontend, LbNodeAddresses, LbNodeOverride, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.pipeline.entries import Exact, Lpm, make_entry
from xpunet.pipeline.interpreter import (
    TCP,
    TCP_ACK,
    TCP_SYN,
    UDP,
    Drop,
    Forward,
    Packet,
    Pipeline,
    Result,
    ToNode,
    snat_port_range,
)
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower
from xpunet.pipeline.tracefmt import TraceNames, format_verdict

HOST, UPLINK, CLIENT_PORT, WEB_PORT = 1, 2, 11, 12
NODE4, NODE6 = "192.168.0.1", "fc00::1"
GATEWAY4, GATEWAY6 = "169.254.1.1", "fd00:ffff::1"
CLUSTER_IP, EXTERNAL_IP, LB_IP = "10.96.0.9", "198.51.100.7", "198.51.100.8"
OUTSIDE = "203.0.113.5"
WEB = ("10.0.1.3", "fd00:1::3")
CLIENT = ("10.0.1.2", "fd00:1::2")
REMOTE = ("10.0.2.3", "fd00:2::3")
ROUTER = 0xC0A800FE  # 192.168.0.254: the default route's next hop (external clients' replies)

LOCAL_BE = Backend(WEB[0], 80)
REMOTE_BE = Backend(REMOTE[0], 80)
HOST_BE = Backend(NODE4, 9000)  # a hostNetwork backend on this node


def bset(*backends: Backend, when_empty: str = "reject") -> BackendSet:
    table = build_table([b.identity for b in backends]) if backends else ()
    return BackendSet(tuple(backends), table, when_empty)  # type: ignore[arg-type]  # literal from tests


def service(*backends: Backend, policy: str = "Cluster", v6: bool = False) -> LbServicePort:
    fronts: tuple[Frontend, ...]
    if v6:
        backends = tuple(
            dataclasses.replace(b, ip=REMOTE[1] if b.ip == REMOTE[0] else WEB[1]) for b in backends
        )
        fronts = (
            Frontend("cluster_ip", "fd00:96::9", 80),
            Frontend("external_ip", "2001:db8::7", 80),
            Frontend("node_port", None, 30080),
        )
    else:
        fronts = (
            Frontend("cluster_ip", CLUSTER_IP, 80),
            Frontend("external_ip", EXTERNAL_IP, 80),
            Frontend("load_balancer", LB_IP, 80),
            Frontend("node_port", None, 30080),
        )
    everything = bset(*backends)
    return LbServicePort(
        9,
        "d",
        "web",
        "ipv6" if v6 else "ipv4",
        "TCP",
        80,
        frontends=fronts,
        internal=everything,
        # Local: the global external set is the node-independent default (empty, drop); n1's
        # override holds its local backends, as the lb service writes them.
        external=bset(when_empty="drop") if policy == "Local" else None,
        external_snat=policy == "Cluster",
    )


def pipeline(
    svc: LbServicePort,
    *,
    gateways: bool = False,
    web_ingress: tuple[PolicyRule, ...] | None = None,
) -> Pipeline:
    local = svc.external is not None
    override = (
        LbNodeOverride(
            svc.id,
            external=bset(*(b for b in svc.internal.backends if b.ip in (*WEB, NODE4)), when_empty="drop"),
        ),
    )
    web = PolicyEndpoint(
        "d",
        "web",
        "u2",
        "n1",
        WEB,
        ingress_isolated=web_ingress is not None,
        ingress=web_ingress or (),
    )
    intents = NodeIntents(
        "n1",
        (PolicyEndpoint("d", "client", "u1", "n1", CLIENT), web),
        (IPSet("clients", ("10.0.1.2/32",)),),
        (svc,),
        overrides=override if local else (),
        addresses=LbNodeAddresses("n1", (NODE4, NODE6)),
        routes=(
            NodeRoute("n1", ("10.0.1.0/24",), ("fd00:1::/64",), (NODE4, NODE6)),
            NodeRoute("n2", ("10.0.2.0/24",), ("fd00:2::/64",), ("192.168.0.2", "fc00::2")),
        ),
    )
    low = lower(
        intents, NodePorts({"d/client": CLIENT_PORT, "d/web": WEB_PORT}, host=HOST, uplinks=(UPLINK,))
    )
    assert low.problems == ()
    ports = {CLIENT_PORT: (GATEWAY4, GATEWAY6), WEB_PORT: (GATEWAY4, GATEWAY6)} if gateways else None
    p = Pipeline(low.entries, port_addresses=ports)
    # A default route out of the uplink, so replies to clients outside the cluster leave (the
    # lowering emits none; see docs/pipeline.md).
    p.write("INSERT", make_entry("fib_v4", {"dst_addr": Lpm(0, 0)}, "route_via", {"next_hop_id": 999}))
    p.write(
        "INSERT",
        make_entry(
            "next_hop", {"next_hop_id": Exact(999)}, "via_direct_v4", {"node_addr": ROUTER, "port": UPLINK}
        ),
    )
    return p


def syn(in_port: int, src: str, dst: str, dport: int = 80, sport: int = 40000, proto: int = TCP) -> Packet:
    return Packet(in_port, src, dst, proto, sport, dport, TCP_SYN if proto == TCP else 0)


def where(r: Result) -> tuple[str, int]:
    return r.packet_out.dst, r.packet_out.dport


@dataclasses.dataclass(frozen=True)
class Case:
    svc: LbServicePort
    pkt: Packet
    verdict: type | Drop
    src: str  # the source the backend sees
    backend: tuple[str, int] | None = None
    gateways: bool = False


CASES = [
    # externalTrafficPolicy Cluster: masquerade to the node on every external frontend kind.
    pytest.param(
        Case(service(LOCAL_BE), syn(UPLINK, OUTSIDE, NODE4, 30080), Forward, NODE4, (WEB[0], 80)),
        id="nodeport-cluster-local-backend",
    ),
    pytest.param(
        Case(service(LOCAL_BE), syn(UPLINK, OUTSIDE, NODE4, 30080), Forward, GATEWAY4, (WEB[0], 80), True),
        id="nodeport-cluster-local-backend-sees-the-veth-gateway",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(UPLINK, OUTSIDE, NODE4, 30080), ToNode, NODE4, (REMOTE[0], 80), True),
        id="nodeport-cluster-remote-backend-sees-the-node",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(UPLINK, OUTSIDE, EXTERNAL_IP), ToNode, NODE4, (REMOTE[0], 80)),
        id="external-ip-cluster",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(UPLINK, OUTSIDE, LB_IP), ToNode, NODE4, (REMOTE[0], 80)),
        id="load-balancer-ip-cluster",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(CLIENT_PORT, CLIENT[0], EXTERNAL_IP), ToNode, NODE4, (REMOTE[0], 80)),
        id="pod-to-external-ip-cluster-is-masqueraded-too",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(CLIENT_PORT, CLIENT[0], CLUSTER_IP), ToNode, CLIENT[0], (REMOTE[0], 80)),
        id="cluster-ip-keeps-the-source",
    ),
    pytest.param(
        Case(service(REMOTE_BE), syn(HOST, NODE4, NODE4, 30080), ToNode, NODE4, (REMOTE[0], 80)),
        id="host-to-nodeport-not-masqueraded",
    ),
    pytest.param(
        Case(service(HOST_BE), syn(UPLINK, OUTSIDE, EXTERNAL_IP), Forward, OUTSIDE, (NODE4, 9000)),
        id="host-network-backend-not-masqueraded",
    ),
    pytest.param(
        Case(service(REMOTE_BE, v6=True), syn(UPLINK, "2001:db8:1::5", NODE6, 30080), ToNode, NODE6),
        id="nodeport-cluster-v6-uses-the-v6-node-address",
    ),
    pytest.param(
        Case(
            service(LOCAL_BE, v6=True),
            syn(UPLINK, "2001:db8:1::5", NODE6, 30080),
            Forward,
            GATEWAY6,
            None,
            True,
        ),
        id="nodeport-cluster-v6-local-backend-gateway",
    ),
    # externalTrafficPolicy Local: the client's address, only this node's backends.
    pytest.param(
        Case(
            service(LOCAL_BE, REMOTE_BE, policy="Local"),
            syn(UPLINK, OUTSIDE, NODE4, 30080),
            Forward,
            OUTSIDE,
            (WEB[0], 80),
        ),
        id="nodeport-local-keeps-client-source-local-backend-only",
    ),
    pytest.param(
        Case(
            service(LOCAL_BE, REMOTE_BE, policy="Local"),
            syn(UPLINK, OUTSIDE, EXTERNAL_IP),
            Forward,
            OUTSIDE,
            (WEB[0], 80),
        ),
        id="external-ip-local",
    ),
    pytest.param(
        Case(service(REMOTE_BE, policy="Local"), syn(UPLINK, OUTSIDE, NODE4, 30080), Drop("no_backend"), ""),
        id="nodeport-local-without-local-backend-drops",
    ),
    pytest.param(
        Case(
            service(REMOTE_BE, policy="Local"),
            syn(CLIENT_PORT, CLIENT[0], EXTERNAL_IP),
            ToNode,
            CLIENT[0],
            (REMOTE[0], 80),
        ),
        id="local-pods-use-the-internal-set",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_first_packet_source_and_backend(case: Case) -> None:
    r = pipeline(case.svc, gateways=case.gateways).process(case.pkt, now=0)
    if isinstance(case.verdict, Drop):
        assert r.verdict == case.verdict
        return
    assert isinstance(r.verdict, case.verdict), r.verdict
    assert r.packet_out.src == case.src
    assert r.packet_out.sport == case.pkt.sport  # no clash: the client's port is kept
    assert r.snat == ("to-node" if case.src not in (case.pkt.src,) else None)
    if case.backend is not None:
        assert where(r) == case.backend


@pytest.mark.parametrize(
    ("backend", "reply_port"),
    [
        pytest.param(LOCAL_BE, WEB_PORT, id="local-backend"),
        pytest.param(REMOTE_BE, UPLINK, id="remote-backend"),
    ],
)
@pytest.mark.parametrize("frontend", [(NODE4, 30080), (EXTERNAL_IP, 80)], ids=["nodeport", "external-ip"])
def test_cluster_flow_replies_are_unsnated_and_reverse_nated(
    backend: Backend, reply_port: int, frontend: tuple[str, int]
) -> None:
    p = pipeline(service(backend))
    first = p.process(syn(UPLINK, OUTSIDE, frontend[0], frontend[1], sport=40000), now=0)
    out = first.packet_out
    assert (out.src, out.sport, out.dst, out.dport) == (NODE4, 40000, backend.ip, 80)
    # The rest of the flow takes the same rewrite (conntrack, no service or policy lookup).
    again = p.process(dataclasses.replace(first.packet_in, tcp_flags=TCP_ACK), now=1)
    assert again.ct == "established"
    assert again.snat == "to-node"
    assert again.packet_out == dataclasses.replace(out, tcp_flags=TCP_ACK)
    hit = next(h for h in again.hits if h.table == "conntrack_v4")
    assert hit.action == "ct_dnat_snat_v4"
    # The backend answers the node; the reply goes back to the client from the frontend.
    reply = p.process(Packet(reply_port, backend.ip, NODE4, TCP, 80, 40000, TCP_SYN | TCP_ACK), now=2)
    assert reply.ct == "reply"
    assert reply.snat == "to-node"
    back = reply.packet_out
    assert (back.src, back.sport, back.dst, back.dport) == (*frontend, OUTSIDE, 40000)
    assert isinstance(reply.verdict, ToNode)
    assert reply.verdict.port == UPLINK
    text = format_verdict(reply, TraceNames())
    assert f"un-SNAT {NODE4}:40000 → {OUTSIDE}:40000" in text
    assert f"reverse NAT {backend.ip}:80 → {frontend[0]}:{frontend[1]}" in text
    assert f"SNAT to node {OUTSIDE}:40000 → {NODE4}:40000" in format_verdict(first, TraceNames())


def test_local_flow_replies_keep_the_client_address() -> None:
    p = pipeline(service(LOCAL_BE, REMOTE_BE, policy="Local"))
    first = p.process(syn(UPLINK, OUTSIDE, NODE4, 30080), now=0)
    assert first.packet_out.src == OUTSIDE
    reply = p.process(Packet(WEB_PORT, WEB[0], OUTSIDE, TCP, 80, 40000, TCP_ACK), now=1)
    assert reply.ct == "reply"
    assert (reply.packet_out.src, reply.packet_out.sport) == (NODE4, 30080)
    assert (reply.packet_out.dst, reply.packet_out.dport) == (OUTSIDE, 40000)


def test_clients_sharing_a_source_port_get_distinct_reply_tuples() -> None:
    p = pipeline(service(LOCAL_BE))
    clients = ("203.0.113.5", "203.0.113.6", "203.0.113.7")
    firsts = [p.process(syn(UPLINK, c, NODE4, 30080, sport=40000), now=0) for c in clients]
    assert [f.packet_out.sport for f in firsts] == [40000, 40001, 40002]
    assert {f.packet_out.src for f in firsts} == {NODE4}
    # Each client's replies go back to that client, and its later packets keep their port.
    for c, f in zip(clients, firsts, strict=True):
        sport = f.packet_out.sport
        reply = p.process(Packet(WEB_PORT, WEB[0], NODE4, TCP, 80, sport, TCP_ACK), now=1)
        assert (reply.packet_out.dst, reply.packet_out.dport) == (c, 40000)
        again = p.process(dataclasses.replace(f.packet_in, tcp_flags=TCP_ACK), now=2)
        assert again.packet_out.sport == sport
    # Four flows' worth of entries: two per connection, none overwritten.
    assert len(p.learned_entries(now=3)) == 2 * len(clients)


def test_an_expired_connection_frees_its_port() -> None:
    p = pipeline(service(LOCAL_BE))
    p.process(syn(UPLINK, "203.0.113.5", NODE4, 30080), now=0)
    later = p.process(syn(UPLINK, "203.0.113.6", NODE4, 30080), now=10_000)  # the first one expired
    assert later.packet_out.sport == 40000


@pytest.mark.parametrize(
    ("port", "lo", "hi"),
    [(80, 1, 511), (511, 1, 511), (700, 600, 1023), (1023, 600, 1023), (40000, 1024, 65535)],
)
def test_snat_port_classes_follow_linux(port: int, lo: int, hi: int) -> None:
    assert snat_port_range(port) == (lo, hi)


def test_a_clash_at_the_top_of_a_class_wraps_within_it() -> None:
    p = pipeline(service(LOCAL_BE))
    a = p.process(syn(UPLINK, "203.0.113.5", NODE4, 30080, sport=1023), now=0)
    b = p.process(syn(UPLINK, "203.0.113.6", NODE4, 30080, sport=1023), now=0)
    assert (a.packet_out.sport, b.packet_out.sport) == (1023, 600)


def test_udp_clash_is_resolved_too() -> None:
    svc = dataclasses.replace(service(LOCAL_BE), protocol="UDP")
    p = pipeline(svc)
    a = p.process(syn(UPLINK, "203.0.113.5", NODE4, 30080, sport=5353, proto=UDP), now=0)
    b = p.process(syn(UPLINK, "203.0.113.6", NODE4, 30080, sport=5353, proto=UDP), now=0)
    assert (a.packet_out.sport, b.packet_out.sport) == (5353, 5354)


def test_policy_is_checked_before_the_masquerade() -> None:
    # web admits only the client pod: an outside client through a Cluster NodePort is dropped
    # although the packet would leave with the node's address (the kernel's forward hook runs
    # before postrouting), and the client pod through the external IP is admitted.
    rule = PolicyRule(RuleOrigin("d", "web", "ingress", 0), "clients", (PortRange("TCP", 80, 80),))
    p = pipeline(service(LOCAL_BE), web_ingress=(rule,))
    assert p.process(syn(UPLINK, OUTSIDE, NODE4, 30080), now=0).verdict == Drop("policy_ingress")
    r = p.process(syn(CLIENT_PORT, CLIENT[0], EXTERNAL_IP), now=0)
    assert r.verdict == Forward(WEB_PORT, WEB_PORT)
    assert r.packet_out.src == NODE4


def test_no_node_address_of_the_family_drops_like_a_failed_masquerade() -> None:
    svc = service(REMOTE_BE)
    p = pipeline(svc)
    for e in list(p.tables["ingress.node_address_v4"]):
        p.write("DELETE", e)
    # The externalIP frontend does not need node_address; masquerading does.
    assert p.process(syn(UPLINK, OUTSIDE, EXTERNAL_IP), now=0).verdict == Drop("no_route")


def test_node_address_prefers_the_routed_one() -> None:
    p = pipeline(service(REMOTE_BE))
    extra = make_entry("node_address_v4", {"dst_addr": Exact(0x0A000001)}, "to_node_address")  # 10.0.0.1
    p.write("INSERT", extra)
    assert p.node_address(4) == 0xC0A80001  # 192.168.0.1 has the host route, 10.0.0.1 does not
    assert p.node_address(6) is not None


# --- hairpin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gateways", [False, True], ids=["node-address", "veth-gateway"])
@pytest.mark.parametrize("sport", [40000, 80], ids=["any-port", "same-port-both-sides"])
def test_hairpin_is_masqueraded_and_its_reply_comes_from_the_frontend(gateways: bool, sport: int) -> None:
    p = pipeline(service(LOCAL_BE), gateways=gateways)
    masq = GATEWAY4 if gateways else NODE4
    first = p.process(syn(WEB_PORT, WEB[0], CLUSTER_IP, 80, sport=sport), now=0)
    assert first.verdict == Forward(WEB_PORT, WEB_PORT)
    assert first.snat == "hairpin"
    out = first.packet_out
    assert (out.src, out.sport, out.dst, out.dport) == (masq, sport, WEB[0], 80)
    assert "masquerade (hairpin)" in format_verdict(first, TraceNames())
    # The pod answers the masquerading address; that reply is not the pod's own packet.
    reply = p.process(Packet(WEB_PORT, WEB[0], masq, TCP, 80, sport, TCP_SYN | TCP_ACK), now=1)
    assert reply.ct == "reply"
    back = reply.packet_out
    assert (back.src, back.sport, back.dst, back.dport) == (CLUSTER_IP, 80, WEB[0], sport)
    assert reply.verdict == Forward(WEB_PORT, WEB_PORT)
    again = p.process(dataclasses.replace(first.packet_in, tcp_flags=TCP_ACK), now=2)
    assert again.ct == "established"
    assert again.packet_out == dataclasses.replace(out, tcp_flags=TCP_ACK)
    keys = {e.key for e in p.learned_entries(now=3)}
    assert len(keys) == 2  # the original and reply tuples differ: no collision


def test_another_pod_through_the_service_is_not_masqueraded() -> None:
    r = pipeline(service(LOCAL_BE)).process(syn(CLIENT_PORT, CLIENT[0], CLUSTER_IP), now=0)
    assert r.snat is None
    assert r.packet_out.src == CLIENT[0]


def test_learned_snat_entries_read_back_with_the_contract_actions() -> None:
    p = pipeline(service(REMOTE_BE))
    p.process(syn(UPLINK, OUTSIDE, NODE4, 30080), now=0)
    actions = sorted(e.action for e in p.learned_entries(now=1))
    assert actions == ["ingress.ct_dnat_v4", "ingress.ct_reverse_nat_v4"]


def test_a_flow_whose_reply_tuple_is_taken_gets_another_source_port() -> None:
    # The client reaches the backend through its ClusterIP and then directly from the same port:
    # both have the reply tuple web:80 → client:40000.  Linux's null NAT binding moves the second
    # connection's source port; each reply then reaches its own connection.
    p = pipeline(service(LOCAL_BE))
    via_service = p.process(syn(CLIENT_PORT, CLIENT[0], CLUSTER_IP), now=0)
    direct = p.process(syn(CLIENT_PORT, CLIENT[0], WEB[0]), now=0)
    assert via_service.packet_out.sport == 40000
    assert direct.packet_out.sport == 40001
    assert direct.snat is None
    assert "source port remapped 10.0.1.2:40000 → 10.0.1.2:40001" in format_verdict(direct, TraceNames())
    r1 = p.process(Packet(WEB_PORT, WEB[0], CLIENT[0], TCP, 80, 40000, TCP_ACK), now=1)
    assert (r1.packet_out.src, r1.packet_out.dport) == (CLUSTER_IP, 40000)
    r2 = p.process(Packet(WEB_PORT, WEB[0], CLIENT[0], TCP, 80, 40001, TCP_ACK), now=1)
    assert (r2.packet_out.src, r2.packet_out.dst, r2.packet_out.dport) == (WEB[0], CLIENT[0], 40000)
    assert next(h for h in r2.hits if h.table == "conntrack_v4").action == "ct_unsnat_v4"
    assert len(p.learned_entries(now=2)) == 4
