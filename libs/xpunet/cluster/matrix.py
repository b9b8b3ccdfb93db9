"""The reachability matrix: what was measured next to what the policies say.  Pure.

Rows are client pods; columns are destinations: every pod (on its first TCP
container port) and every Service frontend (ClusterIP and NodePort, first TCP
port).  The "expected" side comes from the policy service's reference
evaluator (``xpunet.policy.reference.is_allowed``), which reads the Kubernetes
objects directly; for a Service it is evaluated against each backend the
Service selects (all allowed, none, or mixed), since the load balancer picks
one.  A Service without backends is expected to refuse.

A NodePort with ``externalTrafficPolicy: Cluster`` masquerades: a backend on
another node than the client sees the client's node address as the source
(as with kube-proxy), so that backend is checked against the node address;
a backend on the client's own node sees the pod (policy is enforced before
the masquerade on the way out of the node).  With ``Local`` only the backends
on the client's node serve (none: dropped) and they see the pod.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from xpunet.model.objects import Namespace, NetworkPolicy, Pod, Protocol, Service
from xpunet.policy.reference import Cluster, is_allowed

Expect = Literal["allow", "deny", "mixed", "refuse"]
Seen = Literal["open", "refused", "timeout", "unreachable", "n/a"]


@dataclass(frozen=True, slots=True)
class Destination:
    label: str  # column header: "web-1", "svc:web", "np:web-np"
    kind: Literal["pod", "cluster_ip", "node_port"]
    ref: str  # "shop/web-1", "shop/web"
    ip: str  # "" for a NodePort: the client's own node address
    port: int
    protocol: Protocol
    backends: tuple[tuple[str, int], ...]  # (pod IP, target port) the policy is checked against
    snat: bool = False  # NodePort, externalTrafficPolicy Cluster: remote backends see the node address
    local_only: bool = False  # NodePort, externalTrafficPolicy Local: only the client node's backends


@dataclass(frozen=True, slots=True)
class Cell:
    src: str
    dst: str
    expected: Expect
    seen: Seen
    peer: str = ""  # who answered (the backend of a Service)

    @property
    def agrees(self) -> bool:
        if self.seen == "n/a":
            return True
        if self.expected == "allow":
            return self.seen == "open"
        if self.expected == "deny":
            return self.seen in ("timeout", "unreachable", "refused")
        if self.expected == "refuse":
            return self.seen in ("refused", "unreachable")
        return True  # mixed: either is right


def _first_tcp(pod: Pod) -> int | None:
    return next((p.port for p in pod.ports if p.protocol == "TCP"), None)


def _selects(svc: Service, pod: Pod) -> bool:
    if not svc.selector or pod.namespace != svc.namespace:
        return False
    return all(pod.labels.get(k) == v for k, v in svc.selector.items())


def _target(svc_port_target: int | str | None, default: int, pod: Pod, protocol: Protocol) -> int | None:
    if svc_port_target is None:
        return default
    if isinstance(svc_port_target, int):
        return svc_port_target
    return next((p.port for p in pod.ports if p.name == svc_port_target and p.protocol == protocol), None)


def _v(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def destinations(pods: Sequence[Pod], services: Sequence[Service], *, family: int = 4) -> list[Destination]:
    """Matrix columns: pods with a TCP port, then each Service's ClusterIP and NodePort frontends.

    A NodePort is reached on the client's own node address (``ip`` is left empty).
    """
    out: list[Destination] = []
    names = [p.name for p in pods]
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name)):
        port = _first_tcp(pod)
        ips = [ip for ip in pod.ips if _v(ip) == family]
        ref = f"{pod.namespace}/{pod.name}"
        label = pod.name if names.count(pod.name) == 1 else ref
        if port is not None and ips:
            out.append(Destination(label, "pod", ref, ips[0], port, "TCP", ((ips[0], port),)))
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        sp = next((p for p in svc.ports if p.protocol == "TCP"), None)
        if sp is None:
            continue
        backends: list[tuple[str, int]] = []
        for pod in pods:
            if not _selects(svc, pod):
                continue
            target = _target(sp.target_port, sp.port, pod, "TCP")
            backends += [(ip, target) for ip in pod.ips if _v(ip) == family and target is not None]
        cluster_ips = [ip for ip in svc.cluster_ips if _v(ip) == family]
        name = f"{svc.namespace}/{svc.name}"
        if cluster_ips:
            out.append(
                Destination(
                    f"svc:{svc.name}", "cluster_ip", name, cluster_ips[0], sp.port, "TCP", tuple(backends)
                )
            )
        # A NodePort answers on the node addresses of the Service's own IP families only.
        families = {4 if f == "IPv4" else 6 for f in svc.ip_families} or {_v(ip) for ip in svc.cluster_ips}
        if sp.node_port and (family in families or not families):
            out.append(
                Destination(
                    f"np:{svc.name}",
                    "node_port",
                    name,
                    "",
                    sp.node_port,
                    "TCP",
                    tuple(backends),
                    snat=svc.external_traffic_policy != "Local",
                    local_only=svc.external_traffic_policy == "Local",
                )
            )
    return out


def expected(
    pods: Iterable[Pod],
    namespaces: Iterable[Namespace],
    policies: Iterable[NetworkPolicy],
    src: Pod,
    dst: Destination,
    *,
    family: int = 4,
    node_addresses: Mapping[str, str] | None = None,  # node → its address of ``family``
) -> Expect:
    if dst.kind == "pod" and dst.ref == f"{src.namespace}/{src.name}":
        return "allow"  # a pod dialling its own address stays on its loopback: no policy applies
    pods = tuple(pods)
    cluster = Cluster(pods, tuple(namespaces), tuple(policies))
    src_ip = next(ip for ip in src.ips if _v(ip) == family)
    if not dst.backends:
        return "refuse"
    node_of = {ip: p.node for p in pods for ip in p.ips}
    backends = dst.backends
    if dst.local_only:
        backends = tuple(b for b in backends if node_of.get(b[0]) == src.node)
        if not backends:
            return "deny"  # no endpoint on this node: dropped
    masquerade = (node_addresses or {}).get(src.node or "") if dst.snat else None

    def seen_from(backend_ip: str) -> str:
        if masquerade is not None and node_of.get(backend_ip) != src.node:
            return masquerade
        return src_ip

    verdicts = {
        is_allowed(cluster, src_ip=seen_from(ip), dst_ip=ip, port=port, protocol=dst.protocol)
        for ip, port in backends
    }
    if verdicts == {True}:
        return "allow"
    if verdicts == {False}:
        return "deny"
    return "mixed"


_SEEN = {"open": "ok", "refused": "RST", "timeout": "--", "unreachable": "unr", "n/a": "n/a"}
_EXPECT = {"allow": "ok", "deny": "--", "refuse": "RST", "mixed": "mix"}


def format_matrix(
    rows: Sequence[str], columns: Sequence[str], cells: Mapping[tuple[str, str], Cell]
) -> list[str]:
    """One line per client: ``seen/expected`` per destination, ``!`` where they disagree."""
    width = max([len(c) for c in columns] + [7])
    first = max([len(r) for r in rows] + [6])
    lines = [" " * first + "  " + "  ".join(c.rjust(width) for c in columns)]
    for row in rows:
        parts: list[str] = []
        for col in columns:
            cell = cells.get((row, col))
            if cell is None:
                parts.append(" " * width)
                continue
            text = f"{_SEEN[cell.seen]}/{_EXPECT[cell.expected]}" + ("" if cell.agrees else " !")
            parts.append(text.rjust(width))
        lines.append(row.ljust(first) + "  " + "  ".join(parts))
    return lines


def disagreements(cells: Iterable[Cell]) -> list[Cell]:
    return [c for c in cells if not c.agrees]
