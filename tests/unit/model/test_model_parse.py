"""Table-driven parsing of API JSON into the model: valid objects, defaults, and malformed input."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from xpunet.model import (
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    IPBlock,
    K8sObject,
    Labels,
    LabelSelector,
    LabelSelectorRequirement,
    ModelError,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Node,
    NodeAddress,
    Pod,
    Service,
    ServicePort,
)
from xpunet.model.parse import parse_label_selector, parse_object
from xpunet.model.samples import sample

DELETE = object()  # marks a path to remove in ``edit``
_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def edit(kind: str, changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of the sample of ``kind`` with ``{"a.b[0].c": value}`` changes applied."""
    obj = sample(kind)
    for path, value in changes.items():
        steps: list[str | int] = [name if name else int(index) for name, index in _STEP.findall(path)]
        node: Any = obj
        for step in steps[:-1]:
            if isinstance(step, str) and step not in node:
                node[step] = {}
            node = node[step]
        last = steps[-1]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return obj


def parse(kind: str, changes: dict[str, Any] | None = None) -> K8sObject:
    return parse_object(edit(kind, changes or {}))


# --- the samples, fully -----------------------------------------------------------

EXPECTED_SAMPLES = [
    pytest.param(
        "pod",
        Pod(
            namespace="shop",
            name="web-0",
            uid="u-pod",
            node="node-a",
            ips=("10.1.0.5", "fd00:10:1::5"),
            labels=Labels({"app": "web", "tier": "front"}),
            ports=(
                ContainerPort(8080, "TCP", "http"),
                ContainerPort(53, "UDP", None),
                ContainerPort(9090, "TCP", "metrics"),
                ContainerPort(15001, "TCP", "proxy"),
            ),
            phase="Running",
            ready=True,
        ),
        id="pod",
    ),
    pytest.param(
        "namespace",
        Namespace("shop", Labels({"team": "retail", "kubernetes.io/metadata.name": "shop"})),
        id="namespace",
    ),
    pytest.param(
        "node",
        Node(
            name="node-a",
            uid="u-node",
            addresses=(
                NodeAddress("InternalIP", "192.168.0.10"),
                NodeAddress("InternalIP", "2001:db8::10"),
                NodeAddress("Hostname", "node-a"),
            ),
            pod_cidrs=("10.1.0.0/24", "fd00:10:1::/64"),
            labels=Labels({"topology.kubernetes.io/zone": "z1"}),
        ),
        id="node",
    ),
    pytest.param(
        "service",
        Service(
            namespace="shop",
            name="web",
            uid="u-svc",
            type="LoadBalancer",
            cluster_ips=("10.96.0.10", "fd00:96::a"),
            ports=(
                ServicePort(80, "TCP", "http", "http", 30080),
                ServicePort(53, "UDP", "dns", 5353, 30053),
            ),
            selector=Labels({"app": "web"}),
            external_ips=("203.0.113.7",),
            load_balancer_ips=("198.51.100.1",),
            session_affinity="ClientIP",
            session_affinity_timeout=600,
            external_traffic_policy="Local",
            internal_traffic_policy="Cluster",
            traffic_distribution="PreferClose",
            ip_families=("IPv4", "IPv6"),
        ),
        id="service",
    ),
    pytest.param(
        "endpointslice",
        EndpointSlice(
            namespace="shop",
            name="web-abc",
            service="web",
            address_type="IPv4",
            endpoints=(
                Endpoint(
                    addresses=("10.1.0.5",),
                    node_name="node-a",
                    zone="z1",
                    hints_for_zones=("z1",),
                    hints_for_nodes=("node-a",),
                    target_ref="shop/web-0",
                ),
                Endpoint(addresses=("10.1.0.6",)),
                Endpoint(addresses=("10.1.0.7",), ready=False, serving=False, terminating=True),
            ),
            ports=(EndpointPort(8080, "TCP", "http"), EndpointPort(53, "UDP", None)),
        ),
        id="endpointslice",
    ),
    pytest.param(
        "networkpolicy",
        NetworkPolicy(
            namespace="shop",
            name="allow-web",
            uid="u-np",
            pod_selector=LabelSelector(
                Labels({"app": "web"}),
                (
                    LabelSelectorRequirement("canary", "DoesNotExist"),
                    LabelSelectorRequirement("tier", "In", ("edge", "front")),
                ),
            ),
            policy_types=("Ingress", "Egress"),
            ingress=(
                NetworkPolicyRule(
                    ports=(
                        NetworkPolicyPort("TCP", 80),
                        NetworkPolicyPort("TCP", "http"),
                        NetworkPolicyPort("SCTP", None),
                    ),
                    peers=(
                        NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"role": "client"}))),
                        NetworkPolicyPeer(namespace_selector=LabelSelector(Labels({"team": "retail"}))),
                        NetworkPolicyPeer(
                            pod_selector=LabelSelector(),
                            namespace_selector=LabelSelector(
                                match_expressions=(LabelSelectorRequirement("env", "Exists"),)
                            ),
                        ),
                        NetworkPolicyPeer(ip_block=IPBlock("172.17.0.0/16", ("172.17.1.0/24",))),
                    ),
                ),
                NetworkPolicyRule(),
            ),
            egress=(
                NetworkPolicyRule(
                    ports=(NetworkPolicyPort("UDP", 32000, 32768),),
                    peers=(NetworkPolicyPeer(ip_block=IPBlock("2001:db8::/32")),),
                ),
            ),
        ),
        id="networkpolicy",
    ),
]


