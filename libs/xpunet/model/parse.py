"""Kubernetes API JSON → the normalised dataclasses of ``xpunet.model.objects``.

Input is a dict as returned by the API server, ``kubectl get -o json`` or a
YAML manifest.  Output keeps only the fields xpunet uses, normalised so that
equal meaning gives equal objects (IPs and CIDRs canonical, API defaults
applied, selector requirements sorted).  Anything malformed raises
``ModelError`` naming the object and the JSON path; no other exception escapes
for any input.

``parse_object`` dispatches on apiVersion/kind; the per-kind functions accept
objects without apiVersion/kind (items of a list response lack them).

Normalisation choices worth knowing:

* ``metadata.namespace`` absent on a namespaced kind reads as ``"default"``
  (what kubectl does for manifests); ``metadata.uid`` absent reads as ``""``.
* A Namespace's labels always carry ``kubernetes.io/metadata.name`` = its name.
* Pod ports are the ports of every container plus sidecar init containers
  (``restartPolicy: Always``), which are long-running and may be targets.
* Service: clusterIP ``"None"`` → ``headless=True`` and no cluster IPs; an
  empty or absent selector → ``None`` (the API treats both as "no selector");
  ``targetPort``/``nodePort`` of 0 mean unset; the ClientIP affinity timeout
  defaults to 10800 s.
* EndpointSlice: conditions use the API's nil semantics (ready nil → true,
  serving nil → ready, terminating nil → false); ``targetRef`` is kept only
  for Pods, as "namespace/name"; a port without a port number (the API's
  "all ports") is dropped, since nothing can load-balance to it.
* Names, label keys/values, port names, IPs and CIDRs are checked with the
  API's rules; see ``_read`` and ``_policy`` for IP/CIDR and policy details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from xpunet.model import _read as r
from xpunet.model._policy import build_network_policy, parse_selector
from xpunet.model._read import JSONMap, Obj
from xpunet.model.errors import ModelError
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    PROTOCOLS,
    SERVICE_NAME_LABEL,
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    K8sObject,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    Node,
    NodeAddress,
    Pod,
    Protocol,
    Service,
    ServicePort,
    ServiceType,
    TrafficPolicy,
)

__all__ = [
    "parse_endpoint_slice",
    "parse_label_selector",
    "parse_namespace",
    "parse_network_policy",
    "parse_node",
    "parse_object",
    "parse_pod",
    "parse_service",
]

DEFAULT_NAMESPACE: Final = "default"
DEFAULT_AFFINITY_TIMEOUT: Final = 10800
_MAX_AFFINITY_TIMEOUT: Final = 86400
_SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
_TRAFFIC_POLICIES: tuple[TrafficPolicy, ...] = ("Cluster", "Local")
_AFFINITIES: tuple[Literal["None", "ClientIP"], ...] = ("None", "ClientIP")
_FAMILIES: tuple[Literal["IPv4", "IPv6"], ...] = ("IPv4", "IPv6")
_ADDRESS_TYPES: tuple[Literal["IPv4", "IPv6", "FQDN"], ...] = ("IPv4", "IPv6", "FQDN")


# Stands in for the object while a fast path only asks whether a value passes a check.
_QUIET: Final = Obj("?", "?")


# --- metadata ------------------------------------------------------------------


def _ref(obj: Any, *, namespaced: bool) -> str:
    """Best-effort "ns/name" for error messages, computed before anything is validated."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return "?"
    name = meta.get("name")
    name = name if isinstance(name, str) and name else "?"
    if not namespaced:
        return name
    ns = meta.get("namespace")
    return f"{ns if isinstance(ns, str) and ns else DEFAULT_NAMESPACE}/{name}"


def _start(kind: str, obj: Any, *, namespaced: bool) -> tuple[Obj, JSONMap, JSONMap]:
    o = Obj(kind, _ref(obj, namespaced=namespaced))
    root = r.as_map(o, obj, "$")
    if root.get("metadata") is None:
        o.fail("metadata", "is required")
    return o, root, r.as_map(o, root["metadata"], "metadata")


def _name(o: Obj, meta: JSONMap) -> str:
    return r.check_name(o, r.req_str(o, meta, "name", "metadata"), "metadata.name")


def _namespace(o: Obj, meta: JSONMap) -> str:
    ns = r.opt_str(o, meta, "namespace", "metadata")
    if not ns:
        return DEFAULT_NAMESPACE
    return r.check_name(o, ns, "metadata.namespace", label=True)


def _uid(o: Obj, meta: JSONMap) -> str:
    return r.opt_str(o, meta, "uid", "metadata") or ""


