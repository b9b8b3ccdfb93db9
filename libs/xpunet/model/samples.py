"""Valid API objects of every supported kind, as the API server returns them.

Pure data for tests, docs and demos (the model, wire and watcher tests build
their malformed cases by mutating deep copies of these).  Call ``sample(kind)``
for a fresh copy; never mutate the module-level dicts.
"""

from __future__ import annotations

import copy
from typing import Any

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-0",
        "namespace": "shop",
        "uid": "u-pod",
        "labels": {"app": "web", "tier": "front"},
        "resourceVersion": "12",
    },
    "spec": {
        "nodeName": "node-a",
        "containers": [
            {
                "name": "app",
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 53, "protocol": "UDP"}],
            },
            {"name": "metrics", "ports": [{"containerPort": 9090, "name": "metrics", "protocol": "TCP"}]},
        ],
        "initContainers": [
            {"name": "setup"},
            {
                "name": "proxy",
                "restartPolicy": "Always",
                "ports": [{"containerPort": 15001, "name": "proxy"}],
            },
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.1.0.5",
        "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00:10:1::0005"}],
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
    },
}

NAMESPACE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": "shop", "labels": {"team": "retail", "kubernetes.io/metadata.name": "shop"}},
}

NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {"name": "node-a", "uid": "u-node", "labels": {"topology.kubernetes.io/zone": "z1"}},
    "spec": {"podCIDR": "10.1.0.0/24", "podCIDRs": ["10.1.0.0/24", "fd00:10:1::/64"]},
    "status": {
        "addresses": [
            {"type": "InternalIP", "address": "192.168.0.10"},
            {"type": "InternalIP", "address": "2001:DB8::10"},
            {"type": "Hostname", "address": "node-a"},
        ]
    },
}

SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "uid": "u-svc"},
    "spec": {
        "type": "LoadBalancer",
        "clusterIP": "10.96.0.10",
        "clusterIPs": ["10.96.0.10", "fd00:96::a"],
        "ipFamilies": ["IPv4", "IPv6"],
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
        ],
        "externalIPs": ["203.0.113.7"],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "externalTrafficPolicy": "Local",
        "internalTrafficPolicy": "Cluster",
        "trafficDistribution": "PreferClose",
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"hostname": "lb.example.com"}]}},
}

ENDPOINT_SLICE: dict[str, Any] = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
    "addressType": "IPv4",
    "endpoints": [
        {
            "addresses": ["10.1.0.5"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": "node-a",
            "zone": "z1",
            "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-a"}]},
            "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0"},
        },
        {"addresses": ["10.1.0.6"], "conditions": {}},
        {"addresses": ["10.1.0.7"], "conditions": {"ready": False, "terminating": True}},
    ],
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "", "port": 53, "protocol": "UDP"}],
}

NETWORK_POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-web", "namespace": "shop", "uid": "u-np"},
    "spec": {
        "podSelector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge", "front"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        },
        "ingress": [
            {
                "from": [
                    {"podSelector": {"matchLabels": {"role": "client"}}},
                    {"namespaceSelector": {"matchLabels": {"team": "retail"}}},
                    {
                        "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "Exists"}]},
                        "podSelector": {},
                    },
                    {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                ],
                "ports": [{"port": 80}, {"port": "http", "protocol": "TCP"}, {"protocol": "SCTP"}],
            },
            {},
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "2001:db8::/32"}}],
                "ports": [{"port": 32000, "endPort": 32768, "protocol": "UDP"}],
            }
        ],
    },
}

ALL: dict[str, dict[str, Any]] = {
    "pod": POD,
    "namespace": NAMESPACE,
    "node": NODE,
    "service": SERVICE,
    "endpointslice": ENDPOINT_SLICE,
    "networkpolicy": NETWORK_POLICY,
}


def sample(kind: str) -> dict[str, Any]:
    """A deep copy of the sample object of ``kind`` (a ``Kind`` value, e.g. "pod")."""
    return copy.deepcopy(ALL[kind])