@pytest.mark.parametrize(("kind", "expected"), EXPECTED_SAMPLES)
def test_sample_parses_to_the_expected_object(kind: str, expected: K8sObject) -> None:
    got = parse(kind)
    assert got == expected
    assert got.kind.value == kind


# --- defaults and normalisation -------------------------------------------------------

Check = Callable[[Any], object]

NORMALISED = [
    # Pod
    pytest.param("pod", {"status.podIPs": DELETE}, lambda p: p.ips == ("10.1.0.5",), id="pod-podIP-fallback"),
    pytest.param(
        "pod",
        {"status": DELETE},
        lambda p: (p.ips, p.ready, p.phase) == ((), False, "Pending"),
        id="pod-no-status",
    ),
    pytest.param("pod", {"status.conditions[1].status": "False"}, lambda p: not p.ready, id="pod-not-ready"),
    pytest.param("pod", {"spec.hostNetwork": True}, lambda p: p.host_network, id="pod-host-network"),
    pytest.param(
        "pod", {"metadata.namespace": DELETE}, lambda p: p.namespace == "default", id="pod-default-namespace"
    ),
    pytest.param("pod", {"metadata.uid": DELETE}, lambda p: p.uid == "", id="pod-no-uid"),
    pytest.param("pod", {"spec.nodeName": DELETE}, lambda p: p.node is None, id="pod-unscheduled"),
    pytest.param(
        "pod",
        {"status.podIPs": [{"ip": "10.1.0.5"}, {"ip": "10.1.0.5"}]},
        lambda p: p.ips == ("10.1.0.5",),
        id="pod-duplicate-ips-once",
    ),
    # Namespace
    pytest.param(
        "namespace",
        {"metadata.labels": DELETE},
        lambda n: n.labels == {"kubernetes.io/metadata.name": "shop"},
        id="namespace-automatic-name-label",
    ),
    pytest.param(
        "namespace",
        {"metadata.labels": {"kubernetes.io/metadata.name": "other"}},
        lambda n: n.labels["kubernetes.io/metadata.name"] == "shop",
        id="namespace-name-label-follows-name",
    ),
    # Node
    pytest.param(
        "node",
        {"spec.podCIDRs": DELETE},
        lambda n: n.pod_cidrs == ("10.1.0.0/24",),
        id="node-podCIDR-fallback",
    ),
    pytest.param(
        "node",
        {"spec.podCIDRs": ["10.1.0.77/24", "FD00:10:1:0::1/64"]},
        lambda n: n.pod_cidrs == ("10.1.0.0/24", "fd00:10:1::/64"),
        id="node-cidr-host-bits-cleared",
    ),
    pytest.param("node", {"spec": DELETE}, lambda n: n.pod_cidrs == (), id="node-no-spec"),
    # Service
    pytest.param(
        "service",
        {"spec.clusterIP": "None", "spec.clusterIPs": ["None"], "spec.type": "ClusterIP"},
        lambda s: s.headless and s.cluster_ips == (),
        id="service-headless",
    ),
    pytest.param(
        "service",
        {"spec.clusterIPs": DELETE},
        lambda s: s.cluster_ips == ("10.96.0.10",),
        id="service-clusterIP-fallback",
    ),
    pytest.param(
        "service",
        {"spec": {"type": "ExternalName", "externalName": "db.example.com"}},
        lambda s: (
            (s.type, s.external_name, s.cluster_ips, s.selector)
            == ("ExternalName", "db.example.com", (), None)
        ),
        id="service-external-name",
    ),
    pytest.param(
        "service", {"spec.selector": DELETE}, lambda s: s.selector is None, id="service-no-selector"
    ),
    pytest.param("service", {"spec.selector": {}}, lambda s: s.selector is None, id="service-empty-selector"),
    pytest.param(
        "service",
        {"spec.sessionAffinityConfig": DELETE},
        lambda s: s.session_affinity_timeout == 10800,
        id="service-affinity-timeout-default",
    ),
    pytest.param(
        "service",
        {"spec.ports[0].targetPort": 0, "spec.ports[1].nodePort": 0},
        lambda s: s.ports[0].target_port is None and s.ports[1].node_port is None,
        id="service-zero-ports-unset",
    ),
    pytest.param(
        "service",
        {"spec.type": DELETE, "spec.externalTrafficPolicy": DELETE, "spec.sessionAffinity": DELETE},
        lambda s: (s.type, s.external_traffic_policy, s.session_affinity) == ("ClusterIP", "Cluster", "None"),
        id="service-defaults",
    ),
    # EndpointSlice
    pytest.param(
        "endpointslice",
        {"endpoints[1].conditions": {"ready": False}},
        lambda e: (
            (e.endpoints[1].ready, e.endpoints[1].serving, e.endpoints[1].terminating)
            == (False, False, False)
        ),
        id="slice-serving-nil-follows-ready",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[1].conditions": {"ready": False, "serving": True, "terminating": True}},
        lambda e: (
            (e.endpoints[1].ready, e.endpoints[1].serving, e.endpoints[1].terminating) == (False, True, True)
        ),
        id="slice-terminating-serving",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[1].conditions": DELETE},
        lambda e: (e.endpoints[1].ready, e.endpoints[1].serving) == (True, True),
        id="slice-no-conditions-ready",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[0].targetRef": {"kind": "Node", "name": "x"}},
        lambda e: e.endpoints[0].target_ref is None,
        id="slice-targetref-non-pod",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[0].targetRef.namespace": DELETE},
        lambda e: e.endpoints[0].target_ref == "shop/web-0",
        id="slice-targetref-own-namespace",
    ),
    pytest.param(
        "endpointslice",
        {"ports[1].port": DELETE},
        lambda e: e.ports == (EndpointPort(8080, "TCP", "http"),),
        id="slice-port-without-number-dropped",
    ),
    pytest.param(
        "endpointslice", {"metadata.labels": DELETE}, lambda e: e.service is None, id="slice-no-service"
    ),
    pytest.param(
        "endpointslice",
        {"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]},
        lambda e: e.endpoints[0].addresses == ("db.example.com",),
        id="slice-fqdn",
    ),
    # NetworkPolicy
    pytest.param(
        "networkpolicy",
        {"spec.egress": DELETE},
        lambda p: p.policy_types == ("Ingress",),
        id="np-types-ingress-only",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.egress": []},
        lambda p: p.policy_types == ("Ingress",),
        id="np-types-empty-egress",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress": DELETE},
        lambda p: p.policy_types == ("Ingress", "Egress"),
        id="np-types-egress-rules-imply-egress",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.policyTypes": ["Egress"]},
        lambda p: p.policy_types == ("Egress",),
        id="np-types-explicit-egress",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.policyTypes": ["Egress", "Ingress"]},
        lambda p: p.policy_types == ("Ingress", "Egress"),
        id="np-types-canonical-order",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.policyTypes": [], "spec.egress": DELETE},
        lambda p: p.policy_types == ("Ingress",),
        id="np-types-empty-list-defaults",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.podSelector": DELETE},
        lambda p: p.pod_selector == LabelSelector(),
        id="np-absent-pod-selector-all",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock": {"cidr": "172.17.3.4/16", "except": ["172.17.1.9/24"]}},
        lambda p: p.ingress[0].peers[3].ip_block == IPBlock("172.17.0.0/16", ("172.17.1.0/24",)),
        id="np-ipblock-host-bits-cleared",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports": [{"port": 80, "endPort": 80}]},
        lambda p: p.ingress[0].ports == (NetworkPolicyPort("TCP", 80, 80),),
        id="np-endport-equal-port",
    ),
]


@pytest.mark.parametrize(("kind", "changes", "check"), NORMALISED)
def test_defaults_and_normalisation(kind: str, changes: dict[str, Any], check: Check) -> None:
    assert check(parse(kind, changes))


# --- malformed input --------------------------------------------------------------------

MALFORMED = [
    # (kind, changes, JSON path named in the error, words of the problem)
    pytest.param("pod", {"metadata.name": DELETE}, "metadata.name", "is required", id="pod-missing-name"),
    pytest.param("pod", {"metadata": DELETE}, "metadata", "is required", id="pod-missing-metadata"),
    pytest.param("pod", {"metadata.name": 7}, "metadata.name", "expected a string", id="pod-name-not-string"),
    pytest.param("pod", {"metadata.name": "Web_0"}, "metadata.name", "DNS-1123", id="pod-name-invalid"),
    pytest.param(
        "pod", {"metadata.labels.app": 1}, "metadata.labels[app]", "expected a string", id="pod-label-int"
    ),
    pytest.param(
        "pod", {"metadata.labels": {"a b": "x"}}, "metadata.labels[a b]", "label key", id="pod-label-key"
    ),
    pytest.param(
        "pod", {"metadata.labels.app": "-x"}, "metadata.labels[app]", "label value", id="pod-label-value"
    ),
    pytest.param(
        "pod", {"metadata.labels": ["app"]}, "metadata.labels", "expected an object", id="pod-labels-list"
    ),
    pytest.param(
        "pod", {"status.podIPs[1].ip": "fd00::zz"}, "status.podIPs[1].ip", "not a valid IP", id="pod-bad-ip"
    ),
    pytest.param(
        "pod",
        {"status.podIPs": DELETE, "status.podIP": "010.1.0.5"},
        "status.podIP",
        "not a valid IP",
        id="pod-ip-leading-zero",
    ),
    pytest.param(
        "pod",
        {"status.podIPs[0].ip": "::ffff:10.1.0.5"},
        "status.podIPs[0].ip",
        "IPv4-mapped",
        id="pod-ip-v4-mapped",
    ),
    pytest.param(
        "pod",
        {"status.podIPs[0]": "10.1.0.5"},
        "status.podIPs[0]",
        "expected an object",
        id="pod-podips-strings",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[0].containerPort": 0},
        "spec.containers[0].ports[0].containerPort",
        "0 is out of range 1-65535",
        id="pod-port-zero",
    ),
    pytest.param(
        "pod",
        {"spec.containers[1].ports[0].containerPort": 70000},
        "spec.containers[1].ports[0].containerPort",
        "out of range",
        id="pod-port-high",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[0].containerPort": "80"},
        "spec.containers[0].ports[0].containerPort",
        "expected an integer",
        id="pod-port-string",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[0].containerPort": True},
        "spec.containers[0].ports[0].containerPort",
        "expected an integer",
        id="pod-port-bool",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[0].containerPort": DELETE},
        "spec.containers[0].ports[0].containerPort",
        "is required",
        id="pod-port-missing",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[1].protocol": "ICMP"},
        "spec.containers[0].ports[1].protocol",
        "unknown protocol 'ICMP'",
        id="pod-unknown-protocol",
    ),
    pytest.param(
        "pod",
        {"spec.containers[0].ports[0].name": "a-very-long-port-name"},
        "spec.containers[0].ports[0].name",
        "IANA_SVC_NAME",
        id="pod-port-name-long",
    ),
    pytest.param(
        "pod",
        {"spec.hostNetwork": "yes"},
        "spec.hostNetwork",
        "expected a boolean",
        id="pod-hostnetwork-string",
    ),
    pytest.param("pod", {"spec": []}, "spec", "expected an object", id="pod-spec-list"),
    pytest.param(
        "pod",
        {"spec.containers": {"name": "x"}},
        "spec.containers",
        "expected a list",
        id="pod-containers-map",
    ),
    pytest.param(
        "namespace", {"metadata.name": "Shop"}, "metadata.name", "DNS-1123 label", id="ns-name-uppercase"
    ),
    pytest.param("namespace", {"metadata.name": ""}, "metadata.name", "is required", id="ns-name-empty"),
    pytest.param(
        "node",
        {"spec.podCIDRs[1]": "fd00::/129"},
        "spec.podCIDRs[1]",
        "not a valid CIDR",
        id="node-cidr-prefix",
    ),
    pytest.param(
        "node",
        {"spec.podCIDRs[0]": "10.1.0.0"},
        "spec.podCIDRs[0]",
        "address/prefix-length",
        id="node-cidr-no-prefix",
    ),
    pytest.param(
        "node",
        {"spec.podCIDRs[0]": "10.1.0.0/255.255.255.0"},
        "spec.podCIDRs[0]",
        "address/prefix-length",
        id="node-cidr-netmask",
    ),
    pytest.param(
        "node",
        {"spec.podCIDRs[0]": "10.1.0.300/24"},
        "spec.podCIDRs[0]",
        "not a valid IP",
        id="node-cidr-bad-ip",
    ),
    pytest.param(
        "node",
        {"status.addresses[0].address": "node-a"},
        "status.addresses[0].address",
        "not a valid IP",
        id="node-internal-ip-bad",
    ),
    pytest.param(
        "node",
        {"status.addresses[0].type": DELETE},
        "status.addresses[0].type",
        "is required",
        id="node-address-type-missing",
    ),
    pytest.param(
        "service",
        {"spec.ports[0].port": 0},
        "spec.ports[0].port",
        "0 is out of range 1-65535",
        id="svc-port-zero",
    ),
    pytest.param(
        "service", {"spec.ports[1].port": DELETE}, "spec.ports[1].port", "is required", id="svc-port-missing"
    ),
    pytest.param(
        "service",
        {"spec.ports[0].nodePort": 70000},
        "spec.ports[0].nodePort",
        "out of range",
        id="svc-nodeport-high",
    ),
    pytest.param(
        "service",
        {"spec.ports[0].targetPort": 65536},
        "spec.ports[0].targetPort",
        "out of range",
        id="svc-targetport-high",
    ),
    pytest.param(
        "service",
        {"spec.ports[0].targetPort": "8080"},
        "spec.ports[0].targetPort",
        "IANA_SVC_NAME",
        id="svc-targetport-digit-string",
    ),
    pytest.param(
        "service",
        {"spec.ports[1].protocol": "ICMP"},
        "spec.ports[1].protocol",
        "unknown protocol",
        id="svc-unknown-protocol",
    ),
    pytest.param("service", {"spec.type": "Internal"}, "spec.type", "must be one of", id="svc-bad-type"),
    pytest.param(
        "service",
        {"spec.clusterIPs[0]": "10.96.0.300"},
        "spec.clusterIPs[0]",
        "not a valid IP",
        id="svc-bad-cluster-ip",
    ),
    pytest.param(
        "service",
        {"spec.clusterIPs": DELETE, "spec.clusterIP": "x"},
        "spec.clusterIP",
        "not a valid IP",
        id="svc-bad-single-cluster-ip",
    ),
    pytest.param(
        "service",
        {"spec.externalIPs[0]": "203.0.113"},
        "spec.externalIPs[0]",
        "not a valid IP",
        id="svc-bad-external-ip",
    ),
    pytest.param(
        "service",
        {"status.loadBalancer.ingress[0].ip": "bad"},
        "status.loadBalancer.ingress[0].ip",
        "not a valid IP",
        id="svc-bad-lb-ip",
    ),
    pytest.param(
        "service",
        {"spec.sessionAffinityConfig.clientIP.timeoutSeconds": 0},
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "out of range 1-86400",
        id="svc-timeout-zero",
    ),
    pytest.param(
        "service",
        {"spec.sessionAffinityConfig.clientIP.timeoutSeconds": 86401},
        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        "out of range",
        id="svc-timeout-high",
    ),
    pytest.param(
        "service",
        {"spec.externalTrafficPolicy": "Global"},
        "spec.externalTrafficPolicy",
        "must be one of Cluster, Local",
        id="svc-bad-etp",
    ),
    pytest.param(
        "service",
        {"spec.type": "ExternalName"},
        "spec.externalName",
        "is required",
        id="svc-externalname-missing",
    ),
    pytest.param(
        "service", {"spec.ipFamilies[1]": "IPv5"}, "spec.ipFamilies[1]", "must be one of", id="svc-bad-family"
    ),
    pytest.param(
        "service", {"spec.selector.app": 5}, "spec.selector[app]", "expected a string", id="svc-selector-int"
    ),
    pytest.param(
        "endpointslice",
        {"addressType": DELETE},
        "addressType",
        "is required",
        id="slice-address-type-missing",
    ),
    pytest.param(
        "endpointslice", {"addressType": "IPX"}, "addressType", "must be one of", id="slice-bad-address-type"
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[1].addresses[0]": "fd00::6"},
        "endpoints[1].addresses[0]",
        "not an IPv4 address",
        id="slice-family-mismatch",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[0].addresses": []},
        "endpoints[0].addresses",
        "at least one",
        id="slice-no-addresses",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[0].conditions.ready": "true"},
        "endpoints[0].conditions.ready",
        "expected a boolean",
        id="slice-ready-string",
    ),
    pytest.param(
        "endpointslice", {"ports[0].port": 70000}, "ports[0].port", "out of range", id="slice-port-high"
    ),
    pytest.param(
        "endpointslice",
        {"ports[0].protocol": "tcp"},
        "ports[0].protocol",
        "unknown protocol",
        id="slice-protocol-lowercase",
    ),
    pytest.param(
        "endpointslice",
        {"endpoints[0].hints.forZones[0]": {}},
        "endpoints[0].hints.forZones[0].name",
        "is required",
        id="slice-hint-no-name",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[1].port": 70000},
        "spec.ingress[0].ports[1].port",
        "70000 is out of range 1-65535",
        id="np-port-high",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.egress[0].ports[0].endPort": 31999},
        "spec.egress[0].ports[0].endPort",
        "greater than or equal to port 32000",
        id="np-endport-below-port",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.egress[0].ports[0].endPort": 65536},
        "spec.egress[0].ports[0].endPort",
        "out of range",
        id="np-endport-high",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[1].endPort": 90},
        "spec.ingress[0].ports[1].endPort",
        "named port",
        id="np-endport-named",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[2].endPort": 90},
        "spec.ingress[0].ports[2].endPort",
        "port is not specified",
        id="np-endport-no-port",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[0].protocol": "ICMP"},
        "spec.ingress[0].ports[0].protocol",
        "unknown protocol",
        id="np-unknown-protocol",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[1].port": "HTTP"},
        "spec.ingress[0].ports[1].port",
        "IANA_SVC_NAME",
        id="np-bad-port-name",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].ports[0].port": 80.5},
        "spec.ingress[0].ports[0].port",
        "expected an integer",
        id="np-port-float",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.cidr": "172.17.0.0/40"},
        "spec.ingress[0].from[3].ipBlock.cidr",
        "not a valid CIDR",
        id="np-bad-cidr",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.cidr": DELETE},
        "spec.ingress[0].from[3].ipBlock.cidr",
        "is required",
        id="np-cidr-missing",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.except[0]": "10.0.0.0/8"},
        "spec.ingress[0].from[3].ipBlock.except[0]",
        "strict subset",
        id="np-except-outside",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.except[0]": "172.17.0.0/16"},
        "spec.ingress[0].from[3].ipBlock.except[0]",
        "strict subset",
        id="np-except-equal",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.except[0]": "fd00::/64"},
        "spec.ingress[0].from[3].ipBlock.except[0]",
        "strict subset",
        id="np-except-other-family",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].ipBlock.except": "172.17.1.0/24"},
        "spec.ingress[0].from[3].ipBlock.except",
        "expected a list",
        id="np-except-not-list",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[0]": {}},
        "spec.ingress[0].from[0]",
        "must specify",
        id="np-empty-peer",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[3].podSelector": {}},
        "spec.ingress[0].from[3]",
        "may not specify both",
        id="np-ipblock-and-selector",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.podSelector.matchExpressions[0].values": []},
        "spec.podSelector.matchExpressions[0].values",
        "non-empty when operator is In",
        id="np-in-without-values",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.podSelector.matchExpressions[1].values": ["x"]},
        "spec.podSelector.matchExpressions[1].values",
        "empty when operator is DoesNotExist",
        id="np-doesnotexist-with-values",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress[0].from[2].namespaceSelector.matchExpressions[0].operator": "Gt"},
        "spec.ingress[0].from[2].namespaceSelector.matchExpressions[0].operator",
        "unknown operator 'Gt'",
        id="np-unknown-operator",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.podSelector.matchExpressions[0].key": DELETE},
        "spec.podSelector.matchExpressions[0].key",
        "is required",
        id="np-expression-no-key",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.podSelector.matchLabels": {"app": ["web"]}},
        "spec.podSelector.matchLabels[app]",
        "expected a string",
        id="np-matchlabels-list",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.policyTypes": ["Both"]},
        "spec.policyTypes[0]",
        "unknown policy type 'Both'",
        id="np-bad-policy-type",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.ingress": {"from": []}},
        "spec.ingress",
        "expected a list",
        id="np-ingress-map",
    ),
    pytest.param(
        "networkpolicy",
        {"spec.egress[0].to[0]": "10.0.0.0/8"},
        "spec.egress[0].to[0]",
        "expected an object",
        id="np-peer-string",
    ),
]


