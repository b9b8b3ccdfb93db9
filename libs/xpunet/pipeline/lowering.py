"""Lowering: one node's intents → the table entries of the xpunet pipeline.  Pure.

Input is what a datapath holds for its node (policy endpoints and IP sets, lb
service ports with this node's overrides and addresses, conntrack timeouts,
route intents of every node) plus the vNIC port of each local pod, chosen by
the datapath.  Output is the full desired entry set, deterministic for equal
input, with everything that could not be lowered reported by name:

* a table whose entries exceed its declared size is reported with both counts
  (entries are *not* truncated: the writer decides, the target will refuse);
* more IP sets than membership bits: the rules of the sets without a bit are
  left out (fail closed) and reported;
* an intent that cannot be lowered (a bad address, a backend of the wrong
  family) adds nothing and is reported;
* conflicting entries (two services on one frontend) keep the first in group
  order and report the rest.

The lowering is made of *groups*, one per intent (each endpoint, each
endpoint's rules, each service port, each other node's routes, the node's
addresses, its conntrack timeouts, its own ports) plus the IP-set
classification of each direction, lowered by the ``lower_*`` functions here.
:func:`lower` runs every group in :data:`canonical order <PHASE>` and folds the
results; it is the reference that :class:`xpunet.pipeline.incremental.NodeLowering`
(which re-lowers only the groups a change touches) must equal.

Numbers shared between groups come from an :class:`Allocation`: set bits and
next-hop ids.  Without one, :func:`lower` allocates afresh (crc32 of the name,
linear probing in name order, :func:`hashed_ids`); the incremental lowering
keeps its assignments stable across changes and passes them here to compare.
Endpoint ids are the pods' vNIC ports and backend groups derive from the lb's
stable service-port ids, so neither needs an allocation.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xpunet.ir.keys import node_prefix
from xpunet.ir.lb import ConntrackTimeouts, LbNodeAddresses, LbNodeOverride, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint, union_of_shards
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.pipeline.groups import (
    NO_UPLINK,
    SIDES,
    GroupOut,
    entry_order,
    fold,
    lower_acl,
    lower_classification,
    lower_conntrack,
    lower_endpoint,
    lower_host_routes,
    lower_node_addresses,
    lower_node_ports,
    lower_route,
    lower_service,
    next_hop_names,
    node_addresses,
    referenced_sets,
    set_problems,
)
from xpunet.pipeline.groups import PROTO_NUMBERS as PROTO_NUMBERS
from xpunet.pipeline.groups import NodePorts as NodePorts
from xpunet.pipeline.groups import backend_groups as backend_groups
from xpunet.pipeline.groups import conntrack_timeouts as conntrack_timeouts
from xpunet.pipeline.schema import SCHEMA, SET_BITS, Schema

NEXT_HOP_SPACE = 1 << 24


# Canonical group order (the first element of every group's order key).  Conflicts between
# groups keep the entry of the earlier group; problems are reported in this order.
PHASE_PORTS = 0  # the host and uplink ports
PHASE_ENDPOINT = 1  # per endpoint (namespace, pod): port, anti-spoofing, host route
PHASE_SET = 2  # per IP set id: problems only (missing, bad member)
PHASE_CLASSIFY = 3  # per direction (0 src, 1 dst): the IP-set classification
PHASE_ACL = 4  # per endpoint (namespace, pod): its policy rules
PHASE_ADDRESSES = 5  # the node's addresses (NodePort)
PHASE_SERVICE = 6  # per service port (id, then input order)
PHASE_CONNTRACK = 7
PHASE_HOST_ROUTES = 8  # the node's own addresses → host
PHASE_NO_UPLINK = 9  # problem only: routes to other nodes but no uplink
PHASE_ROUTE = 10  # per other node


@dataclass(frozen=True, slots=True)
class NodeIntents:
    """Everything lowered for one node, as decoded from the intent bucket."""

    node: str
    endpoints: tuple[PolicyEndpoint, ...] = ()
    ip_sets: tuple[IPSet, ...] = ()
    services: tuple[LbServicePort, ...] = ()
    overrides: tuple[LbNodeOverride, ...] = ()
    addresses: LbNodeAddresses | None = None
    conntrack: ConntrackTimeouts | None = None
    routes: tuple[NodeRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class Allocation:
    """Numbers shared between groups: set membership bits per direction, next-hop ids.

    ``next_hops`` is keyed ``"<node>/v4"`` and ``"<node>/v6"``.  A name without
    a number here gets none (its rules are left out, its routes reported).
    """

    src_set_bits: Mapping[str, int] = field(default_factory=dict)
    dst_set_bits: Mapping[str, int] = field(default_factory=dict)
    next_hops: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TableOverflow:
    table: str
    needed: int
    size: int

    def __str__(self) -> str:
        return f"{self.table}: {self.needed} entries needed, {self.size} declared"


@dataclass(frozen=True, slots=True)
class Lowered:
    entries: tuple[TableEntry, ...]
    overflow: tuple[TableOverflow, ...] = ()
    problems: tuple[str, ...] = ()
    src_set_bits: Mapping[str, int] = field(default_factory=dict)  # ingress peers: set id → bit
    dst_set_bits: Mapping[str, int] = field(default_factory=dict)  # egress peers: set id → bit
    next_hops: Mapping[int, str] = field(default_factory=dict)  # next hop id → node name
    endpoints: Mapping[int, str] = field(default_factory=dict)  # endpoint id → "namespace/pod"

    def by_table(self) -> dict[str, list[TableEntry]]:
        out: dict[str, list[TableEntry]] = {}
        for e in self.entries:
            out.setdefault(e.table, []).append(e)
        return out


def node_intents_from_kv(node: str, values: Mapping[str, object]) -> NodeIntents:
    """Pick one node's intents out of decoded intent-bucket values (key → value)."""
    mine = node_prefix(node)
    relevant = {k: v for k, v in values.items() if k.startswith((mine, "global."))}
    by_type: dict[type, list[object]] = {}
    for k in sorted(relevant):
        by_type.setdefault(type(relevant[k]), []).append(relevant[k])

    def of(t: type) -> list[object]:
        return by_type.get(t, [])

    addrs = [a for a in of(LbNodeAddresses) if isinstance(a, LbNodeAddresses) and a.node == node]
    ct = [c for c in of(ConntrackTimeouts) if isinstance(c, ConntrackTimeouts)]
    return NodeIntents(
        node=node,
        endpoints=tuple(e for e in of(PolicyEndpoint) if isinstance(e, PolicyEndpoint) and e.node == node),
        ip_sets=tuple(s for s in of(IPSet) if isinstance(s, IPSet)),
        services=tuple(s for s in of(LbServicePort) if isinstance(s, LbServicePort)),
        overrides=tuple(o for o in of(LbNodeOverride) if isinstance(o, LbNodeOverride)),
        addresses=addrs[0] if addrs else None,
        conntrack=ct[0] if ct else None,
        routes=tuple(r for r in of(NodeRoute) if isinstance(r, NodeRoute)),
    )


