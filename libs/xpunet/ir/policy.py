"""Policy intents: what the policy compiler publishes per node and the datapath enforces.

Two kinds of values live in the ``xpunet-intent`` bucket under a node's prefix:

* ``node.<node>.policy.ep.<namespace>.<pod>`` → :class:`PolicyEndpoint`, one per
  *local endpoint*: a pod scheduled on ``<node>``, not ``hostNetwork``, not in a
  terminal phase (``Succeeded``/``Failed``), with at least one IP.
* ``node.<node>.policy.ipset.<id>.<shard>`` → :class:`IPSet`, one shard of
  the members of an IP set that at least one endpoint on ``<node>``
  references, while endpoints on fewer than the compiler's global threshold of
  nodes (default 16) reference it.  Such a *narrow* set reaches only the nodes
  that need it.
* ``global.policy.ipset.<id>.<shard>`` → :class:`IPSet`, a shard of a *wide*
  set: referenced from at least that many nodes, it is written once for every
  node instead of once per node (a membership change is one key write
  whatever the cluster size; every datapath receives it, including those that
  do not reference it).

A set's members are split into ``shards`` (a power of two that grows with the
member count: about 32-64 members per shard) by a hash of each CIDR, so a
member joining or leaving rewrites one small value, not the whole set, and no
value outgrows the bus's message limit.  **The set is the union of every
shard value with its id that a datapath holds**, under its node prefix and
under ``global.`` alike.  The compiler orders its writes so that this union
only ever holds members of the set before or after a flush: when a set moves
between places or is re-partitioned, keys gaining members are written before
keys losing them, and surplus keys are deleted last.

Semantics the datapath must implement (``xpunet.policy.reference`` is the
executable definition; ``evaluate_intents`` there evaluates these values):

* A packet from endpoint E (source IP in ``E.ips``) is allowed on the egress
  side if ``not E.egress_isolated`` or some rule in ``E.egress`` matches its
  destination IP, protocol and destination port.  A packet to endpoint E is
  allowed on the ingress side if ``not E.ingress_isolated`` or some rule in
  ``E.ingress`` matches its source IP, protocol and destination port, or the
  packet comes from E's own node (host traffic; the API always allows it, the
  datapath knows its host addresses).  A pod-to-pod packet needs both sides.
* Rules are allow-only and additive: order carries no meaning (it is
  deterministic so equal inputs give byte-equal values).
* A rule matches when the peer IP is in the set ``ipset`` (``None``: any IP)
  and (``ports is None``: any protocol and port) the protocol and destination
  port fall in one of ``ports``.  ``ports`` is never an empty tuple: a rule
  that can match no port is omitted.
* Stateful: replies of an allowed connection are allowed in both directions
  without a rule; that is the datapath's connection tracking.
* IP set members are CIDRs of both families (pod IPs as /32 or /128, ipBlocks
  with ``except`` expanded into the exact CIDR difference).  Members may
  overlap; the set is their union.  An empty set matches nothing.
* Per-rule counters are keyed by :class:`RuleOrigin` (policy, direction, index).

Set ids are content hashes of the set's *definition* (its peers and, for
egress named ports, the port name/protocol/number), not of its members, so two
policies with identical peers share one set and one id.

Compatibility: fields are only ever added (with defaults); ``SCHEMA_VERSION``
is bumped on additions; decoders ignore unknown fields.  Changes are noted in
docs/intents.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from xpunet.ir.keys import node_prefix as _node_prefix
from xpunet.model.objects import Protocol

SCHEMA_VERSION = 2  # 2: IPSet.shard/shards, keys ipset.<id>.<shard> (a set is the union of its shards)

POLICY_EP_SCHEMA = "intent.policy.ep"
POLICY_IPSET_SCHEMA = "intent.policy.ipset"
POLICY_REJECTION_SCHEMA = "status.policy.rejected"
REJECTED_PREFIX = "policy.rejected."
GLOBAL_IPSET_PREFIX = "global.policy.ipset."

Direction = Literal["ingress", "egress"]


def node_prefix(node: str) -> str:
    """The prefix of every policy key of one node (a datapath watches ``node.<node>.``)."""
    return _node_prefix(node) + "policy."


def endpoint_key(node: str, namespace: str, pod: str) -> str:
    return _node_prefix(node) + f"policy.ep.{namespace}.{pod}"


def ipset_key(node: str, set_id: str, shard: int = 0) -> str:
    """Where shard ``shard`` of a set referenced from few nodes lives, per node."""
    return _node_prefix(node) + f"policy.ipset.{set_id}.{shard}"


def global_ipset_key(set_id: str, shard: int = 0) -> str:
    """Where shard ``shard`` of a set referenced from many nodes lives (every datapath reads ``global.``)."""
    return f"{GLOBAL_IPSET_PREFIX}{set_id}.{shard}"


def rejection_key(namespace: str, policy: str) -> str:
    """``xpunet-status`` key of the report on a policy the compiler ignores."""
    return f"{REJECTED_PREFIX}{namespace}.{policy}"


def is_policy_intent_key(key: str) -> bool:
    """Keys the policy service owns in ``xpunet-intent`` (node names may contain dots)."""
    if key.startswith(GLOBAL_IPSET_PREFIX):
        return True
    return key.startswith("node.") and (".policy.ep." in key or ".policy.ipset." in key)


@dataclass(frozen=True, slots=True)
class PortRange:
    """Destination ports ``first..last`` (inclusive) of one protocol.

    ``0..65535`` means every port of the protocol (a NetworkPolicyPort without
    ``port``).
    """

    protocol: Protocol
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class RuleOrigin:
    """Where a rule came from: ``spec.<direction>[index]`` of policy ``namespace/policy``.

    One NetworkPolicy rule may compile into several intent rules (egress named
    ports resolving to different numbers); they share the origin and so the
    per-rule counter.
    """

    namespace: str
    policy: str
    direction: Direction
    index: int


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """Allow traffic whose peer IP is in ``ipset`` and whose protocol/port is in ``ports``.

    ``ipset`` None: any peer.  ``ports`` None: any protocol and port.
    """

    origin: RuleOrigin
    ipset: str | None = None
    ports: tuple[PortRange, ...] | None = None


@dataclass(frozen=True, slots=True)
class PolicyEndpoint:
    """The policy state of one local endpoint (a pod on this node)."""

    namespace: str
    pod: str
    uid: str
    node: str
    ips: tuple[str, ...]  # the pod's IPs, both families, in API order
    ingress_isolated: bool = False
    egress_isolated: bool = False
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True, slots=True)
class IPSet:
    """Shard ``shard`` of ``shards`` of set ``id``: CIDR strings, IPv4 before IPv6, sorted within a family.

    The set is the union of its shards' members (see the module docstring).
    """

    id: str
    members: tuple[str, ...] = ()
    shard: int = 0
    shards: int = 1


PolicyIntent = PolicyEndpoint | IPSet


def union_of_shards(set_id: str, shards: Iterable[IPSet]) -> IPSet:
    """Set ``set_id`` as a reader holding these shard values sees it: their members' union (in order)."""
    members = dict.fromkeys(member for value in shards for member in value.members)
    return IPSet(set_id, tuple(members))


@dataclass(frozen=True, slots=True)
class PolicyRejection:
    """Why policy ``namespace/policy`` is ignored (``xpunet-status`` key ``policy.rejected.<ns>.<name>``)."""

    namespace: str
    policy: str
    field: str
    problem: str


def _register_schemas() -> None:
    # Registered here so anyone importing the schema can decode_object() policy values.
    from xpunet.wire import register

    register(POLICY_EP_SCHEMA, PolicyEndpoint)
    register(POLICY_IPSET_SCHEMA, IPSet)
    register(POLICY_REJECTION_SCHEMA, PolicyRejection)


_register_schemas()
