"""Reference semantics of NetworkPolicy, written for obviousness, not speed.  Pure.

``is_allowed`` answers "is a connection from IP A to IP B, protocol P, destination
port N allowed?" directly from the Kubernetes objects, by reading the
networking.k8s.io/v1 API reference line by line: no indices, no caches, and
deliberately no code shared with the compiler, so the two can check each other.
``evaluate_intents`` answers the same question from compiled intents
(``xpunet.ir.policy`` values keyed as in the intent bucket), the way a datapath
would.  Tests compare the two on random clusters; the pipeline interpreter is
checked against ``is_allowed`` too.

xpunet's choices where the API leaves room (documented in docs/intents.md):

* hostNetwork pods are neither enforced on nor selectable by pod/namespace
  selectors (their IPs are node IPs); an ipBlock can still match their IP.
* Pods in phase Succeeded/Failed and pods without IPs do not exist for policy.
* A named port matches only a destination that is a (selectable) pod with a
  container port of that name and protocol; it never matches a non-pod IP,
  also not when the peer is an ipBlock.
* A namespace without a Namespace object is treated as having only its
  ``kubernetes.io/metadata.name`` label.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from xpunet.ir.policy import (
    IPSet,
    PolicyEndpoint,
    PolicyRule,
    endpoint_key,
    global_ipset_key,
    ipset_key,
)
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    LabelSelector,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyRule,
    Pod,
    Protocol,
)


@dataclass(frozen=True, slots=True)
class Cluster:
    """The objects the reference reads."""

    pods: tuple[Pod, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()


def pod_exists_for_policy(pod: Pod) -> bool:
    """Whether a pod takes part in policy at all (selectable as a peer, owns its IPs)."""
    return bool(pod.ips) and not pod.host_network and pod.phase not in ("Succeeded", "Failed")


def pod_is_enforced(pod: Pod) -> bool:
    """Whether policy is enforced on a pod (it is a local endpoint of its node)."""
    return pod_exists_for_policy(pod) and pod.node is not None


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector: all matchLabels and all matchExpressions must hold; empty matches all."""
    for key, value in selector.match_labels.items():
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        key_present = req.key in labels
        if req.operator == "In" and not (key_present and labels[req.key] in req.values):
            return False
        if req.operator == "NotIn" and key_present and labels[req.key] in req.values:
            return False
        if req.operator == "Exists" and not key_present:
            return False
        if req.operator == "DoesNotExist" and key_present:
            return False
    return True


def namespace_labels(cluster: Cluster, name: str) -> Mapping[str, str]:
    for ns in cluster.namespaces:
        if ns.name == name:
            return {**ns.labels, NAMESPACE_NAME_LABEL: name}
    return {NAMESPACE_NAME_LABEL: name}


def pod_owning(cluster: Cluster, ip: str) -> Pod | None:
    addr = ipaddress.ip_address(ip)
    for pod in cluster.pods:
        if pod_exists_for_policy(pod) and any(ipaddress.ip_address(p) == addr for p in pod.ips):
            return pod
    return None


def _in_cidr(ip: str, cidr: str) -> bool:
    addr = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(cidr, strict=False)
    return addr.version == net.version and addr in net


def peer_matches(
    cluster: Cluster, policy: NetworkPolicy, peer: NetworkPolicyPeer, ip: str, pod: Pod | None
) -> bool:
    """Whether the other end of the connection (``ip``, owned by ``pod`` if any) is this peer."""
    if peer.ip_block is not None:
        block = peer.ip_block
        return _in_cidr(ip, block.cidr) and not any(_in_cidr(ip, e) for e in block.except_)
    if pod is None:
        return False
    if peer.namespace_selector is None:
        # podSelector alone: pods in the policy's own namespace.
        if pod.namespace != policy.namespace:
            return False
    elif not selector_matches(peer.namespace_selector, namespace_labels(cluster, pod.namespace)):
        return False
    # namespaceSelector alone: every pod of the matching namespaces.
    return peer.pod_selector is None or selector_matches(peer.pod_selector, pod.labels)


def named_port_number(pod: Pod, name: str, protocol: Protocol) -> int | None:
    for cp in pod.ports:
        if cp.name == name and cp.protocol == protocol:
            return cp.port
    return None


def ports_match(rule: NetworkPolicyRule, dst: Pod | None, port: int, protocol: Protocol) -> bool:
    """A rule without ports matches all ports and protocols; otherwise any listed port must match."""
    if not rule.ports:
        return True
    for p in rule.ports:
        if p.protocol != protocol:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, int):
            last = p.end_port if p.end_port is not None else p.port
            if p.port <= port <= last:
                return True
        elif dst is not None and named_port_number(dst, p.port, protocol) == port:
            return True
    return False


