"""The per-intent groups of the lowering: each function lowers one intent into its entries.  Pure.

One group per intent (each endpoint, each endpoint's rules, each service
port, each other node's routes, the node's addresses, its conntrack timeouts,
its own ports) plus the IP-set classification of each direction.  A group
depends only on its intent and the numbers it is given (ports, set bits,
next-hop ids), so :func:`xpunet.pipeline.lowering.lower` (the reference: every
group, folded in canonical order) and
:class:`xpunet.pipeline.incremental.NodeLowering` (only the groups a change
touches) share them.  Entries are built through checked layouts
(:func:`~xpunet.pipeline.entries.entry_layout`): names once, values per entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from xpunet.ir.lb import BackendSet, ConntrackTimeouts, LbNodeAddresses, LbNodeOverride, LbServicePort
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.entries import (
    EntryError,
    EntryKey,
    Exact,
    FieldMatch,
    Lpm,
    Range,
    TableEntry,
    Ternary,
    cidr_lpm,
    entry_layout,
    family_suffix,
    ip_int,
    new_entry,
)
from xpunet.pipeline.schema import (
    CT_CLOSING,
    CT_ESTABLISHED,
    CT_NEW,
    FLAG_AFFINITY,
    FLAG_LOCAL_PODS_USE_INTERNAL,
    FLAG_SNAT_TO_NODE,
    SCHEMA,
    Schema,
)

PROTO_NUMBERS: Mapping[str, int] = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPv6": 58, "SCTP": 132}
PRIORITY_RULE = 10  # every policy rule: rules are allow-only, so their order carries no meaning
PRIORITY_OPEN = 1  # the allow-all of a direction no policy isolates

SIDES: tuple[tuple[str, str, str], ...] = (("src", "ingress", "src_sets"), ("dst", "egress", "dst_sets"))


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The node's ports as the datapath allocated them."""

    endpoints: Mapping[str, int] = field(default_factory=dict)  # "namespace/pod" → vNIC port id
    host: int | None = None  # the node's own network stack
    uplinks: tuple[int, ...] = ()  # towards the fabric; the first one carries traffic to other nodes


# --- groups -------------------------------------------------------------------------------


class GroupOut:
    """The entries one group adds, in order, and the problems it found.

    ``adds`` holds the first entry a group added on each key; ``extra`` the
    later ones on the same key (rare: two rules of one pod allowing the same
    traffic), so folding groups in order sees every add in the same order as
    one sequential pass would.

    A service's Maglev buckets are also kept in ``bulk`` (backend group →
    entries in bucket order).  Re-lowered with its previous output, a service
    whose groups keep their sizes reuses the unchanged bucket entries and
    copies the previous ``adds``; ``delta`` then names the previous output and
    the only keys that may differ, so merging it costs O(changed buckets).
    """

    __slots__ = ("adds", "bulk", "delta", "extra", "problems", "schema", "small")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.adds: dict[EntryKey, TableEntry] = {}
        self.extra: dict[EntryKey, list[TableEntry]] = {}
        self.problems: list[str] = []
        self.bulk: dict[int, list[TableEntry]] = {}
        self.small: list[EntryKey] = []  # keys of the adds not in bulk
        self.delta: tuple[GroupOut, set[EntryKey]] | None = None

    def put(self, e: TableEntry) -> None:
        key = e.key
        if key in self.adds:
            self.extra.setdefault(key, []).append(e)
        else:
            self.adds[key] = e

    def add(
        self,
        table: str,
        match: Mapping[str, FieldMatch],
        action: str,
        params: Mapping[str, int] | None = None,
        *,
        priority: int = 0,
        origin: str,
    ) -> None:
        params = params or {}
        try:
            layout = entry_layout(table, tuple(match), action, tuple(params), schema=self.schema)
            e = layout.make(match, params, priority=priority, origin=origin)
        except EntryError as exc:
            self.problems.append(f"{origin}: {exc}; left out")
            return
        self.put(e)

    def sequence(self, key: EntryKey) -> list[TableEntry]:
        """Every entry this group added on ``key``, in order."""
        first = self.adds[key]
        more = self.extra.get(key)
        return [first, *more] if more else [first]