@pytest.mark.parametrize(("kind", "changes", "field", "problem"), MALFORMED)
def test_malformed_input_names_object_and_field(
    kind: str, changes: dict[str, Any], field: str, problem: str
) -> None:
    obj = edit(kind, changes)
    with pytest.raises(ModelError) as info:
        parse_object(obj)
    err = info.value
    assert err.field == field
    assert problem in err.problem
    assert err.kind == obj["kind"]
    assert str(err) == f"{err.kind} {err.ref}: {field}: {err.problem}"
    if not field.startswith("metadata"):
        meta = obj["metadata"]
        assert err.ref == (f"{meta['namespace']}/{meta['name']}" if "namespace" in meta else meta["name"])


def test_the_error_message_reads_as_documented() -> None:
    with pytest.raises(
        ModelError,
        match=r"^NetworkPolicy shop/allow-web: spec\.ingress\[0\]\.ports\[1\]\.port: "
        r"70000 is out of range 1-65535$",
    ):
        parse("networkpolicy", {"spec.ingress[0].ports[1].port": 70000})


def test_missing_name_is_reported_with_a_placeholder_ref() -> None:
    with pytest.raises(ModelError) as info:
        parse("service", {"metadata.name": DELETE})
    assert info.value.ref == "shop/?"


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        pytest.param(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
            "unsupported",
            id="unknown-kind",
        ),
        pytest.param(
            {"apiVersion": "networking.k8s.io/v1", "kind": "Pod", "metadata": {"name": "x"}},
            "unsupported",
            id="wrong-group",
        ),
        pytest.param({"metadata": {"name": "x"}}, "unsupported", id="no-kind"),
        pytest.param({"apiVersion": ["v1"], "kind": "Pod"}, "unsupported", id="apiversion-list"),
    ],
)
def test_dispatch_rejects_unknown_kinds(obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(ModelError, match=problem):
        parse_object(obj)


@pytest.mark.parametrize("value", [None, 5, "pod", ["a"]], ids=["none", "int", "str", "list"])
def test_dispatch_rejects_non_maps(value: Any) -> None:
    with pytest.raises(ModelError, match="expected an object"):
        parse_object(value)


def test_kind_specific_parsers_accept_list_items_without_kind() -> None:
    from xpunet.model.parse import parse_pod

    obj = sample("pod")
    del obj["apiVersion"], obj["kind"]
    assert parse_pod(obj) == parse("pod")


def test_bare_selector_parses_canonically() -> None:
    sel = parse_label_selector(
        {
            "matchExpressions": [
                {"key": "b", "operator": "NotIn", "values": ["y", "x"]},
                {"key": "a", "operator": "Exists"},
            ]
        }
    )
    assert sel.match_expressions == (
        LabelSelectorRequirement("a", "Exists"),
        LabelSelectorRequirement("b", "NotIn", ("x", "y")),
    )
