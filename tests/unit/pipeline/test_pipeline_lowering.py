"""Lowering of each intent kind into table entries, determinism, problems and overflow reports."""

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
    LbNodeOverride,
    LbServicePort,
)
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.entries import Exact, Lpm, Range, TableEntry, Ternary, check_entry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower, node_intents_from_kv
from xpunet.pipeline.schema import FLAG_AFFINITY, FLAG_LOCAL_PODS_USE_INTERNAL, SCHEMA, SET_BITS

ORIGIN = RuleOrigin("default", "allow-web", "ingress", 0)
A = PolicyEndpoint("default", "a", "ua", "n1", ("10.0.1.2", "fd00:1::2"))
B = PolicyEndpoint(
    "default",
    "b",
    "ub",
    "n1",
    ("10.0.1.3",),
    ingress_isolated=True,
    ingress=(PolicyRule(ORIGIN, "web-clients", (PortRange("TCP", 80, 80), PortRange("UDP", 0, 65535))),),
)
CLIENTS = IPSet("web-clients", ("10.0.0.0/16", "10.0.1.2/32"))
PORTS = NodePorts({"default/a": 11, "default/b": 12}, host=1, uplinks=(2,))
ROUTES = (
    NodeRoute("n1", ("10.0.1.0/24",), ("fd00:1::/64",), ("192.168.0.1",)),
    NodeRoute("n2", ("10.0.2.0/24",), ("fd00:2::/64",), ("192.168.0.2", "fc00::2")),
)


def svc(**kw: object) -> LbServicePort:
    base = LbServicePort(
        id=5,
        namespace="default",
        service="web",
        family="ipv4",
        protocol="TCP",
        port=80,
        frontends=(Frontend("cluster_ip", "10.96.0.10", 80), Frontend("node_port", None, 30080)),
        internal=BackendSet((Backend("10.0.1.3", 8080), Backend("10.0.2.4", 8080)), (0, 1, 1, 0, 1)),
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]  # test helper: fields by keyword


def entries_of(low: object, alias: str) -> list[TableEntry]:
    return [e for e in low.entries if e.alias == alias]  # type: ignore[attr-defined]  # Lowered


def test_every_lowered_entry_is_valid_and_sorted() -> None:
    low = lower(NodeIntents("n1", (A, B), (CLIENTS,), (svc(),), routes=ROUTES), PORTS)
    assert low.problems == ()
    assert low.overflow == ()
    for e in low.entries:
        assert check_entry(e) is None, e
    assert list(low.entries) == sorted(low.entries, key=lambda e: (e.table, repr(e.match), e.priority))


def test_lowering_is_deterministic_whatever_the_input_order() -> None:
    one = lower(NodeIntents("n1", (A, B), (CLIENTS,), (svc(),), routes=ROUTES), PORTS)
    two = lower(NodeIntents("n1", (B, A), (CLIENTS,), (svc(),), routes=tuple(reversed(ROUTES))), PORTS)
    assert one.entries == two.entries


def test_endpoints_get_port_antispoofing_and_host_routes() -> None:
    low = lower(NodeIntents("n1", (A,)), PORTS)
    port = {e.match_of("in_port"): (e.action, e.params) for e in entries_of(low, "port_info")}
    assert port[Exact(11)] == ("ingress.from_endpoint", (("endpoint_id", 11),))
    assert port[Exact(1)][0] == "ingress.from_host"
    assert port[Exact(2)][0] == "ingress.from_uplink"
    assert [e.params for e in entries_of(low, "endpoint_by_ip_v6")] == [(("endpoint_id", 11),)]
    (fib6,) = entries_of(low, "fib_v6")
    assert fib6.match == (("dst_addr", Lpm(0xFD000001 << 96 | 2, 128)),)
    assert fib6.action == "ingress.deliver_local"


def test_endpoint_without_port_is_reported_not_programmed() -> None:
    low = lower(NodeIntents("n1", (A,)), NodePorts({}))
    assert not entries_of(low, "port_info")
    assert low.problems == ("endpoint default/a: no vNIC port allocated; not programmed",)


def test_policy_rules_become_ternary_set_bits_and_port_ranges() -> None:
    low = lower(NodeIntents("n1", (A, B), (CLIENTS,)), PORTS)
    bit = low.src_set_bits["web-clients"]
    acl = entries_of(low, "acl_ingress")
    open_a = [e for e in acl if e.match_of("endpoint_id") == Exact(11)]
    assert len(open_a) == 1
    assert open_a[0].match == (("endpoint_id", Exact(11)),)
    rules_b = sorted((e for e in acl if e.match_of("endpoint_id") == Exact(12)), key=repr)
    assert {(e.match_of("protocol"), e.match_of("dst_port")) for e in rules_b} == {
        (Ternary(6, 0xFF), Range(80, 80)),
        (Ternary(17, 0xFF), None),  # 0..65535 is a don't-care and omitted
    }
    assert all(e.match_of("src_sets") == Ternary(1 << bit, 1 << bit) for e in rules_b)
    assert all(e.priority > 0 for e in acl)
    assert "allow-web ingress[0]" in rules_b[0].origin
    # An isolated direction with no rule has no entry at all: the const default denies.
    closed = dataclasses.replace(B, egress_isolated=True)
    low = lower(NodeIntents("n1", (closed,), (CLIENTS,)), PORTS)
    assert not [e for e in entries_of(low, "acl_egress") if e.match_of("endpoint_id") == Exact(12)]