def fold(entries: Sequence[TableEntry], conflicts: list[str]) -> TableEntry:
    """The entry kept on one key after these adds, in order: the first wins, equal ones merge origins."""
    kept = entries[0]
    for e in entries[1:]:
        if (kept.action, kept.params) != (e.action, e.params):
            conflicts.append(
                f"{e.alias}: {e.origin} conflicts with {kept.origin} on the same key; kept the first"
            )
            continue
        parts = kept.origin.split(" + ")
        new = [p for p in e.origin.split(" + ") if p not in parts]
        if new:
            kept = TableEntry(
                kept.table, kept.match, kept.action, kept.params, kept.priority, " + ".join([*parts, *new])
            )
    return kept


def entry_order(e: TableEntry) -> tuple[str, str, int]:
    """The order of :attr:`Lowered.entries` (and of conflict reports)."""
    return (e.table, repr(e.match), e.priority)


# --- ports, endpoints ----------------------------------------------------------------


def lower_node_ports(ports: NodePorts, schema: Schema = SCHEMA) -> GroupOut:
    g = GroupOut(schema)
    if ports.host is not None:
        g.add("port_info", {"in_port": Exact(ports.host)}, "from_host", origin="host")
    for up in ports.uplinks:
        g.add("port_info", {"in_port": Exact(up)}, "from_uplink", origin="uplink")
    return g


def lower_endpoint(ep: PolicyEndpoint, port: int | None, schema: Schema = SCHEMA) -> GroupOut:
    """A local pod's port, anti-spoofing and host routes."""
    g = GroupOut(schema)
    ref = f"{ep.namespace}/{ep.pod}"
    if port is None:
        g.problems.append(f"endpoint {ref}: no vNIC port allocated; not programmed")
        return g
    origin = f"endpoint {ref}"
    g.add("port_info", {"in_port": Exact(port)}, "from_endpoint", {"endpoint_id": port}, origin=origin)
    for addr in ep.ips:
        try:
            version, value = ip_int(addr)
        except ValueError as exc:
            g.problems.append(f"endpoint {ref}: {exc}")
            continue
        fam = family_suffix(version)
        g.add(
            f"endpoint_by_ip_{fam}",
            {"src_addr": Exact(value)},
            "source_endpoint",
            {"endpoint_id": port},
            origin=origin,
        )
        g.add(
            f"fib_{fam}",
            {"dst_addr": Lpm(value, 32 if version == 4 else 128)},
            "deliver_local",
            {"port": port, "endpoint_id": port},
            origin=origin,
        )
    return g


# --- policy ------------------------------------------------------------------------------


def referenced_sets(ep: PolicyEndpoint, direction: str) -> set[str]:
    """The IP sets the rules of one direction (``ingress``/``egress``) of an endpoint refer to."""
    rules = ep.ingress if direction == "ingress" else ep.egress
    return {r.ipset for r in rules if r.ipset is not None}


def set_prefixes(s: IPSet) -> dict[int, list[Lpm]]:
    """The members of a set as LPM prefixes per IP version; ValueError names a bad member."""
    out: dict[int, list[Lpm]] = {4: [], 6: []}
    for cidr in s.members:
        version, lpm = cidr_lpm(cidr)
        out[version].append(lpm)
    return out


@lru_cache(maxsize=1 << 16)
def member_prefix(cidr: str) -> tuple[int, Lpm] | None:
    """A set member as (IP version, LPM prefix); None when it is not a CIDR (cached: shards are
    parsed again whenever they change, and most of their members did not)."""
    try:
        return cidr_lpm(cidr)
    except ValueError:
        return None


def set_problems(set_id: str, s: IPSet | None, referenced: bool) -> list[str]:
    """Problems of one IP set: referenced but missing, or members that are not CIDRs (the least
    of them is named, so the report does not depend on the order of the members or shards)."""
    if not referenced:
        return []
    if s is None:
        return [f"ip set {set_id}: referenced but not present; its rules match nothing"]
    bad = min((m for m in s.members if member_prefix(m) is None), default=None)
    return [] if bad is None else [bad_member_problem(set_id, bad)]


def bad_member_problem(set_id: str, member: str) -> str:
    return f"ip set {set_id}: not a CIDR: {member!r}; its rules match nothing"


