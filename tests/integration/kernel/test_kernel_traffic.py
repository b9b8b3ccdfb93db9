"""Kernel target with real packets: policy allow/deny, service DNAT and reverse NAT, reject, affinity.

Entries come from the pipeline's own lowering of small intents; the node is a
network namespace with pods on veth pairs; every verdict is a real TCP/UDP
exchange run inside the pod namespaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology, in_ns
from xpunet.ir.lb import Affinity, Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule, PortRange, RuleOrigin
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

PORTS = {"client": 11, "web": 12, "web2": 13, "other": 14}
ADDRS = {
    "client": ("10.0.1.2", "fd00:1::2"),
    "web": ("10.0.1.3", "fd00:1::3"),
    "web2": ("10.0.1.4", "fd00:1::4"),
    "other": ("10.0.1.5", "fd00:1::5"),
}
ORIGIN = RuleOrigin("d", "web", "ingress", 0)


def endpoint(name: str, **kw: object) -> PolicyEndpoint:
    ep = PolicyEndpoint("d", name, f"u-{name}", "n1", ADDRS[name])
    return dataclasses.replace(ep, **kw)  # type: ignore[arg-type]  # test helper: fields by keyword


def backends(*names: str, port: int = 8080) -> BackendSet:
    bs = tuple(Backend(ADDRS[n][0], port) for n in sorted(names))
    return BackendSet(bs, build_table([b.identity for b in bs]))


def svc(sid: int, vip: str, internal: BackendSet, *, affinity: bool = False) -> LbServicePort:
    return LbServicePort(
        sid,
        "d",
        f"s{sid}",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", vip, 80),),
        internal=internal,
        affinity=Affinity(600) if affinity else None,
    )


def intents(*, web_rule_port: int = 80, web_backends: tuple[str, ...] = ("web", "web2")) -> NodeIntents:
    ports = (PortRange("TCP", web_rule_port, web_rule_port), PortRange("TCP", 8080, 8080))
    web_ingress = (PolicyRule(ORIGIN, "clients", ports),)
    eps = (
        endpoint("client"),
        endpoint("web", ingress_isolated=True, ingress=web_ingress),
        endpoint("web2"),
        endpoint("other", egress_isolated=True),
    )
    v6 = dataclasses.replace(
        svc(4, "fd00:96::9", BackendSet()), family="ipv6", internal=backends6(*web_backends)
    )
    return NodeIntents(
        "n1",
        eps,
        (IPSet("clients", ("10.0.1.2/32", "fd00:1::2/128")),),
        (
            svc(1, "10.96.0.9", backends(*web_backends)),
            svc(2, "10.96.0.10", BackendSet()),
            svc(3, "10.96.0.11", backends("web", "web2"), affinity=True),
            v6,
        ),
    )


def backends6(*names: str) -> BackendSet:
    bs = tuple(Backend(ADDRS[n][1], 8080) for n in sorted(names))
    return BackendSet(bs, build_table([b.identity for b in bs]))


NODE_PORTS = NodePorts({f"d/{n}": p for n, p in PORTS.items()}, host=1)


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, port in PORTS.items():
            t.add_pod(name, port, *ADDRS[name])
        t.serve("web", "tcp/80", "tcp/81", "tcp/8080", "udp/53")
        t.serve("web2", "tcp/80", "tcp/8080")
        t.serve("client", "tcp/80")
        yield t
    finally:
        t.close()


@pytest.fixture
async def target(topo: Topology) -> AsyncIterator[KernelTarget]:
    kt = KernelTarget(netns=topo.node, port_names={p.port: p.ifname for p in topo.pods.values()})
    try:
        low = lower(intents(), NODE_PORTS)
        assert low.problems == ()
        result = await kt.apply(diff((), low.entries))
        assert result.problems == ()
        assert result.route_errors == ()
        yield kt
    finally:
        await kt.close()


async def test_policy_allows_and_denies_real_connections(topo: Topology, target: KernelTarget) -> None:
    web, web2, client = ADDRS["web"], ADDRS["web2"], ADDRS["client"]
    # The first IPv6 packet may wait for neighbour discovery on both veths: a generous timeout.
    assert topo.connect("client", [(web[1], 80)], timeout=10) == [f"OK web {client[1]}"]
    got = topo.connect("client", [(web[0], 80), (web[0], 81), (web2[0], 80)])
    assert got[0] == f"OK web {client[0]}"
    assert got[1] == "TIMEOUT"  # port 81 is not allowed by web's ingress rule
    assert got[2].startswith("OK web2")  # web2 is not isolated
    # web2 is not in the "clients" set: web's ingress drops it; "other" may send nothing at all.
    assert topo.connect("web2", [(web[0], 80)]) == ["TIMEOUT"]
    assert topo.connect("other", [(web2[0], 80)]) == ["TIMEOUT"]
    counters = await target.counters()
    assert sum(p for p, _ in counters.values()) >= 2  # the allowed rule counted the two flows
    drops = await target.drop_counters()
    assert drops["deny_ingress"][0] >= 2
    assert drops["deny_egress"][0] >= 1


async def test_spoofed_source_is_dropped(topo: Topology, target: KernelTarget) -> None:
    in_ns(topo.pods["web2"].ns, "ip", "addr", "add", "10.0.1.99/32", "dev", "eth0")
    in_ns(topo.pods["web2"].ns, "ip", "route", "replace", "default", "via", "169.254.1.1", "src", "10.0.1.99")
    assert topo.connect("web2", [(ADDRS["client"][0], 80)]) == ["TIMEOUT"]
    assert (await target.drop_counters())["drop_spoofed_source"][0] >= 1


async def test_service_dnat_spreads_and_replies_are_reverse_nated(
    topo: Topology, target: KernelTarget
) -> None:
    # Generous timeout: a pod's first IPv6 packet may wait for neighbour discovery on both veths.
    got = topo.connect("client", [("10.96.0.9", 80)] * 16 + [("fd00:96::9", 80)] * 4, timeout=10)
    servers = {g.split()[1] for g in got if g.startswith("OK")}
    failed = [(i, g) for i, g in enumerate(got) if not g.startswith("OK")]
    assert failed == []
    assert servers == {"web", "web2"}  # both backends chosen across flows
    # The client saw its own address as the peer: no SNAT, and the reply came back from the VIP.
    assert all(g.split()[2] in ADDRS["client"] for g in got)


async def test_service_without_backend_is_refused_fast(topo: Topology, target: KernelTarget) -> None:
    assert topo.connect("client", [("10.96.0.10", 80)], timeout=5) == ["REFUSED"]


async def test_affinity_sticks_to_one_backend(topo: Topology, target: KernelTarget) -> None:
    got = topo.connect("client", [("10.96.0.11", 80)] * 8)
    assert len({g.split()[1] for g in got}) == 1, got


async def test_endpoint_change_applies_incrementally(topo: Topology, target: KernelTarget) -> None:
    before = lower(intents(), NODE_PORTS).entries
    after = lower(intents(web_backends=("web2",)), NODE_PORTS).entries
    result = await target.apply(diff(before, after))
    # Per family (the v4 and v6 services both change): the backend slots, the frontend's pick
    # element and the pick chains of the old and new backend counts; nothing else.
    assert 0 < result.added + result.deleted <= 14
    got = topo.connect("client", [("10.96.0.9", 80)] * 6)
    assert {g.split()[1] for g in got} == {"web2"}


async def test_policy_change_and_reconcile_after_restart(topo: Topology, target: KernelTarget) -> None:
    after = lower(intents(web_rule_port=81), NODE_PORTS).entries
    # A fresh target object, as after a datapath restart: it reads the kernel and changes only the difference.
    fresh = KernelTarget(netns=topo.node, port_names=target.state.port_names)
    try:
        result = await fresh.reconcile(after)
        assert 0 < result.added + result.deleted <= 6
        again = await fresh.reconcile(after)
        assert again.added == again.deleted == 0
    finally:
        await fresh.close()
    web = ADDRS["web"][0]
    assert topo.connect("client", [(web, 81), (web, 80)]) == [f"OK web {ADDRS['client'][0]}", "TIMEOUT"]


async def test_reconcile_repairs_drift_and_leaves_other_tables_alone(
    topo: Topology, target: KernelTarget
) -> None:
    in_ns(topo.node, "nft", "add table inet other; add chain inet other c; add rule inet other c accept")
    in_ns(topo.node, "nft", "delete element inet xpunet fe_drop4 { 10.96.0.9 . 6 . 80 }", check=False)
    in_ns(topo.node, "ip", "route", "del", f"{ADDRS['web'][0]}/32")
    in_ns(topo.node, "ip", "route", "add", "10.77.0.0/16", "dev", "xv11", "proto", "93")
    result = await target.reconcile(lower(intents(), NODE_PORTS).entries)
    assert result.added == 1
    assert result.deleted == 1
    assert "table inet other" in in_ns(topo.node, "nft", "list", "tables").stdout
    assert topo.connect("client", [(ADDRS["web"][0], 80)])[0].startswith("OK web")