# --- core/v1 ---------------------------------------------------------------------


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    # The watcher parses every pod of the cluster: the helpers below try the common
    # shape first without building error paths, and fall back to the checked code
    # (which names any problem) for anything else, so results and errors are the same.
    o, root, meta = _start("Pod", obj, namespaced=True)
    spec = r.opt_map(o, root, "spec", "")
    status = r.opt_map(o, root, "status", "")
    return Pod(
        namespace=_namespace(o, meta),
        name=_name(o, meta),
        uid=_uid(o, meta),
        node=r.opt_str(o, spec, "nodeName", "spec") or None,
        ips=_pod_ips_common(status) or _pod_ips(o, status),
        labels=r.labels(o, meta, "labels", "metadata"),
        ports=_container_ports_common(spec) or _container_ports(o, spec),
        phase=r.opt_str(o, status, "phase", "status") or "Pending",
        ready=_condition_true(o, status, "Ready"),
        host_network=bool(r.opt_bool(o, spec, "hostNetwork", "spec")),
    )


_PROTOCOL_OF: Final[Mapping[Any, Protocol]] = {p: p for p in PROTOCOLS}
_CONTAINER_GROUPS: Final = ("containers", "initContainers")


def _pod_ips_common(status: JSONMap) -> tuple[str, ...] | None:
    """``_pod_ips`` for podIPs entries that are maps with valid IPs; None (use ``_pod_ips``) otherwise."""
    entries = status.get("podIPs")
    if type(entries) is not list or not entries:
        return None
    out: list[str] = []
    for entry in entries:
        if type(entry) is not dict:
            return None
        value = entry.get("ip")
        if type(value) is not str:
            return None
        out.append(value)
    try:
        checked = [r.ip(_QUIET, value, "") for value in out]
    except ModelError:
        return None
    return tuple(dict.fromkeys(checked))


def _container_ports_common(spec: JSONMap) -> tuple[ContainerPort, ...] | None:
    """``_container_ports`` for well-formed containers; None (use ``_container_ports``) for anything else.

    An empty result is also None: the checked path then confirms there is nothing to find.
    """
    out: list[ContainerPort] = []
    for group in _CONTAINER_GROUPS:
        containers = spec.get(group)
        if containers is None:
            continue
        if type(containers) is not list:
            return None
        for container in containers:
            if type(container) is not dict:
                return None
            if group == "initContainers" and container.get("restartPolicy") != "Always":
                continue
            ports = container.get("ports")
            if ports is None:
                continue
            if type(ports) is not list:
                return None
            for raw in ports:
                if type(raw) is not dict:
                    return None
                number = raw.get("containerPort")
                if type(number) is not int or not 1 <= number <= 65535:
                    return None
                proto = raw.get("protocol")
                protocol = "TCP" if proto is None else _PROTOCOL_OF.get(proto) if type(proto) is str else None
                if protocol is None:
                    return None
                name = raw.get("name")
                if name == "":
                    name = None
                elif name is not None and (type(name) is not str or not r.is_port_name(name)):
                    return None
                out.append(ContainerPort(number, protocol, name))
    return tuple(out) or None


def _pod_ips(o: Obj, status: JSONMap) -> tuple[str, ...]:
    entries = r.opt_list(o, status, "podIPs", "status")
    if entries:
        out: list[str] = []
        for i, entry in enumerate(entries):
            at = f"status.podIPs[{i}]"
            item = r.as_map(o, entry, at)
            out.append(r.ip(o, item.get("ip"), r.sub(at, "ip")))
        return tuple(dict.fromkeys(out))
    single = r.opt_str(o, status, "podIP", "status")
    return (r.ip(o, single, "status.podIP"),) if single else ()


def _container_ports(o: Obj, spec: JSONMap) -> tuple[ContainerPort, ...]:
    out: list[ContainerPort] = []
    for group in ("containers", "initContainers"):
        for i, entry in enumerate(r.opt_list(o, spec, group, "spec")):
            at = f"spec.{group}[{i}]"
            container = r.as_map(o, entry, at)
            if group == "initContainers" and container.get("restartPolicy") != "Always":
                continue  # a plain init container has exited before the pod serves traffic
            for j, p in enumerate(r.opt_list(o, container, "ports", at)):
                pat = f"{at}.ports[{j}]"
                raw = r.as_map(o, p, pat)
                number = r.opt_int(o, raw, "containerPort", pat)
                if number is None:
                    o.fail(r.sub(pat, "containerPort"), "is required")
                name = r.opt_str(o, raw, "name", pat) or None
                out.append(
                    ContainerPort(
                        port=r.check_port(o, number, r.sub(pat, "containerPort")),
                        protocol=r.protocol(o, raw, pat),
                        name=None if name is None else r.check_port_name(o, name, r.sub(pat, "name")),
                    )
                )
    return tuple(out)