def classify(sets: Iterable[IPSet], bits: Mapping[str, int]) -> dict[int, dict[Lpm, int]]:
    """Per IP version, LPM prefix → membership bits of every set having a member that covers it.

    LPM picks the longest matching prefix, so an address whose longest match is
    P must carry the bits of every set with a member ⊇ P.  Sets without a bit
    or with a bad member are left out.
    """
    members: dict[int, dict[Lpm, int]] = {4: {}, 6: {}}
    for s in sets:
        bit = bits.get(s.id)
        if bit is None:
            continue
        try:
            prefixes = set_prefixes(s)
        except ValueError:
            continue  # reported by set_problems
        for version, lpms in prefixes.items():
            for lpm in lpms:
                members[version][lpm] = members[version].get(lpm, 0) | (1 << bit)
    out: dict[int, dict[Lpm, int]] = {4: {}, 6: {}}
    for version, by_prefix in members.items():
        width = 32 if version == 4 else 128
        for p in by_prefix:
            out[version][p] = covering_bits(by_prefix, p, width)
    return out


def covering_bits(direct: Mapping[Lpm, int], p: Lpm, width: int) -> int:
    """The bits of every prefix in ``direct`` that covers ``p`` (``p`` included)."""
    acc = 0
    for length in range(p.prefix_len + 1):
        mask = ((1 << length) - 1) << (width - length)
        acc |= direct.get(Lpm(p.value & mask, length), 0)
    return acc


def classification_entry(
    side: str, version: int, lpm: Lpm, members: int, schema: Schema = SCHEMA
) -> TableEntry:
    layout = entry_layout(
        f"ip_set_{side}_{family_suffix(version)}",
        (f"{side}_addr",),
        f"set_{side}_sets",
        ("sets",),
        schema=schema,
    )
    return layout.make({f"{side}_addr": lpm}, {"sets": members}, origin=f"ip sets ({side})")


def lower_classification(
    side: str, sets: Iterable[IPSet], bits: Mapping[str, int], schema: Schema = SCHEMA
) -> GroupOut:
    g = GroupOut(schema)
    for version, by_prefix in classify(sets, bits).items():
        for lpm, members in by_prefix.items():
            g.put(classification_entry(side, version, lpm, members, schema))
    return g


def lower_acl(
    ep: PolicyEndpoint,
    port: int,
    src_bits: Mapping[str, int],
    dst_bits: Mapping[str, int],
    schema: Schema = SCHEMA,
) -> GroupOut:
    """One programmed endpoint's policy: allow-all per open direction, its rules per isolated one."""
    g = GroupOut(schema)
    ref = f"{ep.namespace}/{ep.pod}"
    for direction, isolated, rules, peer, bits in (
        ("ingress", ep.ingress_isolated, ep.ingress, "src_sets", src_bits),
        ("egress", ep.egress_isolated, ep.egress, "dst_sets", dst_bits),
    ):
        table = f"acl_{direction}"
        if not isolated:
            g.add(
                table,
                {"endpoint_id": Exact(port)},
                "acl_allow",
                priority=PRIORITY_OPEN,
                origin=f"{ref} {direction} not isolated",
            )
            continue
        for rule in rules:
            _lower_rule(g, table, port, peer, rule, bits, ref)
    return g


def _lower_rule(
    g: GroupOut, table: str, port: int, peer: str, rule: PolicyRule, bits: Mapping[str, int], ref: str
) -> None:
    o = rule.origin
    origin = f"{o.namespace}/{o.policy} {o.direction}[{o.index}] for {ref}"
    match: dict[str, FieldMatch] = {"endpoint_id": Exact(port)}
    if rule.ipset is not None:
        bit = bits.get(rule.ipset)
        if bit is None:
            g.problems.append(
                f"{origin}: ip set {rule.ipset} has no membership bit (too many sets); rule left out"
            )
            return
        match[peer] = Ternary(1 << bit, 1 << bit)
    if rule.ports is None:
        g.add(table, match, "acl_allow", priority=PRIORITY_RULE, origin=origin)
        return
    for pr in rule.ports:
        proto = PROTO_NUMBERS.get(pr.protocol)
        if proto is None:
            g.problems.append(f"{origin}: unknown protocol {pr.protocol!r}; port rule left out")
            continue
        m = dict(match)
        m["protocol"] = Ternary(proto, 0xFF)
        m["dst_port"] = Range(pr.first, pr.last)
        g.add(table, m, "acl_allow", priority=PRIORITY_RULE, origin=origin)


# --- services ------------------------------------------------------------------------------


def backend_groups(service_port_id: int) -> tuple[int, int]:
    """(internal, external) backend group numbers of a service port."""
    return service_port_id << 1, (service_port_id << 1) | 1


def node_addresses(node: str, addresses: LbNodeAddresses | None, routes: Iterable[NodeRoute]) -> list[str]:
    """The node's own addresses: from its lb address intent and its route intents, sorted."""
    out: set[str] = set(addresses.addresses if addresses else ())
    for r in routes:
        if r.node == node:
            out.update(r.addresses)
    return sorted(out)