def test_ip_set_classification_carries_bits_of_covering_prefixes() -> None:
    low = lower(NodeIntents("n1", (A, B), (CLIENTS,)), PORTS)
    bit = 1 << low.src_set_bits["web-clients"]
    by_prefix = {e.match_of("src_addr"): e.param("sets") for e in entries_of(low, "ip_set_src_v4")}
    assert by_prefix == {Lpm(0x0A000000, 16): bit, Lpm(0x0A000102, 32): bit}


def test_overlapping_sets_union_on_the_longer_prefix() -> None:
    wide = IPSet("wide", ("10.0.0.0/8",))
    narrow = IPSet("narrow", ("10.0.1.0/24",))
    rules = tuple(PolicyRule(ORIGIN, s, None) for s in ("wide", "narrow"))
    ep = dataclasses.replace(B, ingress=rules)
    low = lower(NodeIntents("n1", (ep,), (wide, narrow)), PORTS)
    w, n = (1 << low.src_set_bits[s] for s in ("wide", "narrow"))
    by_prefix = {e.match_of("src_addr"): e.param("sets") for e in entries_of(low, "ip_set_src_v4")}
    assert by_prefix == {Lpm(0x0A000000, 8): w, Lpm(0x0A000100, 24): w | n}


def test_too_many_sets_are_reported_and_their_rules_left_out() -> None:
    sets = tuple(IPSet(f"s{i}", (f"10.{i // 256}.{i % 256}.0/24",)) for i in range(SET_BITS + 3))
    ep = dataclasses.replace(B, ingress=tuple(PolicyRule(ORIGIN, s.id, None) for s in sets))
    low = lower(NodeIntents("n1", (ep,), sets), PORTS)
    assert [(o.table, o.needed, o.size) for o in low.overflow] == [
        ("ip set bits (ingress peers)", SET_BITS + 3, SET_BITS)
    ]
    assert sum("no membership bit" in p for p in low.problems) == 3
    assert len(low.src_set_bits) == SET_BITS


def test_service_lowers_frontends_group_and_every_bucket() -> None:
    low = lower(
        NodeIntents("n1", services=(svc(),), addresses=LbNodeAddresses("n1", ("192.168.0.1",))), PORTS
    )
    (fe,) = entries_of(low, "service_frontend_v4")
    assert fe.match == (("dst_addr", Exact(0x0A60000A)), ("protocol", Exact(6)), ("dst_port", Exact(80)))
    assert dict(fe.params) == {"service_port_id": 5, "backend_group": 10, "flags": 0, "affinity_timeout": 0}
    (np,) = entries_of(low, "node_port_v4")
    assert np.param("backend_group") == 10  # external is None: the internal set
    (grp,) = entries_of(low, "backend_group")
    assert grp.action == "ingress.maglev_group"
    assert grp.param("bucket_count") == 5
    buckets = {e.match_of("bucket"): e.param("addr") for e in entries_of(low, "maglev_backend_v4")}
    buckets_list = [buckets[Exact(i)] for i in range(5)]
    assert buckets_list == [0x0A000103, 0x0A000204, 0x0A000204, 0x0A000103, 0x0A000204]
    assert [e.match_of("dst_addr") for e in entries_of(low, "node_address_v4")] == [Exact(0xC0A80001)]


@pytest.mark.parametrize(
    ("when_empty", "action"), [("reject", "ingress.reject_empty_group"), ("drop", "ingress.drop_empty_group")]
)
def test_empty_backend_set_lowers_to_reject_or_drop(when_empty: str, action: str) -> None:
    s = svc(internal=BackendSet((), (), when_empty))  # type: ignore[arg-type]  # literal from the param
    low = lower(NodeIntents("n1", services=(s,)), PORTS)
    assert [e.action for e in entries_of(low, "backend_group")] == [action]
    assert not entries_of(low, "maglev_backend_v4")


