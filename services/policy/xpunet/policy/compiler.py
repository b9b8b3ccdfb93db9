"""The incremental NetworkPolicy compiler: objects in, changed intent keys out.  Pure.

Callers report object upserts and deletes (cheap: they only record what
changed), then call ``flush()``, which recomputes exactly the endpoints and IP
sets the changes can affect and returns the intent keys whose values changed
(``None``: delete the key).  The output is a function of the current objects
only, so replaying the same updates in any order, split over several flushes
or squashed into one, ends in the same intents.

What each change touches:

* a pod: its own endpoint, and its membership in the sets whose atoms are
  indexed for its namespace and labels (``xpunet.policy.index``); a named set
  that gains or loses a port number re-renders the endpoints referencing it;
* a namespace: membership of its pods in namespace-selector sets;
* a policy: the endpoints its old or new pod selector picks in its namespace.

Where a set is published (``xpunet.ir.policy``): under each node whose
endpoints reference it while fewer than ``global_set_nodes`` nodes do, else
once under ``global.``.  A membership change therefore writes at most
``global_set_nodes - 1`` keys per set, whatever the number of nodes; the
placement is a function of the current references, so replays agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from xpunet.ir.policy import (
    Direction,
    IPSet,
    PolicyEndpoint,
    PolicyIntent,
    PolicyRule,
    PortRange,
    RuleOrigin,
    endpoint_key,
    global_ipset_key,
    ipset_key,
)
from xpunet.model.errors import ModelError
from xpunet.model.objects import Namespace, NetworkPolicy, NetworkPolicyRule, Pod, Protocol
from xpunet.policy.index import ALL, MembershipIndex, PodAtom, PodKey, SetDef, make_setdef, set_id_of
from xpunet.policy.selectors import (
    named_port_number,
    namespace_labels,
    pod_participates,
    selector_matches,
    validate_policy,
)

log = logging.getLogger(__name__)

ALL_PORTS = 0, 65535
# Nodes referencing a set from which it is published once under global. instead of per node:
# the per-change write cost of a set is bounded by this, not by the cluster's node count.
DEFAULT_GLOBAL_SET_NODES = 16
_EVERY_POD = PodAtom(namespace=None, namespace_selector=ALL, pod_selector=ALL)


@dataclass(frozen=True, slots=True)
class _RuleTemplate:
    """A NetworkPolicy rule, compiled as far as it can be without knowing the endpoint."""

    origin: RuleOrigin
    peers: SetDef | None  # None: all peers
    all_ports: bool  # the rule lists no ports
    ranges: tuple[PortRange, ...]  # numeric ports
    # Named ports: ingress resolves them on the endpoint; egress per destination
    # pod, through one named set per (name, protocol).
    named: tuple[tuple[str, Protocol], ...]
    named_sets: tuple[SetDef, ...] = ()

    def set_defs(self) -> list[SetDef]:
        """Every set the rule may reference (some endpoints may need fewer)."""
        return ([self.peers] if self.peers is not None else []) + list(self.named_sets)


def _compile_templates(policy: NetworkPolicy) -> tuple[_RuleTemplate, ...]:
    out: list[_RuleTemplate] = []
    directions: tuple[tuple[Direction, tuple[NetworkPolicyRule, ...], bool], ...] = (
        ("ingress", policy.ingress, "Ingress" in policy.policy_types),
        ("egress", policy.egress, "Egress" in policy.policy_types),
    )
    for direction, rules, enabled in directions:
        if not enabled:
            continue  # rules of a direction the policy does not govern are ignored
        for index, rule in enumerate(rules):
            origin = RuleOrigin(policy.namespace, policy.name, direction, index)
            out.append(_compile_rule(policy, rule, origin))
    return tuple(out)


def _compile_rule(policy: NetworkPolicy, rule: NetworkPolicyRule, origin: RuleOrigin) -> _RuleTemplate:
    atoms: list[PodAtom] = []
    blocks = []
    for peer in rule.peers:
        if peer.ip_block is not None:
            blocks.append(peer.ip_block)
        elif peer.namespace_selector is None:
            atoms.append(PodAtom(policy.namespace, None, peer.pod_selector or ALL))
        else:
            atoms.append(PodAtom(None, peer.namespace_selector, peer.pod_selector or ALL))
    peers = make_setdef(atoms, blocks) if rule.peers else None
    ranges: set[PortRange] = set()
    named: set[tuple[str, Protocol]] = set()
    for port in rule.ports:
        if port.port is None:
            ranges.add(PortRange(port.protocol, *ALL_PORTS))
        elif isinstance(port.port, int):
            last = port.end_port if port.end_port is not None else port.port
            ranges.add(PortRange(port.protocol, port.port, last))
        else:
            named.add((port.port, port.protocol))
    named_sorted = tuple(sorted(named))
    named_sets: tuple[SetDef, ...] = ()
    if origin.direction == "egress" and named_sorted:
        base_atoms = peers.atoms if peers is not None else (_EVERY_POD,)
        base_blocks = peers.blocks if peers is not None else ()
        named_sets = tuple(make_setdef(base_atoms, base_blocks, n) for n in named_sorted)
    return _RuleTemplate(
        origin=origin,
        peers=peers,
        all_ports=not rule.ports,
        ranges=tuple(sorted(ranges, key=lambda r: (r.protocol, r.first, r.last))),
        named=named_sorted,
        named_sets=named_sets,
    )


class PolicyCompiler:
    """Holds the objects and the derived state; ``flush`` returns changed intent keys."""

    def __init__(self, *, global_set_nodes: int = DEFAULT_GLOBAL_SET_NODES) -> None:
        if global_set_nodes < 1:
            raise ValueError(f"global_set_nodes must be >= 1, got {global_set_nodes}")
        self._global_set_nodes = global_set_nodes
        self._pods: dict[str, dict[str, Pod]] = {}  # namespace -> name -> participating pod
        self._namespaces: dict[str, Namespace] = {}
        self._policies: dict[str, dict[str, NetworkPolicy]] = {}  # namespace -> name -> policy
        self._templates: dict[PodKey, tuple[_RuleTemplate, ...]] = {}
        self._policy_sets: dict[PodKey, list[str]] = {}
        self.rejected: dict[PodKey, ModelError] = {}
        self._index = MembershipIndex()

        self._pending_pods: dict[PodKey, Pod | None] = {}
        self._pending_namespaces: set[str] = set()
        self._pending_policies: dict[PodKey, NetworkPolicy | None] = {}

        self._endpoint_refs: dict[PodKey, tuple[str, frozenset[str]]] = {}  # node, output set ids
        self._named_dependents: dict[str, set[PodKey]] = {}  # named set id -> endpoints
        self._endpoint_named: dict[PodKey, frozenset[str]] = {}
        self._out_sets: dict[str, tuple[str, int | None]] = {}  # output set id -> (set id, number)
        self._set_outs: dict[str, set[str]] = {}  # set id -> output set ids
        self._set_nodes: dict[str, dict[str, int]] = {}  # output set id -> node -> endpoint refs
        self._placed: dict[str, set[str]] = {}  # output set id -> nodes holding its node key
        self._global_sets: set[str] = set()  # output set ids published under global.
        self._set_values: dict[str, tuple[IPSet, ...]] = {}  # output set id -> its shards as last rendered
        self._stale_values: set[str] = set()  # output set ids whose members changed since rendered
        # output set id -> shards its last render changed (None: all, e.g. the count changed)
        self._fresh_shards: dict[str, set[int] | None] = {}
        self._set_shards: dict[str, int] = {}  # output set id -> shards its keys were written with
        self._emitted: dict[str, PolicyIntent] = {}

    # --- input --------------------------------------------------------------

    def upsert_pod(self, pod: Pod) -> None:
        self._pending_pods[(pod.namespace, pod.name)] = pod

    def delete_pod(self, namespace: str, name: str) -> None:
        self._pending_pods[(namespace, name)] = None

    def upsert_namespace(self, namespace: Namespace) -> None:
        self._namespaces[namespace.name] = namespace
        self._pending_namespaces.add(namespace.name)

    def delete_namespace(self, name: str) -> None:
        self._namespaces.pop(name, None)
        self._pending_namespaces.add(name)

    def upsert_policy(self, policy: NetworkPolicy) -> ModelError | None:
        """Record a policy.  An invalid one is treated as absent; the error is returned (and kept
        in ``rejected`` until the policy is fixed or deleted)."""
        key = (policy.namespace, policy.name)
        try:
            validate_policy(policy)
        except ModelError as exc:
            self.rejected[key] = exc
            self._pending_policies[key] = None
            return exc
        self.rejected.pop(key, None)
        self._pending_policies[key] = policy
        return None

    def delete_policy(self, namespace: str, name: str) -> None:
        self.rejected.pop((namespace, name), None)
        self._pending_policies[(namespace, name)] = None

    @property
    def intents(self) -> dict[str, PolicyIntent]:
        """Every intent key's current value (as of the last flush)."""
        return self._emitted

    # --- compile ------------------------------------------------------------

    def flush(self) -> dict[str, PolicyIntent | None]:
        """Recompute what the recorded changes affect; return changed keys (None: delete)."""
        index = self._index
        member_dirty: set[PodKey] = set()
        endpoint_dirty: set[PodKey] = set()
        sets_dirty: set[str] = set()

        # Namespaces first: pods' namespace-selector memberships depend on them.
        pending_pods, self._pending_pods = self._pending_pods, {}
        namespaces = set(self._pending_namespaces)
        self._pending_namespaces.clear()
        namespaces.update(ns for ns, _ in pending_pods if index.namespace_labels(ns) is None)
        for ns in namespaces:
            if index.set_namespace_labels(ns, namespace_labels(ns, self._namespaces.get(ns))):
                member_dirty.update(index.pods_in(ns))

        pending_policies, self._pending_policies = self._pending_policies, {}
        for key, policy in pending_policies.items():
            self._apply_policy(key, policy, endpoint_dirty)
            # A set may have been dropped and made afresh: render its members again (equal: not written).
            sets_dirty.update(self._policy_sets.get(key, ()))

        for key, pod in pending_pods.items():
            in_ns = self._pods.setdefault(key[0], {})
            old = in_ns.get(key[1])
            if pod is not None and pod_participates(pod):
                in_ns[key[1]] = pod
            else:
                pod = None
                in_ns.pop(key[1], None)
            if old != pod:
                member_dirty.add(key)
                endpoint_dirty.add(key)

        for key in member_dirty:
            changed, renumbered = index.update_pod(key, self._pod(key))
            sets_dirty |= changed
            for sid in renumbered:
                endpoint_dirty |= self._named_dependents.get(sid, set())

        endpoints: dict[str, PolicyIntent | None] = {}
        node_events: dict[str, set[str]] = {}
        for key in endpoint_dirty:
            self._render_endpoint(key, endpoints, node_events)
        members_changed: set[str] = set()
        for sid in sets_dirty:
            members_changed.update(self._set_outs.get(sid, ()))
        set_writes, set_deletes = self._place_sets(members_changed, node_events)
        self._collect_out_sets(node_events.keys())
        # Readers applying keys one at a time see a set before the endpoints that reference it,
        # and lose the endpoints before the sets they referenced.
        out: dict[str, PolicyIntent | None] = set_writes
        out.update((k, v) for k, v in endpoints.items() if v is not None)
        out.update((k, v) for k, v in endpoints.items() if v is None)
        out.update(set_deletes)
        return out

    def _place_sets(
        self, members_changed: set[str], node_events: dict[str, set[str]]
    ) -> tuple[dict[str, PolicyIntent | None], dict[str, PolicyIntent | None]]:
        """Write, move or delete the keys of sets whose members or referencing nodes changed.

        ``node_events``: output set id -> nodes that got their first or lost their last
        reference to it.  Returns (writes, deletes).
        """
        writes: dict[str, PolicyIntent | None] = {}
        deletes: dict[str, PolicyIntent | None] = {}
        for out_id in members_changed | node_events.keys():
            nodes = self._set_nodes.get(out_id) or {}
            changed = out_id in members_changed
            written = self._set_shards.pop(out_id, 0)  # shards each current place holds
            if changed:
                self._stale_values.add(out_id)
            placed = self._placed.pop(out_id, set())
            was_global = out_id in self._global_sets
            shards = 0  # shards each place holds after this flush
            if len(nodes) >= self._global_set_nodes:
                if changed or not was_global:
                    self._global_sets.add(out_id)
                    shards = self._emit_set(out_id, None, written if was_global else 0, writes, deletes)
                else:
                    shards = written
                for node in placed:
                    self._drop_set(out_id, node, written, deletes)
                self._set_shards[out_id] = shards
                continue
            if was_global:
                self._global_sets.discard(out_id)
                self._drop_set(out_id, None, written, deletes)
            # Only the nodes that came or went, unless every copy needs the new members.
            targets = nodes.keys() | placed if changed or was_global else node_events[out_id]
            shards = written if placed and not (changed or was_global) else 0
            for node in targets:
                if node in nodes:
                    shards = self._emit_set(out_id, node, written if node in placed else 0, writes, deletes)
                    placed.add(node)
                else:
                    self._drop_set(out_id, node, written, deletes)
                    placed.discard(node)
            if placed:
                self._placed[out_id] = placed
                self._set_shards[out_id] = shards
        return writes, deletes

    def _emit_set(
        self,
        out_id: str,
        node: str | None,
        written: int,
        writes: dict[str, PolicyIntent | None],
        deletes: dict[str, PolicyIntent | None],
    ) -> int:
        """Write the set's shards under ``node`` (None: global.), which held ``written`` shards.

        Highest shard first, surplus shards deleted after every write: a member
        moving to another shard when the set is re-partitioned is in its new
        shard before it leaves its old one (a reader's union never lacks it).
        Returns the set's shard count.
        """
        values = self._set_value(out_id)
        fresh = self._fresh_shards.get(out_id) if written == len(values) else None
        # A place holding the last render's shards needs only those the render changed.
        for shard in range(len(values) - 1, -1, -1) if fresh is None else sorted(fresh, reverse=True):
            key = global_ipset_key(out_id, shard) if node is None else ipset_key(node, out_id, shard)
            self._emit(key, values[shard], writes)
        for shard in range(len(values), written):
            self._drop(
                global_ipset_key(out_id, shard) if node is None else ipset_key(node, out_id, shard), deletes
            )
        return len(values)

    def _drop_set(
        self, out_id: str, node: str | None, written: int, deletes: dict[str, PolicyIntent | None]
    ) -> None:
        """Delete the ``written`` shards of the set under ``node`` (None: global.)."""
        for shard in range(written):
            self._drop(
                global_ipset_key(out_id, shard) if node is None else ipset_key(node, out_id, shard), deletes
            )

    def _set_value(self, out_id: str) -> tuple[IPSet, ...]:
        """The set's shards, rendered once per membership change and shared by every place holding it.

        A shard whose members did not change keeps its value object (and is not
        written again by a place that holds the previous render).
        """
        values = self._set_values.get(out_id)
        if values is None or out_id in self._stale_values:
            self._stale_values.discard(out_id)
            sid, number = self._out_sets[out_id]
            members = self._index.sets[sid].output(number)
            changed = members.changed_shards()
            shards = members.shards()
            count = len(shards)
            if values is not None and changed is not None and len(values) == count:
                # Only the shards that changed get a new value (a cost of the change, not the set).
                rendered = list(values)
                for i in changed:
                    rendered[i] = IPSet(out_id, shards[i], i, count)
                values = tuple(rendered)
            else:
                values = tuple(IPSet(out_id, shard, i, count) for i, shard in enumerate(shards))
                changed = None
            self._set_values[out_id] = values
            self._fresh_shards[out_id] = changed
        return values

    def _pod(self, key: PodKey) -> Pod | None:
        in_ns = self._pods.get(key[0])
        return None if in_ns is None else in_ns.get(key[1])

    def _apply_policy(self, key: PodKey, policy: NetworkPolicy | None, endpoint_dirty: set[PodKey]) -> None:
        ns, name = key
        in_ns = self._policies.setdefault(ns, {})
        old = in_ns.get(name)
        if old == policy:
            return
        for pol in (old, policy):
            if pol is not None:
                for pod_name, pod in self._pods.get(ns, {}).items():
                    if selector_matches(pol.pod_selector, pod.labels):
                        endpoint_dirty.add((ns, pod_name))
        old_sets = self._policy_sets.pop(key, [])
        if policy is None:
            in_ns.pop(name, None)
            self._templates.pop(key, None)
        else:
            in_ns[name] = policy
            templates = _compile_templates(policy)
            self._templates[key] = templates
            # Reference the new sets before releasing the old: a shared set survives the edit.
            self._policy_sets[key] = [self._index.add_set(d) for t in templates for d in t.set_defs()]
        for sid in old_sets:
            self._index.release_set(sid)

    def _render_endpoint(
        self, key: PodKey, out: dict[str, PolicyIntent | None], node_events: dict[str, set[str]]
    ) -> None:
        pod = self._pod(key)
        value = self._compile_endpoint(pod) if pod is not None and pod.node is not None else None
        old_node, old_refs = self._endpoint_refs.pop(key, ("", frozenset()))
        for named_sid in self._endpoint_named.pop(key, frozenset()):
            deps = self._named_dependents.get(named_sid)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self._named_dependents[named_sid]
        new_node = ""
        new_refs: frozenset[str] = frozenset()
        if value is not None:
            endpoint, new_refs, named = value
            new_node = endpoint.node
            self._endpoint_refs[key] = (new_node, new_refs)
            self._endpoint_named[key] = named
            for named_sid in named:
                self._named_dependents.setdefault(named_sid, set()).add(key)
            self._emit(endpoint_key(endpoint.node, *key), endpoint, out)
        if old_node and (old_node != new_node or value is None):
            ep_key = endpoint_key(old_node, *key)
            if self._emitted.pop(ep_key, None) is not None:
                out[ep_key] = None
        if old_node == new_node:
            dropped, added = old_refs - new_refs, new_refs - old_refs
        else:
            dropped, added = old_refs, new_refs
        for out_id in dropped:
            nodes = self._set_nodes[out_id]
            nodes[old_node] -= 1
            if nodes[old_node] == 0:
                del nodes[old_node]
                node_events.setdefault(out_id, set()).add(old_node)
        for out_id in added:
            nodes = self._set_nodes.setdefault(out_id, {})
            if nodes.get(new_node, 0) == 0:
                node_events.setdefault(out_id, set()).add(new_node)
            nodes[new_node] = nodes.get(new_node, 0) + 1

    def _compile_endpoint(self, pod: Pod) -> tuple[PolicyEndpoint, frozenset[str], frozenset[str]] | None:
        assert pod.node is not None
        selecting = [
            pol
            for _, pol in sorted(self._policies.get(pod.namespace, {}).items())
            if selector_matches(pol.pod_selector, pod.labels)
        ]
        ingress: list[PolicyRule] = []
        egress: list[PolicyRule] = []
        refs: set[str] = set()
        named_deps: set[str] = set()
        for pol in selecting:
            for t in self._templates[(pol.namespace, pol.name)]:
                if t.origin.direction == "ingress":
                    self._ingress_rules(t, pod, ingress, refs)
                else:
                    self._egress_rules(t, egress, refs, named_deps)
        endpoint = PolicyEndpoint(
            namespace=pod.namespace,
            pod=pod.name,
            uid=pod.uid,
            node=pod.node,
            ips=pod.ips,
            ingress_isolated=any("Ingress" in p.policy_types for p in selecting),
            egress_isolated=any("Egress" in p.policy_types for p in selecting),
            ingress=tuple(ingress),
            egress=tuple(egress),
        )
        return endpoint, frozenset(refs), frozenset(named_deps)

    def _ingress_rules(self, t: _RuleTemplate, pod: Pod, rules: list[PolicyRule], refs: set[str]) -> None:
        ports: tuple[PortRange, ...] | None = None
        if not t.all_ports:
            found = set(t.ranges)
            for name, proto in t.named:
                number = named_port_number(pod, name, proto)
                if number is not None:
                    found.add(PortRange(proto, number, number))
            if not found:
                return  # no listed port exists on this pod: the rule allows nothing here
            ports = tuple(sorted(found, key=lambda r: (r.protocol, r.first, r.last)))
        set_id = self._out_set(t.peers, None, refs)
        rules.append(PolicyRule(origin=t.origin, ipset=set_id, ports=ports))

    def _egress_rules(
        self, t: _RuleTemplate, rules: list[PolicyRule], refs: set[str], named_deps: set[str]
    ) -> None:
        if t.all_ports or t.ranges:
            ports = None if t.all_ports else t.ranges
            rules.append(PolicyRule(origin=t.origin, ipset=self._out_set(t.peers, None, refs), ports=ports))
        for (_, proto), definition in zip(t.named, t.named_sets, strict=True):
            sid = set_id_of(definition)
            named_deps.add(sid)
            for number in self._index.sets[sid].numbers():
                rules.append(
                    PolicyRule(
                        origin=t.origin,
                        ipset=self._out_set(definition, number, refs),
                        ports=(PortRange(proto, number, number),),
                    )
                )

    def _out_set(self, definition: SetDef | None, number: int | None, refs: set[str]) -> str | None:
        if definition is None:
            return None
        sid = set_id_of(definition)
        out_id = sid if number is None else set_id_of(definition, number)
        if out_id not in self._out_sets:
            self._out_sets[out_id] = (sid, number)
            self._set_outs.setdefault(sid, set()).add(out_id)
        refs.add(out_id)
        return out_id

    def _collect_out_sets(self, candidates: Iterable[str]) -> None:
        """Forget output sets no endpoint references any more (only those whose references changed:
        every output set is referenced as it is made, so it lost them through ``node_events``)."""
        for out_id in candidates:
            if self._set_nodes.get(out_id):
                continue
            self._set_nodes.pop(out_id, None)
            entry = self._out_sets.pop(out_id, None)
            if entry is None:
                continue
            sid = entry[0]
            self._set_values.pop(out_id, None)
            self._stale_values.discard(out_id)
            self._fresh_shards.pop(out_id, None)
            outs = self._set_outs.get(sid)
            if outs is not None:
                outs.discard(out_id)
                if not outs:
                    del self._set_outs[sid]

    def _emit(self, key: str, value: PolicyIntent, out: dict[str, PolicyIntent | None]) -> None:
        if self._emitted.get(key) != value:
            self._emitted[key] = value
            out[key] = value

    def _drop(self, key: str, out: dict[str, PolicyIntent | None]) -> None:
        if self._emitted.pop(key, None) is not None:
            out[key] = None