def lower_node_addresses(addresses: Iterable[str], schema: Schema = SCHEMA) -> GroupOut:
    g = GroupOut(schema)
    for a in addresses:
        try:
            version, value = ip_int(a)
        except ValueError as exc:
            g.problems.append(f"node addresses: {exc}")
            continue
        g.add(
            f"node_address_{family_suffix(version)}",
            {"dst_addr": Exact(value)},
            "to_node_address",
            origin="node addresses",
        )
    return g


def service_origin(svc: LbServicePort) -> str:
    return f"service {svc.namespace}/{svc.service} {svc.protocol.lower()}/{svc.port} {svc.family}"


def lower_service(
    svc: LbServicePort,
    ov: LbNodeOverride | None,
    schema: Schema = SCHEMA,
    previous: GroupOut | None = None,
) -> GroupOut:
    """One service port: its frontends, backend groups and every Maglev bucket, or nothing and a problem.

    ``previous``: this service's last output, whose unchanged buckets are reused (see :class:`GroupOut`).
    """
    g = GroupOut(schema)
    origin = service_origin(svc)
    try:
        changed = _lower_service(g, svc, ov, origin, previous)
    except ValueError as exc:
        # All or nothing: a bad intent adds no half a service.
        g = GroupOut(schema)
        g.problems.append(f"{origin}: {exc}; not programmed")
        return g
    small = g.adds
    g.small = list(small)
    if (
        changed is not None
        and previous is not None
        and previous.bulk.keys() == g.bulk.keys()
        and not previous.extra
        and not g.extra
    ):
        adds = dict(previous.adds)  # a C-level copy: unchanged buckets are not hashed again
        touched: set[EntryKey] = set()
        for k in previous.small:
            del adds[k]
            touched.add(k)
        for e in changed:
            k = e.key
            adds[k] = e
            touched.add(k)
        for k, e in small.items():
            adds[k] = e
            touched.add(k)
        g.adds = adds
        g.delta = (previous, touched)
    else:
        adds = g.adds
        before = dict(adds)  # the few non-bucket adds
        expected = len(adds)
        for entries in g.bulk.values():
            # Bucket keys are distinct (one group id and bucket each) and in their own table, so a
            # plain update adds them all; the count proves it, else they go one by one (first wins).
            adds.update({e.key: e for e in entries})
            expected += len(entries)
        if len(adds) != expected:
            g.adds = before
            for entries in g.bulk.values():
                for e in entries:
                    g.put(e)
    return g


_BUCKETS: list[tuple[str, FieldMatch]] = []


def _bucket_matches(n: int) -> list[tuple[str, FieldMatch]]:
    """``("bucket", Exact(b))`` for b < n, shared by every service's Maglev entries (immutable values:
    one pair per bucket number instead of one per entry, ~110 bytes per entry at 10M entries)."""
    while len(_BUCKETS) < n:
        _BUCKETS.append(("bucket", Exact(len(_BUCKETS))))
    return _BUCKETS