def _condition_true(o: Obj, status: JSONMap, kind: str) -> bool:
    conditions = status.get("conditions")
    if type(conditions) is list:
        # The common shape first, without error paths; anything odd is re-read below with checks.
        for entry in conditions:
            if type(entry) is not dict:
                break
            ctype = entry.get("type")
            if ctype is not None and type(ctype) is not str:
                break
            if ctype == kind:
                value = entry.get("status")
                if value is None or type(value) is str:
                    return value == "True"
                break
        else:
            return False
    return _condition_true_checked(o, status, kind)


def _condition_true_checked(o: Obj, status: JSONMap, kind: str) -> bool:
    for i, entry in enumerate(r.opt_list(o, status, "conditions", "status")):
        at = f"status.conditions[{i}]"
        cond = r.as_map(o, entry, at)
        if r.opt_str(o, cond, "type", at) == kind:
            return r.opt_str(o, cond, "status", at) == "True"
    return False


def parse_namespace(obj: Mapping[str, Any]) -> Namespace:
    o, _root, meta = _start("Namespace", obj, namespaced=False)
    name = r.check_name(o, r.req_str(o, meta, "name", "metadata"), "metadata.name", label=True)
    labels = dict(r.labels(o, meta, "labels", "metadata"))
    labels[NAMESPACE_NAME_LABEL] = name  # the API server sets it and keeps it equal to the name
    return Namespace(name=name, labels=Labels(labels))


def parse_node(obj: Mapping[str, Any]) -> Node:
    o, root, meta = _start("Node", obj, namespaced=False)
    spec = r.opt_map(o, root, "spec", "")
    status = r.opt_map(o, root, "status", "")
    pod_cidrs = tuple(
        str(r.cidr(o, c, f"spec.podCIDRs[{i}]"))
        for i, c in enumerate(r.opt_list(o, spec, "podCIDRs", "spec"))
    )
    if not pod_cidrs and spec.get("podCIDR"):  # single-stack clusters of old set only podCIDR
        pod_cidrs = (str(r.cidr(o, spec["podCIDR"], "spec.podCIDR")),)
    addresses: list[NodeAddress] = []
    for i, entry in enumerate(r.opt_list(o, status, "addresses", "status")):
        at = f"status.addresses[{i}]"
        raw = r.as_map(o, entry, at)
        kind = r.req_str(o, raw, "type", at)
        address = r.req_str(o, raw, "address", at)
        if kind in ("InternalIP", "ExternalIP"):
            address = r.ip(o, address, r.sub(at, "address"))
        addresses.append(NodeAddress(type=kind, address=address))
    return Node(
        name=_name(o, meta),
        uid=_uid(o, meta),
        addresses=tuple(addresses),
        pod_cidrs=pod_cidrs,
        labels=r.labels(o, meta, "labels", "metadata"),
    )


def parse_service(obj: Mapping[str, Any]) -> Service:
    o, root, meta = _start("Service", obj, namespaced=True)
    spec = r.opt_map(o, root, "spec", "")
    status = r.opt_map(o, root, "status", "")
    stype = _pick(o, spec, "type", _SERVICE_TYPES, "ClusterIP")
    external_name = r.opt_str(o, spec, "externalName", "spec") or None
    if stype == "ExternalName" and external_name is None:
        o.fail("spec.externalName", "is required when type is ExternalName")

    # clusterIPs supersedes clusterIP (they agree on the first entry when both are set).
    paths = {f"spec.clusterIPs[{i}]": v for i, v in enumerate(r.str_list(o, spec, "clusterIPs", "spec"))}
    if not paths and (single := r.opt_str(o, spec, "clusterIP", "spec")):
        paths = {"spec.clusterIP": single}
    headless = "None" in paths.values()
    cluster_ips = () if headless else tuple(r.ip(o, v, at) for at, v in paths.items())

    affinity = _pick(o, spec, "sessionAffinity", _AFFINITIES, "None")
    affinity_cfg = r.opt_map(o, spec, "sessionAffinityConfig", "spec")
    client_ip = r.opt_map(o, affinity_cfg, "clientIP", "spec.sessionAffinityConfig")
    timeout = r.opt_int(o, client_ip, "timeoutSeconds", "spec.sessionAffinityConfig.clientIP")
    if timeout is None:
        timeout = DEFAULT_AFFINITY_TIMEOUT
    elif not 1 <= timeout <= _MAX_AFFINITY_TIMEOUT:
        o.fail(
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            f"{timeout} is out of range 1-{_MAX_AFFINITY_TIMEOUT}",
        )

    selector = r.labels(o, spec, "selector", "spec")
    families = tuple(
        r.pick(o, v, _FAMILIES, f"spec.ipFamilies[{i}]")
        for i, v in enumerate(r.str_list(o, spec, "ipFamilies", "spec"))
    )
    return Service(
        namespace=_namespace(o, meta),
        name=_name(o, meta),
        uid=_uid(o, meta),
        type=stype,
        cluster_ips=cluster_ips,
        headless=headless,
        ports=_service_ports(o, spec),
        selector=selector or None,
        external_ips=tuple(
            r.ip(o, v, f"spec.externalIPs[{i}]")
            for i, v in enumerate(r.str_list(o, spec, "externalIPs", "spec"))
        ),
        load_balancer_ips=_lb_ips(o, status),
        session_affinity=affinity,
        session_affinity_timeout=timeout,
        external_traffic_policy=_pick(o, spec, "externalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster"),
        internal_traffic_policy=_pick(o, spec, "internalTrafficPolicy", _TRAFFIC_POLICIES, "Cluster"),
        traffic_distribution=r.opt_str(o, spec, "trafficDistribution", "spec") or None,
        external_name=external_name,
        ip_families=families,
    )