def rule_matches(
    cluster: Cluster,
    policy: NetworkPolicy,
    rule: NetworkPolicyRule,
    peer_ip: str,
    peer_pod: Pod | None,
    dst: Pod | None,
    port: int,
    protocol: Protocol,
) -> bool:
    """Traffic must match both the ports and the peers; no peers means all peers."""
    if not ports_match(rule, dst, port, protocol):
        return False
    if not rule.peers:
        return True
    return any(peer_matches(cluster, policy, peer, peer_ip, peer_pod) for peer in rule.peers)


def policies_selecting(cluster: Cluster, pod: Pod, policy_type: str) -> list[NetworkPolicy]:
    return [
        pol
        for pol in cluster.policies
        if pol.namespace == pod.namespace
        and policy_type in pol.policy_types
        and selector_matches(pol.pod_selector, pod.labels)
    ]


def is_allowed(
    cluster: Cluster,
    *,
    src_ip: str,
    dst_ip: str,
    port: int,
    protocol: Protocol,
    from_local_node: bool = False,
) -> bool:
    """Whether a new connection ``src_ip → dst_ip:port/protocol`` is allowed.

    ``from_local_node``: the source is the destination pod's own node (host
    traffic), which ingress policy always allows.
    """
    src = pod_owning(cluster, src_ip)
    dst = pod_owning(cluster, dst_ip)
    if src is not None and pod_is_enforced(src):
        egress = policies_selecting(cluster, src, "Egress")
        if egress and not any(
            rule_matches(cluster, pol, rule, dst_ip, dst, dst, port, protocol)
            for pol in egress
            for rule in pol.egress
        ):
            return False
    if dst is not None and pod_is_enforced(dst) and not from_local_node:
        ingress = policies_selecting(cluster, dst, "Ingress")
        if ingress and not any(
            rule_matches(cluster, pol, rule, src_ip, src, dst, port, protocol)
            for pol in ingress
            for rule in pol.ingress
        ):
            return False
    return True


# --- the same question, answered from compiled intents -----------------------


def _intent_rule_matches(
    intents: Mapping[str, object], node: str, rule: PolicyRule, peer_ip: str, port: int, protocol: Protocol
) -> bool:
    if rule.ports is not None and not any(
        pr.protocol == protocol and pr.first <= port <= pr.last for pr in rule.ports
    ):
        return False
    if rule.ipset is None:
        return True
    # As a datapath reads them: the union of the set's shards under its node and under global.
    # A reference to a set the node does not hold fails closed (no members).
    return any(_in_cidr(peer_ip, m) for m in _held_members(intents, node, rule.ipset))


def _held_members(intents: Mapping[str, object], node: str, set_id: str) -> Iterator[str]:
    for key_of in (partial(ipset_key, node), global_ipset_key):
        first = intents.get(key_of(set_id, 0))
        if not isinstance(first, IPSet):
            continue
        for shard in range(first.shards):
            value = intents.get(key_of(set_id, shard))
            if isinstance(value, IPSet):
                yield from value.members


def _endpoint_with_ip(endpoints: Iterable[PolicyEndpoint], ip: str) -> PolicyEndpoint | None:
    addr = ipaddress.ip_address(ip)
    for ep in endpoints:
        if any(ipaddress.ip_address(p) == addr for p in ep.ips):
            return ep
    return None


def evaluate_intents(
    intents: Mapping[str, object],
    *,
    src_ip: str,
    dst_ip: str,
    port: int,
    protocol: Protocol,
    from_local_node: bool = False,
) -> bool:
    """``is_allowed`` computed from intent-bucket contents (key → decoded intent value)."""
    endpoints = [
        v
        for k, v in intents.items()
        if isinstance(v, PolicyEndpoint) and k == endpoint_key(v.node, v.namespace, v.pod)
    ]
    src = _endpoint_with_ip(endpoints, src_ip)
    dst = _endpoint_with_ip(endpoints, dst_ip)
    if (
        src is not None
        and src.egress_isolated
        and not any(_intent_rule_matches(intents, src.node, r, dst_ip, port, protocol) for r in src.egress)
    ):
        return False
    return not (
        dst is not None
        and not from_local_node
        and dst.ingress_isolated
        and not any(_intent_rule_matches(intents, dst.node, r, src_ip, port, protocol) for r in dst.ingress)
    )