def probe_start(name: str, space: int) -> int:
    """Where the search for a free number of ``name`` starts (crc32 modulo ``space``)."""
    return zlib.crc32(name.encode()) % space


def hashed_ids(names: Iterable[str], space: int, *, start: int = 0) -> dict[str, int]:
    """Stable small numbers for names: crc32 modulo ``space``, linear probing in name order."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for name in sorted(set(names)):
        if len(taken) >= space:
            break
        n = probe_start(name, space)
        while n + start in taken:
            n = (n + 1) % space
        taken.add(n + start)
        out[name] = n + start
    return out


# --- the reference: every group, in order ------------------------------------------------------


def fresh_allocation(intents: NodeIntents, ports: NodePorts) -> Allocation:
    """Numbers as a lowering from scratch assigns them (name order, linear probing)."""
    programmed = [ep for ep in intents.endpoints if f"{ep.namespace}/{ep.pod}" in ports.endpoints]
    src = {s for ep in programmed for s in referenced_sets(ep, "ingress")}
    dst = {s for ep in programmed for s in referenced_sets(ep, "egress")}
    others = [r for r in intents.routes if r.node != intents.node]
    return Allocation(
        hashed_ids(src, SET_BITS),
        hashed_ids(dst, SET_BITS),
        hashed_ids((n for r in others for n in next_hop_names(r)), NEXT_HOP_SPACE, start=1),
    )


def lower(
    intents: NodeIntents,
    ports: NodePorts,
    *,
    schema: Schema = SCHEMA,
    allocation: Allocation | None = None,
) -> Lowered:
    """The desired entries of one node (every group, folded in canonical order)."""
    alloc = allocation if allocation is not None else fresh_allocation(intents, ports)
    groups: list[tuple[tuple[object, ...], GroupOut]] = [((PHASE_PORTS,), lower_node_ports(ports, schema))]
    endpoints: dict[int, str] = {}
    eps = sorted(enumerate(intents.endpoints), key=lambda ie: (ie[1].namespace, ie[1].pod, ie[0]))
    programmed: list[tuple[int, PolicyEndpoint, int]] = []
    for i, ep in eps:
        ref = f"{ep.namespace}/{ep.pod}"
        port = ports.endpoints.get(ref)
        groups.append(((PHASE_ENDPOINT, ep.namespace, ep.pod, i), lower_endpoint(ep, port, schema)))
        if port is not None:
            endpoints[port] = ref
            programmed.append((i, ep, port))
    # Policy: sets referenced by programmed endpoints, their bits, their classification, the rules.
    referenced: list[set[str]] = [set(), set()]
    for _, ep, _ in programmed:
        referenced[0] |= referenced_sets(ep, "ingress")
        referenced[1] |= referenced_sets(ep, "egress")
    shards: dict[str, list[IPSet]] = {}
    for s in intents.ip_sets:
        shards.setdefault(s.id, []).append(s)
    sets = {  # a set is the union of its shards
        set_id: held[0] if len(held) == 1 else union_of_shards(set_id, sorted(held, key=lambda v: v.shard))
        for set_id, held in shards.items()
    }
    for set_id in sorted(referenced[0] | referenced[1] | sets.keys()):
        g = GroupOut(schema)
        g.problems += set_problems(set_id, sets.get(set_id), set_id in referenced[0] | referenced[1])
        groups.append(((PHASE_SET, set_id), g))
    bits = [
        {s: b for s, b in alloc.src_set_bits.items() if s in referenced[0]},
        {s: b for s, b in alloc.dst_set_bits.items() if s in referenced[1]},
    ]
    for i, (side, _, _) in enumerate(SIDES):
        present = [sets[s] for s in sorted(bits[i]) if s in sets]
        groups.append(((PHASE_CLASSIFY, i), lower_classification(side, present, bits[i], schema)))
    for i, ep, port in programmed:
        groups.append(((PHASE_ACL, ep.namespace, ep.pod, i), lower_acl(ep, port, bits[0], bits[1], schema)))
    # Services.
    groups.append(
        (
            (PHASE_ADDRESSES,),
            lower_node_addresses(node_addresses(intents.node, intents.addresses, intents.routes), schema),
        )
    )
    overrides = {o.id: o for o in intents.overrides}
    for i, svc in sorted(enumerate(intents.services), key=lambda iv: (iv[1].id, iv[0])):
        groups.append(((PHASE_SERVICE, svc.id, i), lower_service(svc, overrides.get(svc.id), schema)))
    groups.append(((PHASE_CONNTRACK,), lower_conntrack(intents.conntrack, schema)))
    # Routes.
    me = next((r for r in intents.routes if r.node == intents.node), None)
    groups.append(((PHASE_HOST_ROUTES,), lower_host_routes(me, ports.host, schema)))
    others = sorted(
        ((i, r) for i, r in enumerate(intents.routes) if r.node != intents.node),
        key=lambda ir: (ir[1].node, ir[0]),
    )
    next_hops: dict[int, str] = {}
    if others and not ports.uplinks:
        g = GroupOut(schema)
        g.problems.append(NO_UPLINK)
        groups.append(((PHASE_NO_UPLINK,), g))
    elif others:
        for i, r in others:
            g, used = lower_route(r, alloc.next_hops, ports.uplinks[0], schema)
            next_hops.update(used)
            groups.append(((PHASE_ROUTE, r.node, i), g))
    return _fold_groups(groups, schema, referenced, bits, next_hops, endpoints)


def _fold_groups(
    groups: list[tuple[tuple[object, ...], GroupOut]],
    schema: Schema,
    referenced: list[set[str]],
    bits: list[dict[str, int]],
    next_hops: dict[int, str],
    endpoints: dict[int, str],
) -> Lowered:
    first: dict[EntryKey, TableEntry] = {}
    more: dict[EntryKey, list[TableEntry]] = {}  # keys added more than once, every add in order
    problems: list[str] = []
    for _, g in groups:  # already in canonical order
        problems += g.problems
        for key, e in g.adds.items():
            if key in first or key in g.extra:
                more.setdefault(key, [first[key]] if key in first else []).extend(g.sequence(key))
            first.setdefault(key, e)
    conflicts: dict[EntryKey, list[str]] = {}
    for key, seq in more.items():
        found: list[str] = []
        first[key] = fold(seq, found)
        if found:
            conflicts[key] = found
    kept = list(first.values())
    kept.sort(key=entry_order)
    for e in kept:
        problems += conflicts.get(e.key, ())
    return Lowered(
        tuple(kept),
        tuple(overflows(table_counts(kept), schema, len(referenced[0]), len(referenced[1]))),
        tuple(problems),
        bits[0],
        bits[1],
        next_hops,
        endpoints,
    )


def table_counts(entries: Iterable[TableEntry]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.table] = counts.get(e.table, 0) + 1
    return counts


def overflows(counts: Mapping[str, int], schema: Schema, src_sets: int, dst_sets: int) -> list[TableOverflow]:
    """Tables over their declared size, and more referenced sets than membership bits."""
    out = [
        TableOverflow(t.alias, counts[t.name], t.size)
        for t in schema.tables
        if counts.get(t.name, 0) > t.size
    ]
    for label, want in (("ip set bits (ingress peers)", src_sets), ("ip set bits (egress peers)", dst_sets)):
        if want > SET_BITS:
            out.append(TableOverflow(label, want, SET_BITS))
    return out
