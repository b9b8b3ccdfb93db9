"""NetworkPolicy (networking.k8s.io/v1) and metav1.LabelSelector parsing.

Normalisation choices, beyond the API's own defaulting:

* ``policyTypes`` is always resolved: absent or empty means ``Ingress``, plus
  ``Egress`` when the spec has at least one egress rule; the result is in the
  canonical order Ingress, Egress.
* An absent ``spec.podSelector`` reads as the empty selector (all pods), the
  same as the API's zero value.
* Selector requirements have their values sorted and deduplicated and the
  requirements themselves sorted, so equal selectors compare equal.
* ipBlock CIDRs are normalised to their network (see ``_read.cidr``); each
  ``except`` must be a strict subset of ``cidr``, as the API requires.
"""

from __future__ import annotations

from typing import Any

from xpunet.model import _read as r
from xpunet.model._read import JSONMap, Obj
from xpunet.model.objects import (
    IPBlock,
    LabelSelector,
    LabelSelectorRequirement,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    PolicyType,
    SelectorOperator,
)

_OPERATORS: tuple[SelectorOperator, ...] = ("In", "NotIn", "Exists", "DoesNotExist")


def parse_selector(o: Obj, value: Any, path: str) -> LabelSelector:
    """A metav1.LabelSelector; matchExpressions values are checked against the operator."""
    raw = r.as_map(o, value, path)
    match_labels = r.labels(o, raw, "matchLabels", path)
    exprs_path = r.sub(path, "matchExpressions")
    requirements: list[LabelSelectorRequirement] = []
    for i, item in enumerate(r.opt_list(o, raw, "matchExpressions", path)):
        at = f"{exprs_path}[{i}]"
        expr = r.as_map(o, item, at)
        key = r.check_label_key(o, r.req_str(o, expr, "key", at), r.sub(at, "key"))
        operator = r.pick(
            o, r.req_str(o, expr, "operator", at), _OPERATORS, r.sub(at, "operator"), what="operator"
        )
        values = r.str_list(o, expr, "values", at)
        if operator in ("In", "NotIn") and not values:
            o.fail(r.sub(at, "values"), f"must be non-empty when operator is {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            o.fail(r.sub(at, "values"), f"must be empty when operator is {operator}")
        for j, v in enumerate(values):
            r.check_label_value(o, v, f"{at}.values[{j}]")
        requirements.append(LabelSelectorRequirement(key, operator, tuple(sorted(set(values)))))
    requirements.sort(key=lambda q: (q.key, q.operator, q.values))
    return LabelSelector(match_labels=match_labels, match_expressions=tuple(requirements))


def _ip_block(o: Obj, value: Any, path: str) -> IPBlock:
    raw = r.as_map(o, value, path)
    cidr_path = r.sub(path, "cidr")
    if raw.get("cidr") in (None, ""):
        o.fail(cidr_path, "is required")
    net = r.cidr(o, raw["cidr"], cidr_path)
    excepts: list[str] = []
    for i, item in enumerate(r.opt_list(o, raw, "except", path)):
        at = f"{path}.except[{i}]"
        sub = r.cidr(o, item, at)
        if not r.strict_subnet(sub, net):  # the API requires a strict subset
            o.fail(at, f"{item} must be a strict subset of cidr {net}")
        excepts.append(str(sub))
    return IPBlock(cidr=str(net), except_=tuple(excepts))


def _peer(o: Obj, value: Any, path: str) -> NetworkPolicyPeer:
    raw = r.as_map(o, value, path)
    pod_sel = raw.get("podSelector")
    ns_sel = raw.get("namespaceSelector")
    block = raw.get("ipBlock")
    if block is not None:
        if pod_sel is not None or ns_sel is not None:
            o.fail(path, "may not specify both ipBlock and a pod or namespace selector")
        return NetworkPolicyPeer(ip_block=_ip_block(o, block, r.sub(path, "ipBlock")))
    if pod_sel is None and ns_sel is None:
        o.fail(path, "must specify podSelector, namespaceSelector or ipBlock")
    return NetworkPolicyPeer(
        pod_selector=None if pod_sel is None else parse_selector(o, pod_sel, r.sub(path, "podSelector")),
        namespace_selector=None
        if ns_sel is None
        else parse_selector(o, ns_sel, r.sub(path, "namespaceSelector")),
    )


def _port(o: Obj, value: Any, path: str) -> NetworkPolicyPort:
    raw = r.as_map(o, value, path)
    proto = r.protocol(o, raw, path)
    port = r.port_or_name(o, raw, "port", path)
    end_port = r.opt_int(o, raw, "endPort", path)
    if end_port is not None:
        at = r.sub(path, "endPort")
        if port is None:
            o.fail(at, "may not be specified when port is not specified")
        if isinstance(port, str):
            o.fail(at, "may not be specified when port is a named port")
        r.check_port(o, end_port, at)
        if end_port < port:
            o.fail(at, f"{end_port} must be greater than or equal to port {port}")
    return NetworkPolicyPort(protocol=proto, port=port, end_port=end_port)


def _rules(o: Obj, spec: JSONMap, key: str, peers_key: str) -> tuple[NetworkPolicyRule, ...]:
    base = f"spec.{key}"
    rules: list[NetworkPolicyRule] = []
    for i, item in enumerate(r.opt_list(o, spec, key, "spec")):
        at = f"{base}[{i}]"
        rule = r.as_map(o, item, at)
        ports = tuple(_port(o, p, f"{at}.ports[{j}]") for j, p in enumerate(r.opt_list(o, rule, "ports", at)))
        peers = tuple(
            _peer(o, p, f"{at}.{peers_key}[{j}]") for j, p in enumerate(r.opt_list(o, rule, peers_key, at))
        )
        rules.append(NetworkPolicyRule(ports=ports, peers=peers))
    return tuple(rules)


def _policy_types(o: Obj, spec: JSONMap, *, has_egress: bool) -> tuple[PolicyType, ...]:
    declared = r.str_list(o, spec, "policyTypes", "spec")
    if not declared:
        # API defaulting: Ingress always, Egress only when egress rules exist.
        return ("Ingress", "Egress") if has_egress else ("Ingress",)
    for i, value in enumerate(declared):
        r.pick(o, value, ("Ingress", "Egress"), f"spec.policyTypes[{i}]", what="policy type")
    out: list[PolicyType] = []
    if "Ingress" in declared:
        out.append("Ingress")
    if "Egress" in declared:
        out.append("Egress")
    return tuple(out)


def build_network_policy(o: Obj, obj: JSONMap, *, namespace: str, name: str, uid: str) -> NetworkPolicy:
    spec = r.opt_map(o, obj, "spec", "")
    pod_sel = spec.get("podSelector")
    selector = LabelSelector() if pod_sel is None else parse_selector(o, pod_sel, "spec.podSelector")
    ingress = _rules(o, spec, "ingress", "from")
    egress = _rules(o, spec, "egress", "to")
    return NetworkPolicy(
        namespace=namespace,
        name=name,
        uid=uid,
        pod_selector=selector,
        policy_types=_policy_types(o, spec, has_egress=bool(egress)),
        ingress=ingress,
        egress=egress,
    )
