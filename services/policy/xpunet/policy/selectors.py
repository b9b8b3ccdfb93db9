"""Label selectors, address blocks and the validation of policies, for the compiler.  Pure.

The reference evaluator has its own, slower copies of these on purpose (it
must not share code with what it checks).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping

from xpunet.model.errors import ModelError
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    PROTOCOLS,
    IPBlock,
    Labels,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyRule,
    Pod,
    Protocol,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_Fail = Callable[[str, str], ModelError]

# IANA_SVC_NAME as the API validates container port names.
_PORT_NAME = re.compile(r"^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]+(-[a-z0-9]+)*$")


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        op = req.operator
        if op == "In":
            if labels.get(req.key) not in req.values:
                return False
        elif op == "NotIn":
            got = labels.get(req.key)
            if got is not None and got in req.values:
                return False
        elif op == "Exists":
            if req.key not in labels:
                return False
        elif req.key in labels:  # DoesNotExist
            return False
    return True


def is_empty(selector: LabelSelector) -> bool:
    return not selector.match_labels and not selector.match_expressions


def pod_participates(pod: Pod) -> bool:
    """A pod takes part in policy: has IPs, not hostNetwork, not terminated."""
    return bool(pod.ips) and not pod.host_network and pod.phase not in ("Succeeded", "Failed")


def namespace_labels(name: str, ns: Namespace | None) -> Labels:
    """A namespace's labels; the automatic name label is always present, also with no object."""
    if ns is None:
        return Labels({NAMESPACE_NAME_LABEL: name})
    if ns.labels.get(NAMESPACE_NAME_LABEL) == name:
        return ns.labels
    return Labels({**ns.labels, NAMESPACE_NAME_LABEL: name})


def block_cidrs(block: IPBlock) -> tuple[str, ...]:
    """The exact CIDR difference ``cidr - except``, as sorted CIDR strings."""
    nets: list[IPNetwork] = [ipaddress.ip_network(block.cidr, strict=False)]
    for exc in block.except_:
        cut = ipaddress.ip_network(exc, strict=False)
        nxt: list[IPNetwork] = []
        for net in nets:
            if net.version != cut.version or not net.overlaps(cut):
                nxt.append(net)
            elif net.subnet_of(cut):  # type: ignore[arg-type]  # same version checked above
                continue
            else:
                nxt.extend(net.address_exclude(cut))  # type: ignore[arg-type]  # same version checked above
        nets = nxt
    return tuple(str(n) for n in sorted(nets))


def ip_in_block(ip: str, block: IPBlock) -> bool:
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block.cidr, strict=False)
    if addr.version != net.version or addr not in net:
        return False
    for exc in block.except_:
        cut = ipaddress.ip_network(exc, strict=False)
        if cut.version == addr.version and addr in cut:
            return False
    return True


def host_cidr(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{addr.max_prefixlen}"


def sort_cidrs(cidrs: set[str]) -> tuple[str, ...]:
    """IPv4 before IPv6, numerically within a family."""
    nets = sorted(
        (ipaddress.ip_network(c, strict=False) for c in cidrs),
        key=lambda n: (n.version, n.network_address, n.prefixlen),
    )
    return tuple(str(n) for n in nets)


# --- validation --------------------------------------------------------------


def validate_policy(policy: NetworkPolicy) -> None:
    """Raise ``ModelError`` naming the field if the compiler cannot honour the policy exactly."""
    ref = f"{policy.namespace}/{policy.name}"

    def fail(field: str, problem: str) -> ModelError:
        return ModelError("NetworkPolicy", ref, field, problem)

    for t in policy.policy_types:
        if t not in ("Ingress", "Egress"):
            raise fail("spec.policyTypes", f"unknown policy type {t!r}")
    _validate_selector(policy.pod_selector, "spec.podSelector", fail)
    for direction, rules in (("ingress", policy.ingress), ("egress", policy.egress)):
        for i, rule in enumerate(rules):
            _validate_rule(rule, f"spec.{direction}[{i}]", "from" if direction == "ingress" else "to", fail)


def _validate_rule(rule: NetworkPolicyRule, path: str, peers_field: str, fail: _Fail) -> None:
    for j, port in enumerate(rule.ports):
        where = f"{path}.ports[{j}]"
        if port.protocol not in PROTOCOLS:
            raise fail(f"{where}.protocol", f"unsupported protocol {port.protocol!r}")
        if isinstance(port.port, bool):
            raise fail(f"{where}.port", "must be a number or a name")
        if isinstance(port.port, int):
            if not 1 <= port.port <= 65535:
                raise fail(f"{where}.port", f"{port.port} is not in 1..65535")
            if port.end_port is not None and not port.port <= port.end_port <= 65535:
                raise fail(f"{where}.endPort", f"{port.end_port} is not in {port.port}..65535")
        elif isinstance(port.port, str):
            if not _PORT_NAME.match(port.port):
                raise fail(f"{where}.port", f"{port.port!r} is not a valid port name")
            if port.end_port is not None:
                raise fail(f"{where}.endPort", "not allowed with a named port")
        elif port.end_port is not None:
            raise fail(f"{where}.endPort", "not allowed without port")
    for j, peer in enumerate(rule.peers):
        where = f"{path}.{peers_field}[{j}]"
        if peer.ip_block is not None:
            if peer.pod_selector is not None or peer.namespace_selector is not None:
                raise fail(where, "ipBlock cannot be combined with selectors")
            _validate_block(peer.ip_block, f"{where}.ipBlock", fail)
        elif peer.pod_selector is None and peer.namespace_selector is None:
            raise fail(where, "a peer needs podSelector, namespaceSelector or ipBlock")
        if peer.pod_selector is not None:
            _validate_selector(peer.pod_selector, f"{where}.podSelector", fail)
        if peer.namespace_selector is not None:
            _validate_selector(peer.namespace_selector, f"{where}.namespaceSelector", fail)


def _validate_block(block: IPBlock, where: str, fail: _Fail) -> None:
    try:
        net = ipaddress.ip_network(block.cidr, strict=False)
    except ValueError as exc:
        raise fail(f"{where}.cidr", f"{block.cidr!r} is not a CIDR") from exc
    for k, exc_cidr in enumerate(block.except_):
        try:
            cut = ipaddress.ip_network(exc_cidr, strict=False)
        except ValueError as exc:
            raise fail(f"{where}.except[{k}]", f"{exc_cidr!r} is not a CIDR") from exc
        if cut.version != net.version or not cut.subnet_of(net):  # type: ignore[arg-type]  # version checked first
            raise fail(f"{where}.except[{k}]", f"{exc_cidr} is not within {block.cidr}")


def _validate_selector(selector: LabelSelector, where: str, fail: _Fail) -> None:
    for k, req in enumerate(selector.match_expressions):
        if req.operator in ("In", "NotIn"):
            if not req.values:
                raise fail(f"{where}.matchExpressions[{k}].values", f"must be non-empty for {req.operator}")
        elif req.operator in ("Exists", "DoesNotExist"):
            if req.values:
                raise fail(f"{where}.matchExpressions[{k}].values", f"must be empty for {req.operator}")
        else:
            raise fail(f"{where}.matchExpressions[{k}].operator", f"unknown operator {req.operator!r}")


def named_port_number(pod: Pod, name: str, protocol: Protocol) -> int | None:
    for cp in pod.ports:
        if cp.name == name and cp.protocol == protocol:
            return cp.port
    return None
