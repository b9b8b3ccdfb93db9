"""The lb compiler, table-driven: frontends, endpoint selection, traffic policies, topology, bad input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import pytest

from xpunet.ir.lb import (
    CONNTRACK_KEY,
    Affinity,
    Backend,
    ConntrackTimeouts,
    Frontend,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
)
from xpunet.lb.state import LbCompiler
from xpunet.model.objects import (
    ZONE_LABEL,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Kind,
    Labels,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)


def svc(
    name: str = "web",
    *,
    ns: str = "default",
    ips: tuple[str, ...] = ("10.96.0.10",),
    ports: tuple[ServicePort, ...] = (ServicePort(80, name="http", target_port="http"),),
    **kw: Any,  # Service fields, checked by the dataclass at run time
) -> Service:
    base = Service(namespace=ns, name=name, cluster_ips=ips, ports=ports, selector=Labels({"app": name}))
    return replace(base, **kw)


def ep(
    ip: str,
    *,
    ready: bool = True,
    serving: bool | None = None,
    terminating: bool = False,
    node: str | None = "n1",
    zone: str | None = None,
    zones: tuple[str, ...] = (),
    nodes: tuple[str, ...] = (),
) -> Endpoint:
    return Endpoint(
        addresses=(ip,),
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=terminating,
        node_name=node,
        zone=zone,
        hints_for_zones=zones,
        hints_for_nodes=nodes,
    )


def eps(
    name: str,
    *endpoints: Endpoint,
    service: str | None = "web",
    ns: str = "default",
    family: Literal["IPv4", "IPv6", "FQDN"] = "IPv4",
    ports: tuple[EndpointPort, ...] = (EndpointPort(8080, name="http"),),
) -> EndpointSlice:
    return EndpointSlice(
        namespace=ns,
        name=name,
        service=service,
        address_type=family,
        endpoints=endpoints,
        ports=ports,
    )


def node(name: str, *addresses: str, zone: str | None = None) -> Node:
    labels = Labels({ZONE_LABEL: zone}) if zone else Labels()
    return Node(name=name, addresses=tuple(NodeAddress("InternalIP", a) for a in addresses), labels=labels)


KEY = "global.lb.svc.default.web.tcp-80.ipv4"
KEY6 = "global.lb.svc.default.web.tcp-80.ipv6"


def compile_all(*objs: Service | EndpointSlice | Node) -> LbCompiler:
    c = LbCompiler()
    for o in objs:
        c.update(o)
    c.flush()
    return c


def port(c: LbCompiler, key: str = KEY) -> LbServicePort:
    value = c.intents()[key]
    assert isinstance(value, LbServicePort)
    return value


def ips(backends: Sequence[Backend]) -> list[str]:
    return [f"{b.ip}:{b.port}" for b in backends]


def test_cluster_ip_with_ready_endpoints() -> None:
    c = compile_all(svc(), eps("web-1", ep("10.0.0.3"), ep("10.0.0.1"), ep("10.0.0.2", ready=False)))
    p = port(c)
    assert p.frontends == (Frontend("cluster_ip", "10.96.0.10", 80),)
    assert ips(p.internal.backends) == ["10.0.0.1:8080", "10.0.0.3:8080"]
    assert len(p.internal.table) == 251
    assert set(p.internal.table) == {0, 1}
    assert p.external is None
    assert (p.protocol, p.port, p.port_name, p.family) == ("TCP", 80, "http", "ipv4")
    assert 1 <= p.id < 2**24
    assert isinstance(c.intents()[CONNTRACK_KEY], ConntrackTimeouts)


@pytest.mark.parametrize(
    ("endpoints", "expected", "when_empty"),
    [
        pytest.param([ep("10.0.0.1")], ["10.0.0.1:8080"], "reject", id="ready"),
        pytest.param([], [], "reject", id="no-endpoints-reject"),
        pytest.param(
            [ep("10.0.0.1", ready=False, serving=True, terminating=True), ep("10.0.0.2", ready=False)],
            ["10.0.0.1:8080"],
            "reject",
            id="none-ready-serving-terminating",
        ),
        pytest.param(
            [ep("10.0.0.1", ready=False, serving=True, terminating=True), ep("10.0.0.2")],
            ["10.0.0.2:8080"],
            "reject",
            id="ready-preferred-over-terminating",
        ),
        pytest.param(
            [ep("10.0.0.1", ready=False, serving=False, terminating=True)],
            [],
            "reject",
            id="terminating-not-serving-unusable",
        ),
    ],
)
def test_endpoint_conditions(endpoints: list[Endpoint], expected: list[str], when_empty: str) -> None:
    c = compile_all(svc(), eps("web-1", *endpoints))
    p = port(c)
    assert ips(p.internal.backends) == expected
    assert p.internal.when_empty == when_empty
    assert (p.internal.table == ()) == (not expected)


def test_slices_merge_dedupe_and_named_ports_per_slice() -> None:
    c = compile_all(
        svc(),
        eps("web-a", ep("10.0.0.1"), ep("10.0.0.2", ready=False)),
        eps("web-b", ep("10.0.0.2"), ep("10.0.0.1", ready=False)),
        eps("web-c", ep("10.0.0.9"), ports=(EndpointPort(9090, name="http"),)),
        eps("web-d", ep("10.0.0.7"), ports=(EndpointPort(8080, name="other"),)),
    )
    assert ips(port(c).internal.backends) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.9:9090"]


def test_headless_and_external_name_produce_nothing() -> None:
    c = compile_all(
        svc(ips=(), headless=True),
        svc("ext", type="ExternalName", external_name="example.com", ips=()),
        eps("web-1", ep("10.0.0.1")),
    )
    assert [k for k in c.intents() if k.startswith("global.lb.svc.")] == []


def test_dual_stack_and_fqdn_ignored() -> None:
    c = compile_all(
        svc(ips=("10.96.0.10", "fd00::10"), ip_families=("IPv4", "IPv6")),
        eps("web-4", ep("10.0.0.1")),
        eps("web-6", ep("fd00::0001"), family="IPv6"),
        eps("web-f", ep("db.example.com"), family="FQDN"),
    )
    assert ips(port(c).internal.backends) == ["10.0.0.1:8080"]
    p6 = port(c, KEY6)
    assert p6.frontends == (Frontend("cluster_ip", "fd00::10", 80),)
    assert ips(p6.internal.backends) == ["fd00::1:8080"]
    assert p6.id != port(c).id
    assert "lb.rejected.default.web" not in c.rejections()


def test_selectorless_service_with_manual_slice() -> None:
    manual = Service(namespace="default", name="db", cluster_ips=("10.96.0.20",), ports=(ServicePort(5432),))
    c = compile_all(
        manual, eps("db-manual", ep("192.168.1.5", node=None), service="db", ports=(EndpointPort(5432),))
    )
    p = port(c, "global.lb.svc.default.db.tcp-5432.ipv4")
    assert ips(p.internal.backends) == ["192.168.1.5:5432"]


def test_node_port_load_balancer_external_ips() -> None:
    s = svc(
        type="LoadBalancer",
        ports=(ServicePort(80, name="http", node_port=30080), ServicePort(53, protocol="UDP", name="dns")),
        external_ips=("192.0.2.10",),
        load_balancer_ips=("198.51.100.7", "2001:db8::7"),
    )
    c = compile_all(
        s,
        eps(
            "web-1",
            ep("10.0.0.1"),
            ports=(EndpointPort(8080, name="http"), EndpointPort(5353, protocol="UDP", name="dns")),
        ),
        node("n1", "172.16.0.1", "fd00:1::1"),
    )
    p = port(c)
    assert p.frontends == (
        Frontend("cluster_ip", "10.96.0.10", 80),
        Frontend("external_ip", "192.0.2.10", 80),
        Frontend("load_balancer", "198.51.100.7", 80),
        Frontend("node_port", None, 30080),
    )
    assert p.external_snat
    assert p.external is None
    udp = port(c, "global.lb.svc.default.web.udp-53.ipv4")
    assert ips(udp.internal.backends) == ["10.0.0.1:5353"]
    assert not any(f.kind == "node_port" for f in udp.frontends)
    # An IPv6 LB ingress on an IPv4 service: a v6 intent with that frontend (no v6 backends: reject).
    p6 = port(c, KEY6)
    assert p6.frontends == (Frontend("load_balancer", "2001:db8::7", 80),)
    assert p6.internal.table == ()
    assert p6.internal.when_empty == "reject"
    assert c.intents()["node.n1.lb.addresses"] == LbNodeAddresses("n1", ("172.16.0.1", "fd00:1::1"))


def test_external_traffic_policy_local() -> None:
    s = svc(
        type="NodePort",
        ports=(ServicePort(80, name="http", node_port=30080),),
        external_traffic_policy="Local",
    )
    c = compile_all(
        s, eps("web-1", ep("10.0.0.1", node="n1"), ep("10.0.0.2", node="n2"), ep("10.0.0.3", node="n2"))
    )
    p = port(c)
    assert not p.external_snat
    assert p.node_specific
    assert ips(p.internal.backends) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    assert p.external is not None
    assert p.external.backends == ()
    assert p.external.when_empty == "drop"
    o1 = c.intents()["node.n1.lb.svc.default.web.tcp-80.ipv4"]
    o2 = c.intents()["node.n2.lb.svc.default.web.tcp-80.ipv4"]
    assert isinstance(o1, LbNodeOverride)
    assert isinstance(o2, LbNodeOverride)
    assert o1.internal is None
    assert o1.external is not None
    assert ips(o1.external.backends) == ["10.0.0.1:8080"]
    assert o2.external is not None
    assert ips(o2.external.backends) == ["10.0.0.2:8080", "10.0.0.3:8080"]
    assert o1.id == o2.id == p.id


def test_internal_traffic_policy_local_with_terminating_fallback() -> None:
    s = svc(internal_traffic_policy="Local")
    c = compile_all(
        s,
        eps(
            "web-1",
            ep("10.0.0.1", node="n1", ready=False, serving=True, terminating=True),
            ep("10.0.0.2", node="n2"),
        ),
    )
    p = port(c)
    assert p.internal.backends == ()
    assert p.internal.when_empty == "drop"
    o1 = c.intents()["node.n1.lb.svc.default.web.tcp-80.ipv4"]
    assert isinstance(o1, LbNodeOverride)
    assert o1.internal is not None
    assert ips(o1.internal.backends) == ["10.0.0.1:8080"]  # local: serving-terminating when none ready


def test_topology_hints_prefer_close() -> None:
    s = svc(traffic_distribution="PreferClose")
    c = compile_all(
        s,
        node("na", "172.16.0.1", zone="a"),
        node("nb", "172.16.0.2", zone="b"),
        node("nc", "172.16.0.3", zone="c"),
        eps(
            "web-1",
            ep("10.0.0.1", zone="a", zones=("a",)),
            ep("10.0.0.2", zone="b", zones=("b", "c")),
            ep("10.0.0.3", zone="b", zones=("b",)),
        ),
    )
    p = port(c)
    assert len(p.internal.backends) == 3  # fallback for nodes without an override
    ov = {n: c.intents()[f"node.{n}.lb.svc.default.web.tcp-80.ipv4"] for n in ("na", "nb", "nc")}
    got = {n: ips(o.internal.backends) for n, o in ov.items() if isinstance(o, LbNodeOverride) and o.internal}
    assert got == {"na": ["10.0.0.1:8080"], "nb": ["10.0.0.2:8080", "10.0.0.3:8080"], "nc": ["10.0.0.2:8080"]}
    # A missing hint on one ready endpoint disables topology (kube-proxy's rule).
    c.update(eps("web-1", ep("10.0.0.1", zone="a", zones=("a",)), ep("10.0.0.2", zone="b")))
    changes = c.flush()
    assert changes.intents["node.na.lb.svc.default.web.tcp-80.ipv4"] is None
    assert not any(k.startswith("node.") and ".lb.svc." in k for k in c.intents())


def test_session_affinity() -> None:
    c = compile_all(
        svc(session_affinity="ClientIP", session_affinity_timeout=600), eps("web-1", ep("10.0.0.1"))
    )
    assert port(c).affinity == Affinity(600)


def test_bad_input_is_reported_and_skipped() -> None:
    s = svc(
        ports=(
            ServicePort(80, name="http"),
            ServicePort(81, protocol="ICMP", name="bad"),  # type: ignore[arg-type]  # deliberately invalid
            ServicePort(82, name="nosuch"),
        ),
        external_ips=("not-an-ip",),
    )
    c = compile_all(s, eps("web-1", ep("10.0.0.1"), ep("10.0.0.300"), ep("fd00::1")))
    assert ips(port(c).internal.backends) == ["10.0.0.1:8080"]
    assert "global.lb.svc.default.web.icmp-81.ipv4" not in c.intents()
    problems = c.rejections()["lb.rejected.default.web"].problems
    text = "\n".join(problems)
    assert "'10.0.0.300'" in text
    assert "'fd00::1'" in text
    assert "'ICMP'" in text
    assert "'nosuch'" in text
    assert "'not-an-ip'" in text
    # Fixing the input clears the report with an explicit delete.
    c.update(svc(ports=(ServicePort(80, name="http"),)))
    c.update(eps("web-1", ep("10.0.0.1")))
    assert c.flush().status == {"lb.rejected.default.web": None}


def test_only_changed_keys_are_written_and_deletes_are_explicit() -> None:
    c = LbCompiler()
    c.update(svc())
    c.update(eps("web-1", ep("10.0.0.1")))
    c.update(node("n1", "172.16.0.1"))
    first = c.flush()
    assert set(first.intents) == {KEY, CONNTRACK_KEY, "node.n1.lb.addresses"}
    c.update(eps("web-1", ep("10.0.0.1")))  # identical: nothing
    assert not c.flush()
    ident = port(c).id
    c.update(eps("web-1", ep("10.0.0.1"), ep("10.0.0.2")))
    changes = c.flush()
    assert set(changes.intents) == {KEY}
    assert port(c).id == ident
    c.delete(Kind.SERVICE, "default", "web")
    c.delete(Kind.NODE, None, "n1")
    assert c.flush().intents == {KEY: None, "node.n1.lb.addresses": None}


def test_seed_keeps_ids_and_sweeps_stale_keys() -> None:
    first = compile_all(svc(), eps("web-1", ep("10.0.0.1")))
    stored = dict(first.intents())
    stale = LbServicePort(id=77, namespace="default", service="gone", family="ipv4", protocol="TCP", port=1)
    stored["global.lb.svc.default.gone.tcp-1.ipv4"] = stale
    moved = replace(port(first), id=12345)
    stored[KEY] = moved
    c = LbCompiler()
    c.seed(stored)
    c.update(svc())
    c.update(eps("web-1", ep("10.0.0.1")))
    changes = c.flush()
    assert changes.intents == {"global.lb.svc.default.gone.tcp-1.ipv4": None}
    assert port(c).id == 12345
