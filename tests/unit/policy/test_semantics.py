"""Table-driven NetworkPolicy semantics, written from the networking.k8s.io/v1 API reference.

Each case is a cluster, one connection and the verdict the API text implies.
Both the reference evaluator and the compiled intents must give that verdict.
"""

from __future__ import annotations

import pytest

from xpunet.model.errors import ModelError
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    LabelSelectorRequirement,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Pod,
    Protocol,
)
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.reference import Cluster, evaluate_intents, is_allowed


def sel(**labels: str) -> LabelSelector:
    return LabelSelector(Labels(labels))


def pod(ns: str, name: str, ip: str, node: str | None = "n1", **labels: str) -> Pod:
    ports = (
        (ContainerPort(8080, "TCP", "http"),)
        if name.startswith("web")
        else (ContainerPort(9090, "TCP", "http"),)
    )
    return Pod(ns, name, name, node=node, ips=(ip,), labels=Labels(labels), ports=ports, phase="Running")


WEB = pod("a", "web", "10.0.0.1", app="web")
DB = pod("a", "db", "10.0.0.2", app="db")
OTHER_NS = pod("b", "cli", "10.0.1.1", app="web")
WEB2 = pod("a", "web2", "10.0.0.3", app="web")  # named port "http" is 8080 on web*, 9090 elsewhere
NAMESPACES = (Namespace("a", Labels({NAMESPACE_NAME_LABEL: "a"})), Namespace("b", Labels({"team": "x"})))
PODS = (WEB, DB, OTHER_NS, WEB2)


def ingress_to_db(*rules: NetworkPolicyRule) -> NetworkPolicy:
    return NetworkPolicy("a", "p", pod_selector=sel(app="db"), ingress=rules)


def egress_from_web(*rules: NetworkPolicyRule) -> NetworkPolicy:
    return NetworkPolicy("a", "p", pod_selector=sel(app="web"), policy_types=("Egress",), egress=rules)


def rule(*peers: NetworkPolicyPeer, ports: tuple[NetworkPolicyPort, ...] = ()) -> NetworkPolicyRule:
    return NetworkPolicyRule(ports=ports, peers=peers)


def tcp(port: int | str | None, end: int | None = None) -> NetworkPolicyPort:
    return NetworkPolicyPort("TCP", port, end)