def _pick(o: Obj, parent: JSONMap, key: str, allowed: tuple[r.S, ...], default: r.S) -> r.S:
    value = r.opt_str(o, parent, key, "spec")
    return default if not value else r.pick(o, value, allowed, f"spec.{key}")


def _service_ports(o: Obj, spec: JSONMap) -> tuple[ServicePort, ...]:
    out: list[ServicePort] = []
    for i, entry in enumerate(r.opt_list(o, spec, "ports", "spec")):
        at = f"spec.ports[{i}]"
        raw = r.as_map(o, entry, at)
        port = r.opt_int(o, raw, "port", at)
        if port is None:
            o.fail(r.sub(at, "port"), "is required")
        # targetPort 0 or "" is the API's "unset" (it then defaults to port).
        unset = raw.get("targetPort") == "" or (type(raw.get("targetPort")) is int and raw["targetPort"] == 0)
        target = None if unset else r.port_or_name(o, raw, "targetPort", at)
        node_port = r.opt_int(o, raw, "nodePort", at) or None
        name = r.opt_str(o, raw, "name", at) or None
        out.append(
            ServicePort(
                port=r.check_port(o, port, r.sub(at, "port")),
                protocol=r.protocol(o, raw, at),
                name=name,
                target_port=target,
                node_port=None if node_port is None else r.check_port(o, node_port, r.sub(at, "nodePort")),
            )
        )
    return tuple(out)


def _lb_ips(o: Obj, status: JSONMap) -> tuple[str, ...]:
    lb = r.opt_map(o, status, "loadBalancer", "status")
    out: list[str] = []
    for i, entry in enumerate(r.opt_list(o, lb, "ingress", "status.loadBalancer")):
        at = f"status.loadBalancer.ingress[{i}]"
        raw = r.as_map(o, entry, at)
        if raw.get("ip"):  # hostname-only ingress points (some clouds) carry no IP to program
            out.append(r.ip(o, raw["ip"], r.sub(at, "ip")))
    return tuple(out)


# --- discovery.k8s.io/v1 ------------------------------------------------------------


def parse_endpoint_slice(obj: Mapping[str, Any]) -> EndpointSlice:
    o, root, meta = _start("EndpointSlice", obj, namespaced=True)
    namespace = _namespace(o, meta)
    address_type = r.pick(o, r.req_str(o, root, "addressType", ""), _ADDRESS_TYPES, "addressType")
    family = {"IPv4": 4, "IPv6": 6}.get(address_type)
    endpoints = tuple(
        _endpoint(o, e, f"endpoints[{i}]", family=family, namespace=namespace)
        for i, e in enumerate(r.opt_list(o, root, "endpoints", ""))
    )
    ports: list[EndpointPort] = []
    for i, entry in enumerate(r.opt_list(o, root, "ports", "")):
        at = f"ports[{i}]"
        raw = r.as_map(o, entry, at)
        number = r.opt_int(o, raw, "port", at)
        if number is None:
            continue  # "all ports": see the module docstring
        ports.append(
            EndpointPort(
                port=r.check_port(o, number, r.sub(at, "port")),
                protocol=r.protocol(o, raw, at),
                name=r.opt_str(o, raw, "name", at) or None,
            )
        )
    labels = r.labels(o, meta, "labels", "metadata")
    return EndpointSlice(
        namespace=namespace,
        name=_name(o, meta),
        service=labels.get(SERVICE_NAME_LABEL) or None,
        address_type=address_type,
        endpoints=endpoints,
        ports=tuple(ports),
    )