def test_external_set_override_and_flags() -> None:
    local = BackendSet((Backend("10.0.1.3", 8080),), (0, 0, 0))
    s = svc(external=BackendSet(), external_snat=False, affinity=Affinity(600))
    low = lower(NodeIntents("n1", services=(s,), overrides=(LbNodeOverride(5, external=local),)), PORTS)
    groups = {e.match_of("backend_group"): e.param("bucket_count") for e in entries_of(low, "backend_group")}
    assert groups == {Exact(10): 5, Exact(11): 3}
    (np,) = entries_of(low, "node_port_v4")
    assert np.param("backend_group") == 11
    assert np.param("flags") == FLAG_AFFINITY | FLAG_LOCAL_PODS_USE_INTERNAL
    assert np.param("affinity_timeout") == 600


def test_bad_service_is_reported_and_adds_nothing() -> None:
    s = svc(frontends=(Frontend("cluster_ip", "fd00::10", 80),))
    low = lower(NodeIntents("n1", services=(s,)), PORTS)
    assert not entries_of(low, "backend_group")
    assert low.problems
    assert "fd00::10 is not IPv4" in low.problems[0]


def test_conflicting_frontends_keep_the_first_and_report() -> None:
    low = lower(NodeIntents("n1", services=(svc(), svc(id=6, service="other"))), PORTS)
    (fe,) = entries_of(low, "service_frontend_v4")
    assert fe.param("service_port_id") == 5
    assert any("conflicts with" in p for p in low.problems)


def test_conntrack_timeouts_per_protocol_and_state() -> None:
    low = lower(NodeIntents("n1", conntrack=ConntrackTimeouts(tcp_established=999, udp=7)), PORTS)
    got = {
        (e.match_of("protocol"), e.match_of("ct_state")): e.param("seconds")
        for e in entries_of(low, "ct_timeout")
    }
    assert got[(Exact(6), Exact(1))] == 999
    assert got[(Exact(17), Exact(0))] == 7


@pytest.mark.parametrize("kind", ["direct", "vxlan"])
def test_routes_to_other_nodes_go_through_next_hops(kind: str) -> None:
    routes = tuple(dataclasses.replace(r, next_hop=kind) for r in ROUTES)  # type: ignore[arg-type]  # literal
    low = lower(NodeIntents("n1", routes=routes), PORTS)
    nhs = {e.match_of("next_hop_id"): e for e in entries_of(low, "next_hop")}
    assert set(low.next_hops.values()) == {"n2"}
    assert len(nhs) == 2
    fib = {e.match_of("dst_addr"): e for e in entries_of(low, "fib_v4")}
    via = fib[Lpm(0x0A000200, 24)]
    nh = nhs[Exact(via.param("next_hop_id"))]
    if kind == "direct":
        assert nh.action == "ingress.via_direct_v4"
        assert nh.param("node_addr") == 0xC0A80002
    else:
        assert nh.action == "ingress.via_vxlan_v4"
        assert nh.param("vtep_addr") == 0xC0A80002
    assert fib[Lpm(0xC0A80001, 32)].action == "ingress.deliver_host"  # this node's own address
    if kind == "direct":  # the other node's address too (a NodePort dialled there)
        assert fib[Lpm(0xC0A80002, 32)].param("next_hop_id") == via.param("next_hop_id")
    else:  # the underlay reaches it; the overlay next hop would loop
        assert Lpm(0xC0A80002, 32) not in fib
    assert Lpm(0x0A000100, 24) not in fib  # no route for the node's own CIDR: only pod host routes


def test_table_overflow_is_reported_with_counts_not_truncated() -> None:
    small = dataclasses.replace(
        SCHEMA,
        tables=tuple(dataclasses.replace(t, size=2) if t.alias == "fib_v4" else t for t in SCHEMA.tables),
    )
    low = lower(NodeIntents("n1", (A, B), routes=ROUTES), PORTS, schema=small)
    # two pod host routes, the node's own address, n2's CIDR and n2's address
    assert [str(o) for o in low.overflow] == ["fib_v4: 5 entries needed, 2 declared"]
    assert len(entries_of(low, "fib_v4")) == 5


def test_node_intents_from_kv_picks_this_node_and_globals() -> None:
    values: dict[str, object] = {
        "node.n1.policy.ep.default.a": A,
        "node.n2.policy.ep.default.x": dataclasses.replace(A, pod="x", node="n2"),
        "node.n1.policy.ipset.web-clients": CLIENTS,
        "global.lb.svc.default.web.tcp-80.ipv4": svc(),
        "global.lb.conntrack": ConntrackTimeouts(),
        "global.routes.node.n2": ROUTES[1],
        "node.n1.lb.addresses": LbNodeAddresses("n1", ("192.168.0.1",)),
    }
    ni = node_intents_from_kv("n1", values)
    assert ni.endpoints == (A,)
    assert ni.ip_sets == (CLIENTS,)
    assert len(ni.services) == 1
    assert ni.routes == (ROUTES[1],)
    assert ni.addresses is not None
    assert ni.conntrack is not None