CASES = [
    pytest.param((), "10.0.0.1", "10.0.0.2", 80, "TCP", True, id="no policy: allowed"),
    pytest.param((ingress_to_db(),), "10.0.0.1", "10.0.0.2", 80, "TCP", False, id="empty ingress isolates"),
    pytest.param(
        (NetworkPolicy("a", "p", pod_selector=sel(app="db"), egress=(rule(),)),),
        "10.0.0.2",
        "10.0.0.1",
        80,
        "TCP",
        True,
        id="policyTypes default Ingress only: egress rules ignored, egress not isolated",
    ),
    pytest.param(
        (NetworkPolicy("a", "p", pod_selector=sel(app="db"), policy_types=("Egress",)),),
        "10.0.0.2",
        "10.0.0.1",
        80,
        "TCP",
        False,
        id="Egress type with no rules denies egress",
    ),
    pytest.param(
        (ingress_to_db(rule()),), "10.0.1.1", "10.0.0.2", 1, "SCTP", True, id="rule without peers/ports"
    ),
    pytest.param(
        (ingress_to_db(rule(NetworkPolicyPeer(pod_selector=sel(app="web")))),),
        "10.0.1.1",
        "10.0.0.2",
        80,
        "TCP",
        False,
        id="podSelector alone is the policy namespace only",
    ),
    pytest.param(
        (ingress_to_db(rule(NetworkPolicyPeer(namespace_selector=sel(team="x")))),),
        "10.0.1.1",
        "10.0.0.2",
        80,
        "TCP",
        True,
        id="namespaceSelector alone: all pods of matching namespaces",
    ),
    pytest.param(
        (
            ingress_to_db(
                rule(NetworkPolicyPeer(namespace_selector=sel(team="x"), pod_selector=sel(app="db")))
            ),
        ),
        "10.0.1.1",
        "10.0.0.2",
        80,
        "TCP",
        False,
        id="namespaceSelector AND podSelector",
    ),
    pytest.param(
        (ingress_to_db(rule(NetworkPolicyPeer(namespace_selector=sel(**{NAMESPACE_NAME_LABEL: "b"})))),),
        "10.0.1.1",
        "10.0.0.2",
        80,
        "TCP",
        True,
        id="automatic kubernetes.io/metadata.name label (object lacks it)",
    ),
    pytest.param(
        (
            ingress_to_db(
                rule(
                    NetworkPolicyPeer(
                        pod_selector=LabelSelector(
                            match_expressions=(LabelSelectorRequirement("tier", "NotIn", ("fe",)),)
                        )
                    )
                )
            ),
        ),
        "10.0.0.1",
        "10.0.0.2",
        80,
        "TCP",
        True,
        id="NotIn matches a pod without the key",
    ),
    pytest.param(
        (
            ingress_to_db(
                rule(
                    NetworkPolicyPeer(
                        pod_selector=LabelSelector(
                            match_expressions=(LabelSelectorRequirement("app", "DoesNotExist"),)
                        )
                    )
                )
            ),
        ),
        "10.0.0.1",
        "10.0.0.2",
        80,
        "TCP",
        False,
        id="DoesNotExist",
    ),
    pytest.param(
        (ingress_to_db(rule(NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/24", ("10.0.0.0/31",))))),),
        "10.0.0.1",
        "10.0.0.2",
        80,
        "TCP",
        False,
        id="ipBlock except excludes",
    ),
    pytest.param(
        (ingress_to_db(rule(NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/24", ("10.0.0.0/31",))))),),
        "10.0.0.3",
        "10.0.0.2",
        80,
        "TCP",
        True,
        id="ipBlock includes outside except",
    ),
    pytest.param(
        (ingress_to_db(rule(ports=(tcp(80, 90),))),),
        "10.0.0.1",
        "10.0.0.2",
        90,
        "TCP",
        True,
        id="endPort inclusive",
    ),
    pytest.param(
        (ingress_to_db(rule(ports=(tcp(80, 90),))),),
        "10.0.0.1",
        "10.0.0.2",
        91,
        "TCP",
        False,
        id="beyond endPort",
    ),
    pytest.param(
        (ingress_to_db(rule(ports=(tcp(80),))),),
        "10.0.0.1",
        "10.0.0.2",
        80,
        "UDP",
        False,
        id="protocol must match",
    ),
    pytest.param(
        (ingress_to_db(rule(ports=(NetworkPolicyPort("SCTP"),))),),
        "10.0.0.1",
        "10.0.0.2",
        4242,
        "SCTP",
        True,
        id="protocol without port: all ports of it",
    ),
    pytest.param(
        (ingress_to_db(rule(ports=(tcp("http"),))),),
        "10.0.0.1",
        "10.0.0.2",
        9090,
        "TCP",
        True,
        id="ingress named port resolves on the destination",
    ),
    pytest.param(
        (egress_from_web(rule(ports=(tcp("http"),))),),
        "10.0.0.1",
        "10.0.0.3",
        8080,
        "TCP",
        True,
        id="egress named port: web2 has http=8080",
    ),
    pytest.param(
        (egress_from_web(rule(ports=(tcp("http"),))),),
        "10.0.0.1",
        "10.0.0.2",
        8080,
        "TCP",
        False,
        id="egress named port: db has http=9090, not 8080",
    ),
    pytest.param(
        (egress_from_web(rule(NetworkPolicyPeer(ip_block=IPBlock("0.0.0.0/0")), ports=(tcp("http"),))),),
        "10.0.0.1",
        "8.8.8.8",
        8080,
        "TCP",
        False,
        id="named port never matches a non-pod destination",
    ),
    pytest.param(
        (
            ingress_to_db(rule(NetworkPolicyPeer(pod_selector=sel(app="web")))),
            NetworkPolicy("a", "q", pod_selector=sel(app="db"), ingress=(rule(ports=(tcp(5432),)),)),
        ),
        "10.0.1.1",
        "10.0.0.2",
        5432,
        "TCP",
        True,
        id="policies are additive",
    ),
]


def verdicts(
    policies: tuple[NetworkPolicy, ...], src: str, dst: str, port: int, proto: Protocol
) -> tuple[bool, bool]:
    cluster = Cluster(PODS, NAMESPACES, policies)
    compiler = PolicyCompiler()
    for p in PODS:
        compiler.upsert_pod(p)
    for ns in NAMESPACES:
        compiler.upsert_namespace(ns)
    for pol in policies:
        assert compiler.upsert_policy(pol) is None
    compiler.flush()
    want = is_allowed(cluster, src_ip=src, dst_ip=dst, port=port, protocol=proto)
    got = evaluate_intents(compiler.intents, src_ip=src, dst_ip=dst, port=port, protocol=proto)
    return want, got


@pytest.mark.parametrize(("policies", "src", "dst", "port", "proto", "expected"), CASES)
def test_semantics(
    policies: tuple[NetworkPolicy, ...], src: str, dst: str, port: int, proto: Protocol, expected: bool
) -> None:
    assert verdicts(policies, src, dst, port, proto) == (expected, expected)


def test_local_node_traffic_is_allowed_into_isolated_pod() -> None:
    compiler = PolicyCompiler()
    compiler.upsert_pod(DB)
    compiler.upsert_policy(ingress_to_db())
    compiler.flush()
    kw = {"src_ip": "192.168.0.1", "dst_ip": "10.0.0.2", "port": 80, "protocol": "TCP"}
    assert not evaluate_intents(compiler.intents, **kw)  # type: ignore[arg-type]  # kwargs typed loosely
    assert evaluate_intents(compiler.intents, from_local_node=True, **kw)  # type: ignore[arg-type]


def test_host_network_and_ipless_pods_get_no_endpoint_until_they_have_an_ip() -> None:
    compiler = PolicyCompiler()
    compiler.upsert_pod(
        Pod("a", "h", "h", node="n1", ips=("192.168.0.5",), host_network=True, phase="Running")
    )
    compiler.upsert_pod(Pod("a", "new", "n", node="n1", phase="Pending"))
    assert compiler.flush() == {}
    compiler.upsert_pod(Pod("a", "new", "n", node="n1", ips=("10.0.0.9",), phase="Running"))
    assert list(compiler.flush()) == ["node.n1.policy.ep.a.new"]


def test_dual_stack_pod_ips_are_both_members() -> None:
    compiler = PolicyCompiler()
    compiler.upsert_pod(
        Pod("a", "d", "d", node="n1", ips=("10.0.0.9", "fd00::9"), labels=Labels({"app": "web"}))
    )
    compiler.upsert_pod(DB)
    compiler.upsert_policy(ingress_to_db(rule(NetworkPolicyPeer(pod_selector=sel(app="web")))))
    compiler.flush()
    sets = [v for k, v in compiler.intents.items() if ".ipset." in k]
    assert [s.members for s in sets] == [("10.0.0.9/32", "fd00::9/128")]  # type: ignore[union-attr]


def test_identical_peers_in_two_policies_share_one_set() -> None:
    compiler = PolicyCompiler()
    compiler.upsert_pod(DB)
    peers = rule(NetworkPolicyPeer(pod_selector=sel(app="web")))
    compiler.upsert_policy(NetworkPolicy("a", "p1", pod_selector=sel(app="db"), ingress=(peers,)))
    compiler.upsert_policy(NetworkPolicy("a", "p2", pod_selector=sel(app="db"), ingress=(peers,)))
    compiler.flush()
    assert sum(1 for k in compiler.intents if ".ipset." in k) == 1


def test_a_label_change_writes_only_what_it_affects() -> None:
    compiler = PolicyCompiler()
    for p in PODS:
        compiler.upsert_pod(p)
    compiler.upsert_policy(ingress_to_db(rule(NetworkPolicyPeer(pod_selector=sel(app="web")))))
    compiler.flush()
    compiler.upsert_pod(pod("a", "web2", "10.0.0.3", app="other"))
    changed = compiler.flush()
    # web2's own endpoint (labels are not in it, so unchanged) and the set on db's node.
    assert [k for k in changed if ".ipset." in k]
    assert all(".ep." not in k for k in changed)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        pytest.param(
            ingress_to_db(rule(NetworkPolicyPeer(ip_block=IPBlock("10.0.0.0/24", ("10.1.0.0/24",))))),
            "spec.ingress[0].from[0].ipBlock.except[0]",
            id="except outside cidr",
        ),
        pytest.param(
            ingress_to_db(rule(ports=(tcp(90, 80),))), "spec.ingress[0].ports[0].endPort", id="endPort < port"
        ),
        pytest.param(
            ingress_to_db(rule(ports=(tcp("http", 90),))), "spec.ingress[0].ports[0].endPort", id="named+end"
        ),
        pytest.param(ingress_to_db(rule(ports=(tcp(0),))), "spec.ingress[0].ports[0].port", id="port 0"),
    ],
)
def test_rejected_policies_name_the_field_and_are_ignored(policy: NetworkPolicy, field: str) -> None:
    compiler = PolicyCompiler()
    compiler.upsert_pod(DB)
    error = compiler.upsert_policy(policy)
    assert isinstance(error, ModelError)
    assert error.field == field
    compiler.flush()
    assert not any(getattr(v, "ingress_isolated", False) for v in compiler.intents.values())