def _lower_group(
    g: GroupOut,
    group: int,
    bset: BackendSet,
    version: int,
    origin: str,
    previous: GroupOut | None,
    changed: list[TableEntry] | None,
) -> list[TableEntry] | None:
    """Add a backend group; its buckets go to ``g.bulk``.  Returns the list of new bucket entries
    when the previous output had this group with the same layout (``changed`` extended), else None."""
    if not bset.table:
        action = "reject_empty_group" if bset.when_empty == "reject" else "drop_empty_group"
        g.add("backend_group", {"backend_group": Exact(group)}, action, origin=origin)
        return changed
    fam = family_suffix(version)
    # The hot path (a thousand buckets per group): names checked once by the layout, values
    # once per group and per backend, then entries are built directly.
    layout = entry_layout(
        f"maglev_backend_{fam}",
        ("backend_group", "bucket"),
        f"set_backend_{fam}",
        ("addr", "port"),
        schema=g.schema,
    )
    if not layout.fits("backend_group", group):
        raise ValueError(f"backend group {group} does not fit the pipeline")
    if not layout.fits("bucket", len(bset.table) - 1):
        raise ValueError(f"{len(bset.table)} buckets do not fit the pipeline")
    params: list[tuple[tuple[str, int], ...]] = []
    for be in bset.backends:
        bv, addr = ip_int(be.ip)
        if bv != version:
            raise ValueError(f"backend {be.ip} is not IPv{version}")
        params.append(layout.check_params({"addr": addr, "port": be.port}))
    table, action, n = layout.table, layout.action, len(params)
    if not all(0 <= idx < n for idx in bset.table):
        bad = next(b for b, idx in enumerate(bset.table) if not 0 <= idx < n)
        raise ValueError(f"bucket {bad} points at backend {bset.table[bad]} of {n}")
    before = previous.bulk.get(group) if previous is not None else None
    entries: list[TableEntry] = []
    if (
        changed is not None
        and before is not None
        and len(before) == len(bset.table)
        and before[0].table == table
        and before[0].action == action
        and before[0].origin == origin
    ):
        # Same layout: the same keys in the same order; build only the buckets whose backend moved.
        for old, idx in zip(before, bset.table, strict=True):
            p = params[idx]
            if old.params == p:
                entries.append(old)
            else:
                e = new_entry(table, old.match, action, p, 0, origin)
                entries.append(e)
                changed.append(e)
    else:
        changed = None
        group_match = ("backend_group", Exact(group))
        buckets = _bucket_matches(len(bset.table))
        for bucket, idx in enumerate(bset.table):
            entries.append(new_entry(table, (group_match, buckets[bucket]), action, params[idx], 0, origin))
    g.bulk[group] = entries
    g.add(
        "backend_group",
        {"backend_group": Exact(group)},
        "maglev_group",
        {"bucket_count": len(bset.table)},
        origin=origin,
    )
    return changed


def _lower_service(
    g: GroupOut, svc: LbServicePort, ov: LbNodeOverride | None, origin: str, previous: GroupOut | None
) -> list[TableEntry] | None:
    version = 4 if svc.family == "ipv4" else 6
    fam = family_suffix(version)
    internal = ov.internal if ov is not None and ov.internal is not None else svc.internal
    external = ov.external if ov is not None and ov.external is not None else svc.external
    g_int, g_ext = backend_groups(svc.id)
    if external is None:
        g_ext = g_int
    # Validate every frontend before adding anything.
    fronts: list[tuple[str, dict[str, FieldMatch], int, int]] = []
    proto = PROTO_NUMBERS.get(svc.protocol)
    if proto is None:
        raise ValueError(f"unknown protocol {svc.protocol!r}")
    aff = FLAG_AFFINITY if svc.affinity is not None else 0
    for fe in svc.frontends:
        group = g_int if not fe.external else g_ext
        flags = aff
        if fe.external:
            if not svc.external_snat and g_ext != g_int:
                flags |= FLAG_LOCAL_PODS_USE_INTERNAL
            if svc.external_snat:
                flags |= FLAG_SNAT_TO_NODE
        if fe.ip is None:
            fronts.append(
                (f"node_port_{fam}", {"protocol": Exact(proto), "dst_port": Exact(fe.port)}, group, flags)
            )
            continue
        fv, value = ip_int(fe.ip)
        if fv != version:
            raise ValueError(f"frontend {fe.ip} is not IPv{version}")
        match: dict[str, FieldMatch] = {
            "dst_addr": Exact(value),
            "protocol": Exact(proto),
            "dst_port": Exact(fe.port),
        }
        fronts.append((f"service_frontend_{fam}", match, group, flags))
    changed: list[TableEntry] | None = [] if previous is not None else None
    changed = _lower_group(g, g_int, internal, version, origin, previous, changed)
    if external is not None:
        changed = _lower_group(g, g_ext, external, version, origin + " (external)", previous, changed)
    timeout = svc.affinity.timeout_s if svc.affinity is not None else 0
    for table, fmatch, group, flags in fronts:
        params = {
            "service_port_id": svc.id,
            "backend_group": group,
            "flags": flags,
            "affinity_timeout": timeout,
        }
        g.add(table, fmatch, "to_service", params, origin=origin)
    return changed


# --- conntrack ------------------------------------------------------------------------------


