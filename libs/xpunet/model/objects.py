"""Normalised Kubernetes objects: only the fields xpunet uses, as frozen dataclasses.

Everything here is pure data.  The watcher produces these from API JSON
(``xpunet.model.parse``), the bus carries them as wire maps
(``xpunet.wire``), and the compilers consume them.  Fields the rest of
the system does not use (status heartbeats, managedFields, annotations,
resourceVersion) are deliberately absent, so an update that changes only those
normalises to an equal object and writes nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["TCP", "UDP", "SCTP"]
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"


class Labels(Mapping[str, str]):
    """An immutable, hashable string→string mapping (labels, selectors' matchLabels)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, str] = dict(sorted((items or {}).items()))
        self._hash: int | None = None

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Labels):
            return self._items == other._items
        if isinstance(other, Mapping):
            return self._items == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"


EMPTY_LABELS = Labels()


class Kind(enum.StrEnum):
    """The API kinds xpunet mirrors; the value is the KV key prefix."""

    POD = "pod"
    NAMESPACE = "namespace"
    NODE = "node"
    SERVICE = "service"
    ENDPOINT_SLICE = "endpointslice"
    NETWORK_POLICY = "networkpolicy"


# --- core/v1 -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerPort:
    port: int
    protocol: Protocol = "TCP"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node: str | None = None
    ips: tuple[str, ...] = ()  # status.podIPs, in API order (IPv4 and/or IPv6)
    labels: Labels = EMPTY_LABELS
    ports: tuple[ContainerPort, ...] = ()  # every container's ports, named or not
    phase: str = "Pending"
    ready: bool = False
    host_network: bool = False

    @property
    def kind(self) -> Kind:
        return Kind.POD


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: Labels = EMPTY_LABELS  # always includes kubernetes.io/metadata.name

    @property
    def kind(self) -> Kind:
        return Kind.NAMESPACE


@dataclass(frozen=True, slots=True)
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, InternalDNS, ExternalDNS
    address: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    uid: str = ""
    addresses: tuple[NodeAddress, ...] = ()
    pod_cidrs: tuple[str, ...] = ()  # spec.podCIDRs (or podCIDR), normalised CIDR strings
    labels: Labels = EMPTY_LABELS

    @property
    def kind(self) -> Kind:
        return Kind.NODE

    @property
    def zone(self) -> str | None:
        return self.labels.get(ZONE_LABEL)


ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
TrafficPolicy = Literal["Cluster", "Local"]


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: Protocol = "TCP"
    name: str | None = None
    target_port: int | str | None = None  # number, container-port name, or None (= port)
    node_port: int | None = None


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    uid: str = ""
    type: ServiceType = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()  # "None" for headless is represented as headless=True, ()
    headless: bool = False
    ports: tuple[ServicePort, ...] = ()
    selector: Labels | None = None  # None: endpoints are managed by hand
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_timeout: int = 10800  # seconds, used when ClientIP
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    traffic_distribution: str | None = None  # e.g. "PreferClose"
    external_name: str | None = None
    ip_families: tuple[Literal["IPv4", "IPv6"], ...] = ()

    @property
    def kind(self) -> Kind:
        return Kind.SERVICE


# --- discovery.k8s.io/v1 -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointPort:
    port: int
    protocol: Protocol = "TCP"
    name: str | None = None  # matches ServicePort.name ("" and None both mean unnamed)


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    # Conditions as the API defines their nil defaults: ready nil → True,
    # serving nil → ready, terminating nil → False.
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str | None = None
    zone: str | None = None
    hints_for_zones: tuple[str, ...] = ()
    hints_for_nodes: tuple[str, ...] = ()
    target_ref: str | None = None  # "namespace/name" of the backing Pod, if any


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str | None  # kubernetes.io/service-name label
    address_type: Literal["IPv4", "IPv6", "FQDN"]
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()

    @property
    def kind(self) -> Kind:
        return Kind.ENDPOINT_SLICE


# --- networking.k8s.io/v1 ----------------------------------------------------

SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


@dataclass(frozen=True, slots=True)
class LabelSelectorRequirement:
    key: str
    operator: SelectorOperator
    values: tuple[str, ...] = ()  # sorted, deduplicated


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A metav1.LabelSelector.  The empty selector matches everything."""

    match_labels: Labels = EMPTY_LABELS
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()  # sorted for a canonical form


@dataclass(frozen=True, slots=True)
class IPBlock:
    cidr: str  # normalised network (host bits cleared)
    except_: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkPolicyPeer:
    """Exactly one of ip_block or (pod_selector and/or namespace_selector) is set.

    None means the field was absent, which differs from an empty selector:
    podSelector absent + namespaceSelector set = all pods in matching
    namespaces; podSelector set + namespaceSelector absent = matching pods in
    the policy's own namespace.
    """

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicyPort:
    protocol: Protocol = "TCP"
    port: int | str | None = None  # None: all ports of the protocol
    end_port: int | None = None  # only with a numeric port


@dataclass(frozen=True, slots=True)
class NetworkPolicyRule:
    """An ingress rule (peers are `from`) or an egress rule (peers are `to`).

    Empty ``ports`` means all ports and protocols; empty ``peers`` means all peers.
    """

    ports: tuple[NetworkPolicyPort, ...] = ()
    peers: tuple[NetworkPolicyPeer, ...] = ()


PolicyType = Literal["Ingress", "Egress"]


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    uid: str = ""
    pod_selector: LabelSelector = field(default_factory=LabelSelector)
    # Always resolved: when the API object omits policyTypes, Ingress is always
    # included and Egress is included when the spec has egress rules.
    policy_types: tuple[PolicyType, ...] = ("Ingress",)
    ingress: tuple[NetworkPolicyRule, ...] = ()
    egress: tuple[NetworkPolicyRule, ...] = ()

    @property
    def kind(self) -> Kind:
        return Kind.NETWORK_POLICY


K8sObject = Pod | Namespace | Node | Service | EndpointSlice | NetworkPolicy