def _endpoint(o: Obj, value: Any, at: str, *, family: int | None, namespace: str) -> Endpoint:
    raw = r.as_map(o, value, at)
    addrs = r.str_list(o, raw, "addresses", at)
    if not addrs:
        o.fail(r.sub(at, "addresses"), "must contain at least one address")
    if family is not None:
        addrs = tuple(r.ip(o, a, f"{at}.addresses[{i}]", family=family) for i, a in enumerate(addrs))
    cond = r.opt_map(o, raw, "conditions", at)
    cond_at = r.sub(at, "conditions")
    ready = r.opt_bool(o, cond, "ready", cond_at)
    serving = r.opt_bool(o, cond, "serving", cond_at)
    terminating = r.opt_bool(o, cond, "terminating", cond_at)
    ready = True if ready is None else ready
    hints = r.opt_map(o, raw, "hints", at)
    return Endpoint(
        addresses=addrs,
        ready=ready,
        serving=ready if serving is None else serving,
        terminating=bool(terminating),
        node_name=r.opt_str(o, raw, "nodeName", at) or None,
        zone=r.opt_str(o, raw, "zone", at) or None,
        hints_for_zones=_hint_names(o, hints, "forZones", r.sub(at, "hints")),
        hints_for_nodes=_hint_names(o, hints, "forNodes", r.sub(at, "hints")),
        target_ref=_target_ref(o, raw, at, namespace),
    )


def _hint_names(o: Obj, hints: JSONMap, key: str, path: str) -> tuple[str, ...]:
    out: list[str] = []
    for i, entry in enumerate(r.opt_list(o, hints, key, path)):
        at = f"{path}.{key}[{i}]"
        out.append(r.req_str(o, r.as_map(o, entry, at), "name", at))
    return tuple(out)


def _target_ref(o: Obj, raw: JSONMap, at: str, namespace: str) -> str | None:
    if raw.get("targetRef") is None:
        return None
    ref_at = r.sub(at, "targetRef")
    ref = r.as_map(o, raw["targetRef"], ref_at)
    if r.opt_str(o, ref, "kind", ref_at) != "Pod":
        return None
    name = r.req_str(o, ref, "name", ref_at)
    return f"{r.opt_str(o, ref, 'namespace', ref_at) or namespace}/{name}"


# --- networking.k8s.io/v1 ------------------------------------------------------------


def parse_network_policy(obj: Mapping[str, Any]) -> NetworkPolicy:
    o, root, meta = _start("NetworkPolicy", obj, namespaced=True)
    return build_network_policy(
        o, root, namespace=_namespace(o, meta), name=_name(o, meta), uid=_uid(o, meta)
    )


def parse_label_selector(
    value: Any, *, kind: str = "LabelSelector", ref: str = "?", path: str = ""
) -> LabelSelector:
    """A bare metav1.LabelSelector (for callers that hold one outside an object)."""
    return parse_selector(Obj(kind, ref), value, path)


# --- dispatch --------------------------------------------------------------------------

PARSERS: Final[Mapping[tuple[str, str], Callable[[Mapping[str, Any]], K8sObject]]] = {
    ("v1", "Pod"): parse_pod,
    ("v1", "Namespace"): parse_namespace,
    ("v1", "Node"): parse_node,
    ("v1", "Service"): parse_service,
    ("discovery.k8s.io/v1", "EndpointSlice"): parse_endpoint_slice,
    ("networking.k8s.io/v1", "NetworkPolicy"): parse_network_policy,
}


def parse_object(obj: Mapping[str, Any]) -> K8sObject:
    """Parse any supported kind, chosen by its apiVersion and kind."""
    if not isinstance(obj, Mapping):
        raise ModelError("object", "?", "$", f"expected an object, got {type(obj).__name__}")
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    parser = (
        PARSERS.get((api_version, kind)) if isinstance(api_version, str) and isinstance(kind, str) else None
    )
    if parser is None:
        label = kind if isinstance(kind, str) and kind else "object"
        supported = ", ".join(f"{v}/{k}" for v, k in PARSERS)
        raise ModelError(
            label,
            _ref(obj, namespaced=True),
            "apiVersion/kind",
            f"unsupported {r.describe(api_version)}/{r.describe(kind)}: expected one of {supported}",
        )
    return parser(obj)
