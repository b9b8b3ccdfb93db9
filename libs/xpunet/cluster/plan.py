"""The local cluster on paper: names, the address plan, and the manifests it writes.  Pure.

Everything the kernel side creates is named from the run id, so one run never
touches another's objects and ``down`` can find them by name even when the
state file is lost:

* node N is the network namespace ``xpunet-<run>-node-N``; the fabric (a
  router standing for the top-of-rack switch) is ``xpunet-<run>-fabric``;
  pod ``ns/name`` is ``xpunet-<run>-pod-<ns>-<name>``;
* node N's uplink is ``uplink0`` in its namespace, ``nN`` in the fabric; its
  underlay addresses are 172.31.0.(10+N)/24 and fd00:172:31::(10+N)/64 (one
  subnet: the fabric answers ARP/NDP for the other nodes, so every node
  address is on-link for a directly routed next hop);
* with the VXLAN overlay, ``vxlan0`` (VNI 4096, UDP 4789) carries
  172.30.0.(10+N)/24 and fd00:172:30::(10+N)/64 over the underlay, and the
  fabric knows no pod routes at all;
* node N's pods get 10.244.N.0/24 and fd00:10:244:N::/64.

The cluster plays the parts of the API server and the kubelet that a
manifest directory cannot: it writes each Node (podCIDRs, InternalIPs), each
Pod's status once its interface exists (IPs, Running, Ready), and the
EndpointSlices of every selector Service (the endpoints controller).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from xpunet.model.objects import SERVICE_NAME_LABEL, ContainerPort, Labels, Pod, Service

PREFIX = "xpunet"
UPLINK_IF = "uplink0"
VXLAN_IF = "vxlan0"
VXLAN_VNI = 4096
VXLAN_PORT = 4789
MAX_NODES = 200

Target = Literal["kernel", "softipu"]
Overlay = Literal["none", "vxlan"]
Attach = Literal["cni", "plain"]

_RUN_ID = re.compile(r"^[a-z0-9]{1,8}$")


class PlanError(ValueError):
    """A cluster that cannot be planned (names the field)."""


@dataclass(frozen=True, slots=True)
class NodePlan:
    index: int  # 1-based
    name: str  # node-N, as the stack names its datapaths
    netns: str
    fabric_if: str  # this node's link, as named in the fabric namespace
    address4: str  # underlay (the Node's InternalIPs)
    address6: str
    overlay4: str  # vxlan0 (overlay only)
    overlay6: str
    pod_cidr4: str
    pod_cidr6: str

    @property
    def addresses(self) -> tuple[str, str]:
        return (self.address4, self.address6)

    @property
    def pod_cidrs(self) -> tuple[str, str]:
        return (self.pod_cidr4, self.pod_cidr6)


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    run: str
    nodes: tuple[NodePlan, ...]
    target: Target = "kernel"
    overlay: Overlay = "none"

    @property
    def prefix(self) -> str:
        """Every namespace of this run starts with it."""
        return f"{PREFIX}-{self.run}-"

    @property
    def fabric_netns(self) -> str:
        return f"{self.prefix}fabric"

    def pod_netns(self, namespace: str, name: str) -> str:
        return f"{self.prefix}pod-{namespace}-{name}"

    def container_id(self, namespace: str, name: str) -> str:
        return f"{PREFIX}-{self.run}-{namespace}-{name}"

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanError(f"node {name!r} is not in the cluster ({', '.join(n.name for n in self.nodes)})")


def make_plan(run: str, nodes: int, *, target: Target = "kernel", overlay: Overlay = "none") -> ClusterPlan:
    if not _RUN_ID.match(run):
        raise PlanError(f"run id {run!r} must be 1-8 lowercase letters or digits")
    if not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"nodes {nodes} must be within 1..{MAX_NODES}")
    if target not in ("kernel", "softipu"):
        raise PlanError(f"target {target!r} is not kernel or softipu")
    if overlay not in ("none", "vxlan"):
        raise PlanError(f"overlay {overlay!r} is not none or vxlan")
    plans = tuple(
        NodePlan(
            index=i,
            name=f"node-{i}",
            netns=f"{PREFIX}-{run}-node-{i}",
            fabric_if=f"n{i}",
            address4=f"172.31.0.{10 + i}",
            address6=f"fd00:172:31::{10 + i:x}",
            overlay4=f"172.30.0.{10 + i}",
            overlay6=f"fd00:172:30::{10 + i:x}",
            pod_cidr4=f"10.244.{i}.0/24",
            pod_cidr6=f"fd00:10:244:{i:x}::/64",
        )
        for i in range(1, nodes + 1)
    )
    return ClusterPlan(run=run, nodes=plans, target=target, overlay=overlay)


# --- pods as declared ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PodSpec:
    """A pod the cluster runs: where, its labels and ports, and the manifest it came from."""

    namespace: str
    name: str
    node: str
    labels: Labels
    ports: tuple[ContainerPort, ...]
    manifest: Mapping[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def uid(self) -> str:
        return f"uid-{self.namespace}-{self.name}"


def pod_spec(manifest: Mapping[str, Any], pod: Pod, *, default_node: str | None = None) -> PodSpec:
    """A declared Pod (parsed as ``pod``) as the cluster runs it; ``spec.nodeName`` is required."""
    node = pod.node or default_node
    if node is None:
        raise PlanError(f"pod {pod.namespace}/{pod.name}: spec.nodeName is required (no scheduler here)")
    return PodSpec(pod.namespace, pod.name, node, pod.labels, pod.ports, manifest)


def generated_pods(plan: ClusterPlan, per_node: int) -> list[PodSpec]:
    """``--pods-per-node M`` without manifests: pod-N-K in ``default``, app=demo, TCP 8080 "http"."""
    out: list[PodSpec] = []
    for node in plan.nodes:
        for k in range(1, per_node + 1):
            name = f"pod-{node.index}-{k}"
            labels = {"app": "demo", "node": node.name}
            manifest = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"namespace": "default", "name": name, "labels": labels},
                "spec": {
                    "nodeName": node.name,
                    "containers": [
                        {
                            "name": "responder",
                            "ports": [
                                {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                            ],
                        }
                    ],
                },
            }
            ports = (ContainerPort(8080, "TCP", "http"), ContainerPort(5353, "UDP", "dns"))
            out.append(PodSpec("default", name, node.name, Labels(labels), ports, manifest))
    return out


# --- manifests the cluster writes ------------------------------------------------------------


def node_manifest(node: NodePlan, *, overlay: Overlay = "none") -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": node.name, "xpunet.io/overlay": overlay}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "uid": f"uid-{node.name}", "labels": labels},
        "spec": {"podCIDR": node.pod_cidr4, "podCIDRs": list(node.pod_cidrs)},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.address4},
                {"type": "InternalIP", "address": node.address6},
                {"type": "Hostname", "address": node.name},
            ]
        },
    }


def pod_manifest(spec: PodSpec, ips: Sequence[str]) -> dict[str, Any]:
    """The declared manifest with what the kubelet would add: nodeName, uid, IPs, Running, Ready."""
    manifest = dict(spec.manifest)
    meta = dict(manifest.get("metadata") or {})
    meta.setdefault("uid", spec.uid)
    body = dict(manifest.get("spec") or {})
    body["nodeName"] = spec.node
    manifest.update(metadata=meta, spec=body)
    ordered = sorted(ips, key=lambda ip: ipaddress.ip_address(ip).version)
    manifest["status"] = {
        "phase": "Running",
        "podIP": ordered[0] if ordered else None,
        "podIPs": [{"ip": ip} for ip in ordered],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    return manifest


def _selects(service: Service, pod: Pod) -> bool:
    if service.selector is None or not service.selector or pod.namespace != service.namespace:
        return False
    return all(pod.labels.get(k) == v for k, v in service.selector.items())


def _target_port(service_port: Any, pod: Pod) -> int | None:
    target = service_port.target_port
    if target is None:
        return int(service_port.port)
    if isinstance(target, int):
        return target
    for cp in pod.ports:
        if cp.name == target and cp.protocol == service_port.protocol:
            return cp.port
    return None  # the pod does not have the named port: not an endpoint for this port


def endpoint_slices(services: Iterable[Service], pods: Iterable[Pod]) -> list[dict[str, Any]]:
    """The EndpointSlices the endpoints controller would write: per service, family and port mapping.

    Pods that resolve a named targetPort to different numbers go in different
    slices (as in Kubernetes).  A selector Service with no ready pod gets no
    slice: its traffic is refused.
    """
    pod_list = [p for p in pods if p.ips and p.phase == "Running"]
    out: list[dict[str, Any]] = []
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        if svc.selector is None or svc.headless or svc.type == "ExternalName":
            continue
        groups: dict[tuple[int, tuple[tuple[str, int, str], ...]], list[Pod]] = {}
        for pod in pod_list:
            if not _selects(svc, pod):
                continue
            resolved = tuple(
                (sp.name or "", port, sp.protocol)
                for sp in svc.ports
                if (port := _target_port(sp, pod)) is not None
            )
            for ip in pod.ips:
                groups.setdefault((ipaddress.ip_address(ip).version, resolved), []).append(pod)
        for n, ((version, ports), members) in enumerate(sorted(groups.items(), key=lambda kv: kv[0])):
            out.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "namespace": svc.namespace,
                        "name": f"{svc.name}-v{version}-{n}",
                        "labels": {SERVICE_NAME_LABEL: svc.name},
                    },
                    "addressType": f"IPv{version}",
                    "endpoints": [
                        {
                            "addresses": [ip for ip in p.ips if ipaddress.ip_address(ip).version == version],
                            "conditions": {"ready": p.ready, "serving": p.ready, "terminating": False},
                            "nodeName": p.node,
                            "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name},
                        }
                        for p in sorted(members, key=lambda p: p.name)
                    ],
                    "ports": [{"name": name, "port": port, "protocol": proto} for name, port, proto in ports],
                }
            )
    return out
