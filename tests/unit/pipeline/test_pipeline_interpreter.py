"""The reference interpreter on lowered entries: verdicts, table hits, conntrack, NAT, affinity."""

from __future__ import annotations

import dataclasses

import pytest

from xpunet.ir.lb import (
    Affinity,
    Backend,
    BackendSet,
    ConntrackTimeouts,
    Frontend,
    LbNodeAddresses,
    LbServicePort,
)
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.pipeline.interpreter import (
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    UDP,
    Drop,
    Forward,
    Packet,
    Pipeline,
    Reject,
    ToNode,
)
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

HOST, UPLINK = 1, 2
ORIGIN = RuleOrigin("d", "web", "ingress", 0)
CLIENT = PolicyEndpoint("d", "client", "u1", "n1", ("10.0.1.2", "fd00:1::2"))
WEB = PolicyEndpoint(
    "d",
    "web",
    "u2",
    "n1",
    ("10.0.1.3", "fd00:1::3"),
    ingress_isolated=True,
    ingress=(PolicyRule(ORIGIN, "clients", (PortRange("TCP", 80, 80),)),),
)
CLIENTS = IPSet("clients", ("10.0.1.2/32", "fd00:1::2/128"))
BACKENDS = (Backend("10.0.1.3", 80), Backend("10.0.2.3", 80), Backend("10.0.2.4", 80))


def service(**kw: object) -> LbServicePort:
    base = LbServicePort(
        9,
        "d",
        "web",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", "10.96.0.9", 80), Frontend("node_port", None, 30080)),
        internal=BackendSet(BACKENDS, build_table([b.identity for b in BACKENDS])),
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]  # test helper: fields by keyword


def pipeline(*services: LbServicePort, vxlan: bool = False) -> Pipeline:
    routes = (
        NodeRoute("n1", ("10.0.1.0/24",), ("fd00:1::/64",), ("192.168.0.1",)),
        NodeRoute(
            "n2",
            ("10.0.2.0/24",),
            ("fd00:2::/64",),
            ("192.168.0.2", "fc00::2"),
            "vxlan" if vxlan else "direct",
        ),
    )
    ni = NodeIntents(
        "n1",
        (CLIENT, WEB),
        (CLIENTS,),
        services or (service(),),
        addresses=LbNodeAddresses("n1", ("192.168.0.1",)),
        conntrack=ConntrackTimeouts(tcp_syn_sent=60, tcp_established=300, tcp_time_wait=5),
        routes=routes,
    )
    low = lower(ni, NodePorts({"d/client": 11, "d/web": 12}, host=HOST, uplinks=(UPLINK,)))
    assert low.problems == ()
    return Pipeline(low.entries)


def syn(in_port: int, src: str, dst: str, dport: int = 80, sport: int = 40000) -> Packet:
    return Packet(in_port, src, dst, 6, sport, dport, TCP_SYN)


@pytest.mark.parametrize(
    ("pkt", "verdict"),
    [
        pytest.param(syn(11, "10.0.1.2", "10.0.1.3"), Forward(12, 12), id="allowed-by-rule"),
        pytest.param(syn(11, "fd00:1::2", "fd00:1::3"), Forward(12, 12), id="allowed-by-rule-v6"),
        pytest.param(syn(11, "10.0.1.2", "10.0.1.3", dport=81), Drop("policy_ingress"), id="wrong-port"),
        pytest.param(syn(12, "10.0.1.3", "10.0.1.2"), Forward(11, 11), id="not-isolated-dst"),
        pytest.param(syn(UPLINK, "10.0.2.9", "10.0.1.3"), Drop("policy_ingress"), id="remote-not-in-set"),
        pytest.param(
            syn(HOST, "192.168.0.1", "10.0.1.3", dport=81), Forward(12, 12), id="host-always-allowed"
        ),
        pytest.param(syn(11, "10.0.1.99", "10.0.1.3"), Drop("spoofed_source"), id="spoofed"),
        pytest.param(syn(12, "10.0.1.2", "10.0.1.3"), Drop("spoofed_source"), id="other-pods-address"),
        pytest.param(syn(77, "10.0.1.2", "10.0.1.3"), Drop("unknown_port"), id="unknown-port"),
        pytest.param(syn(11, "10.0.1.2", "10.0.1.200"), Drop("no_route"), id="unknown-local-ip"),
        pytest.param(
            syn(11, "10.0.1.2", "10.0.2.7"), ToNode(0, "direct", "192.168.0.2", UPLINK), id="cross-node"
        ),
        pytest.param(syn(11, "fd00:1::2", "8.8.8.8"), None, id="mixed-families-rejected"),
    ],
)
def test_single_packets(pkt: Packet, verdict: object) -> None:
    p = pipeline()
    if verdict is None:
        with pytest.raises(ValueError, match="mixes"):
            p.process(pkt, now=0)
        return
    r = p.process(pkt, now=0)
    if isinstance(verdict, ToNode):
        assert isinstance(r.verdict, ToNode)
        assert r.verdict.node_addr == verdict.node_addr
    else:
        assert r.verdict == verdict
    assert r.hits[0].table == "port_info"


def test_vxlan_next_hop() -> None:
    r = pipeline(vxlan=True).process(syn(11, "10.0.1.2", "10.0.2.7"), now=0)
    assert isinstance(r.verdict, ToNode)
    assert r.verdict.via == "vxlan"
    assert r.verdict.vni == 4096


