"""The local cluster's pure parts: address plan, the manifests it writes, the expected-matrix column."""

from __future__ import annotations

from typing import Any

import pytest

from xpunet.cluster.matrix import Cell, destinations, expected, format_matrix
from xpunet.cluster.plan import PlanError, endpoint_slices, make_plan, node_manifest, pod_manifest, pod_spec
from xpunet.model import parse
from xpunet.model.objects import Pod, Service


def _pod(name: str, node: str, labels: dict[str, str], ports: list[dict[str, Any]], ips: list[str]) -> Pod:
    raw = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "d", "name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
    }
    return parse.parse_pod(pod_manifest(pod_spec(raw, parse.parse_pod(raw)), ips))


def _svc(name: str, **spec: Any) -> Service:
    return parse.parse_service(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "d", "name": name}, "spec": spec}
    )


@pytest.mark.parametrize(
    ("run", "nodes", "message"),
    [
        pytest.param("Bad!", 2, "run id", id="run-id"),
        pytest.param("abc", 0, "nodes 0", id="no-nodes"),
        pytest.param("abc", 201, "nodes 201", id="too-many"),
    ],
)
def test_bad_plans_name_the_field(run: str, nodes: int, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make_plan(run, nodes)


def test_plan_names_and_addresses_are_per_run_and_node() -> None:
    plan = make_plan("r1", 2)
    n2 = plan.node("node-2")
    assert (n2.netns, n2.address4, n2.address6, n2.pod_cidrs) == (
        "xpunet-r1-node-2",
        "172.31.0.12",
        "fd00:172:31::c",
        ("10.244.2.0/24", "fd00:10:244:2::/64"),
    )
    assert plan.pod_netns("shop", "web-1").startswith(plan.prefix)
    node = parse.parse_node(node_manifest(n2))
    assert node.pod_cidrs == n2.pod_cidrs
    assert [a.address for a in node.addresses if a.type == "InternalIP"] == [n2.address4, n2.address6]
    with pytest.raises(PlanError, match="node-3"):
        plan.node("node-3")


def test_pod_without_node_is_an_error() -> None:
    raw = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "d", "name": "p"}}
    with pytest.raises(PlanError, match=r"d/p: spec.nodeName"):
        pod_spec(raw, parse.parse_pod(raw))


def test_endpoint_slices_resolve_named_ports_per_pod_and_family() -> None:
    a = _pod("a", "node-1", {"app": "w"}, [{"name": "http", "containerPort": 8080}], ["10.0.0.1", "fd00::1"])
    b = _pod("b", "node-2", {"app": "w"}, [{"name": "http", "containerPort": 9090}], ["10.0.0.2"])
    other = _pod("c", "node-2", {"app": "x"}, [{"name": "http", "containerPort": 8080}], ["10.0.0.3"])
    svc = _svc("s", clusterIP="10.96.0.1", selector={"app": "w"}, ports=[{"port": 80, "targetPort": "http"}])
    empty = _svc("e", clusterIP="10.96.0.2", selector={"app": "none"}, ports=[{"port": 80}])
    slices = [parse.parse_endpoint_slice(s) for s in endpoint_slices([svc, empty], [a, b, other])]
    got = sorted(
        (s.address_type, s.ports[0].port, tuple(e.addresses[0] for e in s.endpoints)) for s in slices
    )
    assert got == [("IPv4", 8080, ("10.0.0.1",)), ("IPv4", 9090, ("10.0.0.2",)), ("IPv6", 8080, ("fd00::1",))]
    assert all(s.service == "s" for s in slices)


def test_expected_column_follows_the_reference_evaluator() -> None:
    web = _pod("web", "node-1", {"app": "web"}, [{"name": "http", "containerPort": 8080}], ["10.0.0.1"])
    cli = _pod("cli", "node-2", {"app": "cli"}, [{"containerPort": 8080}], ["10.0.0.2"])
    svc = _svc(
        "s", clusterIP="10.96.0.1", selector={"app": "web"}, ports=[{"port": 80, "targetPort": "http"}]
    )
    none = _svc("none", clusterIP="10.96.0.9", selector={"app": "nobody"}, ports=[{"port": 80}])
    deny = parse.parse_network_policy(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "d", "name": "deny"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]},
        }
    )
    columns = {d.label: d for d in destinations([web, cli], [svc, none])}
    assert set(columns) == {"web", "cli", "svc:s", "svc:none"}
    pods = [web, cli]
    assert expected(pods, [], [], cli, columns["web"]) == "allow"
    assert expected(pods, [], [deny], cli, columns["web"]) == "deny"
    assert expected(pods, [], [deny], cli, columns["svc:s"]) == "deny"
    assert expected(pods, [], [], cli, columns["svc:none"]) == "refuse"
    cell = Cell("d/cli", "web", "deny", "open")
    assert not cell.agrees
    lines = format_matrix(["d/cli"], ["web"], {("d/cli", "web"): cell})
    assert lines[1].endswith("ok/-- !")


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        pytest.param("Cluster", "mixed", id="cluster-masquerades-to-remote-backends"),
        pytest.param("Local", "allow", id="local-keeps-the-client-and-uses-local-backends"),
    ],
)
def test_nodeport_expectation_models_masquerade_and_local_backends(policy: str, want: str) -> None:
    ports = [{"name": "http", "containerPort": 8080}]
    web1 = _pod("web-1", "node-1", {"app": "web"}, ports, ["10.0.1.5"])
    web2 = _pod("web-2", "node-2", {"app": "web"}, ports, ["10.0.2.5"])
    cli = _pod("cli", "node-1", {"app": "cli"}, ports, ["10.0.1.6"])
    np = _svc(
        "np",
        type="NodePort",
        clusterIP="10.96.0.2",
        clusterIPs=["10.96.0.2"],
        externalTrafficPolicy=policy,
        selector={"app": "web"},
        ports=[{"port": 80, "targetPort": "http", "nodePort": 30080}],
    )
    from_pods = parse.parse_network_policy(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "d", "name": "pods-only"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {}}]}],
            },
        }
    )
    pods = [web1, web2, cli]
    columns = {d.label: d for d in destinations(pods, [np])}
    nodes = {"node-1": "172.31.0.11", "node-2": "172.31.0.12"}
    # web-2 (other node) sees node-1's address under Cluster: not a pod, so denied there.
    assert expected(pods, [], [from_pods], cli, columns["np:np"], node_addresses=nodes) == want
    assert "np:np" not in {d.label for d in destinations(pods, [np], family=6)}  # an IPv4-only Service
    deny_all = parse.parse_network_policy(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"namespace": "d", "name": "deny-all"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
    )
    assert expected(pods, [], [deny_all], cli, columns["cli"]) == "allow"  # its own address: loopback
    assert expected(pods, [], [deny_all], cli, columns["web-1"]) == "deny"