def conntrack_timeouts(ct: ConntrackTimeouts) -> dict[tuple[int, int], int]:
    """(protocol number, ct state) → idle timeout in seconds."""
    tcp, udp, sctp = PROTO_NUMBERS["TCP"], PROTO_NUMBERS["UDP"], PROTO_NUMBERS["SCTP"]
    out = {
        (tcp, CT_NEW): ct.tcp_syn_sent,
        (tcp, CT_ESTABLISHED): ct.tcp_established,
        (tcp, CT_CLOSING): ct.tcp_time_wait,
        (udp, CT_NEW): ct.udp,
        (udp, CT_ESTABLISHED): ct.udp_stream,
        (sctp, CT_NEW): ct.sctp_other,
        (sctp, CT_ESTABLISHED): ct.sctp_established,
        (sctp, CT_CLOSING): ct.sctp_other,
    }
    for icmp in (PROTO_NUMBERS["ICMP"], PROTO_NUMBERS["ICMPv6"]):
        out[(icmp, CT_NEW)] = out[(icmp, CT_ESTABLISHED)] = ct.icmp
    return out


def lower_conntrack(ct: ConntrackTimeouts | None, schema: Schema = SCHEMA) -> GroupOut:
    g = GroupOut(schema)
    for (proto, state), seconds in sorted(conntrack_timeouts(ct or ConntrackTimeouts()).items()):
        g.add(
            "ct_timeout",
            {"protocol": Exact(proto), "ct_state": Exact(state)},
            "set_ct_timeout",
            {"seconds": seconds},
            origin="conntrack timeouts",
        )
    return g


# --- routes ------------------------------------------------------------------------------------


def next_hop_names(route: NodeRoute) -> tuple[str, str]:
    """The names a route's next hops are allocated under."""
    return (f"{route.node}/v4", f"{route.node}/v6")


def lower_host_routes(me: NodeRoute | None, host: int | None, schema: Schema = SCHEMA) -> GroupOut:
    """The node's own addresses, delivered to its network stack."""
    g = GroupOut(schema)
    if me is None or host is None:
        return g
    origin = f"node {me.node} address"
    for a in me.addresses:
        try:
            version, value = ip_int(a)
        except ValueError as exc:
            g.problems.append(f"{origin}: {exc}")
            continue
        g.add(
            f"fib_{family_suffix(version)}",
            {"dst_addr": Lpm(value, 32 if version == 4 else 128)},
            "deliver_host",
            {"port": host},
            origin=origin,
        )
    return g


def lower_route(
    r: NodeRoute, ids: Mapping[str, int], uplink: int, schema: Schema = SCHEMA
) -> tuple[GroupOut, dict[int, str]]:
    """Another node's pod CIDRs through its next hops; returns the next hops used (id → node)."""
    g = GroupOut(schema)
    origin = f"route to node {r.node}"
    names: dict[int, str] = {}
    for version, cidrs in ((4, r.pod_cidrs_v4), (6, r.pod_cidrs_v6)):
        if not cidrs:
            continue
        nh = ids.get(f"{r.node}/v{version}")
        if nh is None:
            g.problems.append(f"{origin}: no next hop id allocated for IPv{version}")
            continue
        try:
            if r.next_hop == "vxlan":
                under = r.underlay_address
                if under is None:
                    g.problems.append(f"{origin}: no address for the VXLAN tunnel")
                    continue
                uv, uval = ip_int(under)
                action = f"via_vxlan_{family_suffix(uv)}"
                params = {"vtep_addr": uval, "vni": r.vni, "port": uplink}
            else:
                addr = r.address_of(version)
                if addr is None:
                    g.problems.append(f"{origin}: no IPv{version} node address for direct routing")
                    continue
                action = f"via_direct_{family_suffix(version)}"
                params = {"node_addr": ip_int(addr)[1], "port": uplink}
        except ValueError as exc:
            g.problems.append(f"{origin}: {exc}")
            continue
        names[nh] = r.node
        g.add("next_hop", {"next_hop_id": Exact(nh)}, action, params, origin=origin)
        for cidr in cidrs:
            try:
                v, lpm = cidr_lpm(cidr)
            except ValueError as exc:
                g.problems.append(f"{origin}: {exc}")
                continue
            if v != version:
                g.problems.append(f"{origin}: {cidr} is not IPv{version}")
                continue
            g.add(
                f"fib_{family_suffix(v)}", {"dst_addr": lpm}, "route_via", {"next_hop_id": nh}, origin=origin
            )
        if r.next_hop == "direct":
            # The node's own address goes the same way: a NodePort dialled on another node's
            # address (and that node's host network) is reachable, not drop_no_route.
            host = Lpm(params["node_addr"], 32 if version == 4 else 128)
            g.add(
                f"fib_{family_suffix(version)}",
                {"dst_addr": host},
                "route_via",
                {"next_hop_id": nh},
                origin=origin,
            )
    return g, names


NO_UPLINK = "routes: no uplink port; other nodes are unreachable"