def test_service_flow_is_dnated_pinned_and_replies_reverse_nated() -> None:
    p = pipeline()
    first = p.process(syn(11, "10.0.1.2", "10.96.0.9"), now=0)
    assert first.ct == "new"
    assert first.service_port_id == 9
    backend = (first.packet_out.dst, first.packet_out.dport)
    assert backend in {(b.ip, b.port) for b in BACKENDS}
    again = p.process(dataclasses.replace(first.packet_in, tcp_flags=TCP_ACK), now=1)
    assert again.ct == "established"
    assert (again.packet_out.dst, again.packet_out.dport) == backend
    assert "acl_egress" not in [h.table for h in again.hits]
    reply_port = 12 if backend[0] == "10.0.1.3" else UPLINK
    reply = p.process(Packet(reply_port, backend[0], "10.0.1.2", 6, 80, 40000, TCP_ACK), now=2)
    assert reply.ct == "reply"
    assert (reply.packet_out.src, reply.packet_out.sport) == ("10.96.0.9", 80)
    assert reply.verdict == Forward(11, 11)


def test_host_reaches_an_isolated_pod_through_a_service_on_any_port() -> None:
    # NetworkPolicy always allows the pod's own node, on the service path as on the direct one (as the
    # P4 program and the kernel target do); a client pod on a port no rule allows is still dropped.
    local = (Backend("10.0.1.3", 81),)
    svc = service(internal=BackendSet(local, build_table([b.identity for b in local])))
    host = pipeline(svc).process(syn(HOST, "192.168.0.1", "10.96.0.9"), now=0)
    assert host.verdict == Forward(12, 12)
    assert host.service_port_id == 9
    pod = pipeline(svc).process(syn(11, "10.0.1.2", "10.96.0.9"), now=0)
    assert pod.verdict == Drop("policy_ingress")


def test_reply_without_state_is_policy_checked() -> None:
    # web → client replies that conntrack never saw are new flows; client is not isolated, so allowed,
    # but a packet into the isolated web pod on a port no rule allows is dropped.
    p = pipeline()
    r = p.process(Packet(11, "10.0.1.2", "10.0.1.3", 6, 40000, 9999, TCP_ACK), now=0)
    assert r.verdict == Drop("policy_ingress")


def test_conntrack_expires_and_closing_shortens_the_timeout() -> None:
    p = pipeline()
    pkt = syn(11, "10.0.1.2", "10.0.1.3")
    p.process(pkt, now=0)
    assert p.process(dataclasses.replace(pkt, tcp_flags=TCP_ACK), now=59).ct == "established"
    assert p.process(dataclasses.replace(pkt, tcp_flags=TCP_ACK), now=200).ct == "new"  # syn_sent 60 s passed
    p.process(pkt.reply(12), now=201)  # reply seen: established, 300 s
    assert p.process(dataclasses.replace(pkt, tcp_flags=TCP_ACK), now=450).ct == "established"
    p.process(dataclasses.replace(pkt, tcp_flags=TCP_FIN | TCP_ACK), now=451)  # closing: 5 s
    assert p.process(dataclasses.replace(pkt, tcp_flags=TCP_ACK), now=457).ct == "new"
    assert p.expire(now=10_000) >= 2


@pytest.mark.parametrize(
    ("protocol", "when_empty", "verdict"),
    [
        (6, "reject", Reject("tcp-reset")),
        (UDP, "reject", Reject("icmp-port-unreachable")),
        (6, "drop", Drop("no_backend")),
    ],
)
def test_empty_service(protocol: int, when_empty: str, verdict: object) -> None:
    s = service(protocol="TCP" if protocol == 6 else "UDP", internal=BackendSet((), (), when_empty))  # type: ignore[arg-type]  # literal
    r = pipeline(s).process(Packet(11, "10.0.1.2", "10.96.0.9", protocol, 40000, 80, TCP_SYN), now=0)
    assert r.verdict == verdict


def test_affinity_sticks_across_flows_until_timeout() -> None:
    p = pipeline(service(affinity=Affinity(100)))
    first = p.process(syn(11, "10.0.1.2", "10.96.0.9", sport=1000), now=0)
    chosen = first.packet_out.dst
    for i, t in enumerate((10, 50, 109)):
        r = p.process(syn(11, "10.0.1.2", "10.96.0.9", sport=2000 + i), now=t)
        assert r.packet_out.dst == chosen
        assert any(h.table == "affinity_v4" and h.learned for h in r.hits)
    # 100 s after the last packet the affinity entry is gone: the Maglev table decides again.
    r = p.process(syn(11, "10.0.1.2", "10.96.0.9", sport=3000), now=400)
    assert any(h.table == "affinity_v4" and not h.learned for h in r.hits)


def test_node_port_from_uplink() -> None:
    r = pipeline().process(syn(UPLINK, "203.0.113.5", "192.168.0.1", dport=30080), now=0)
    assert r.service_port_id == 9
    assert r.packet_out.dport == 80
    assert [h.table for h in r.hits][:5] == [
        "port_info",
        "conntrack_v4",
        "service_frontend_v4",
        "node_address_v4",
        "node_port_v4",
    ]


def test_learned_entries_read_back_as_table_entries() -> None:
    p = pipeline()
    p.process(syn(11, "10.0.1.2", "10.96.0.9"), now=0)
    learned = p.learned_entries(now=1)
    assert sorted(e.action for e in learned) == ["ingress.ct_dnat_v4", "ingress.ct_reverse_nat_v4"]
    assert p.learned_entries(now=10_000) == []


def test_counters_count_hits_defaults_and_drops() -> None:
    p = pipeline()
    p.process(syn(11, "10.0.1.2", "10.0.1.3"), now=0)
    p.process(syn(11, "10.0.1.2", "10.0.1.3", dport=81), now=0)
    assert p.counters.drops == {"policy_ingress": 1}
    assert p.counters.defaults["acl_ingress"] == [1, 64]
    assert sum(v[0] for k, v in p.counters.entries.items() if k[0] == "ingress.acl_ingress") == 1
