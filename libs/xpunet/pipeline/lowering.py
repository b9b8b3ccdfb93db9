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
* conflicting entries (two services on one frontend) keep the first by key and
  report the rest.

Stable numbers keep churn small: endpoint ids are the pods' vNIC ports, backend
groups derive from the lb's stable service-port ids, and set bits and next-hop
ids come from a hash of their name with linear probing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xpunet.ir.keys import node_prefix
from xpunet.ir.lb import (
    BackendSet,
    ConntrackTimeouts,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
)
from xpunet.ir.policy import IPSet, PolicyEndpoint, PolicyRule
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.entries import (
    EntryError,
    Exact,
    FieldMatch,
    Lpm,
    Range,
    TableEntry,
    Ternary,
    cidr_lpm,
    family_suffix,
    ip_int,
    make_entry,
)
from xpunet.pipeline.schema import (
    CT_CLOSING,
    CT_ESTABLISHED,
    CT_NEW,
    FLAG_AFFINITY,
    FLAG_LOCAL_PODS_USE_INTERNAL,
    FLAG_SNAT_TO_NODE,
    SCHEMA,
    SET_BITS,
    Schema,
)

PROTO_NUMBERS: Mapping[str, int] = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMPv6": 58, "SCTP": 132}
PRIORITY_RULE = 10  # every policy rule: rules are allow-only, so their order carries no meaning
PRIORITY_OPEN = 1  # the allow-all of a direction no policy isolates


@dataclass(frozen=True, slots=True)
class NodePorts:
    """The node's ports as the datapath allocated them."""

    endpoints: Mapping[str, int] = field(default_factory=dict)  # "namespace/pod" → vNIC port id
    host: int | None = None  # the node's own network stack
    uplinks: tuple[int, ...] = ()  # towards the fabric; the first one carries traffic to other nodes


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


def hashed_ids(names: Iterable[str], space: int, *, start: int = 0) -> dict[str, int]:
    """Stable small numbers for names: crc32 modulo ``space``, linear probing in name order."""
    taken: set[int] = set()
    out: dict[str, int] = {}
    for name in sorted(set(names)):
        if len(taken) >= space:
            break
        n = zlib.crc32(name.encode()) % space
        while n + start in taken:
            n = (n + 1) % space
        taken.add(n + start)
        out[name] = n + start
    return out


class _Builder:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.entries: dict[tuple[object, ...], TableEntry] = {}
        self.problems: list[str] = []

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
        try:
            e = make_entry(table, match, action, params, priority=priority, origin=origin, schema=self.schema)
        except EntryError as exc:
            self.problems.append(f"{origin}: {exc}; left out")
            return
        prev = self.entries.get(e.key)
        if prev is None:
            self.entries[e.key] = e
        elif (prev.action, prev.params) != (e.action, e.params):
            self.problems.append(
                f"{e.alias}: {origin} conflicts with {prev.origin} on the same key; kept the first"
            )
        elif origin not in prev.origin.split(" + "):
            self.entries[e.key] = TableEntry(
                e.table, e.match, e.action, e.params, e.priority, f"{prev.origin} + {origin}"
            )


def lower(intents: NodeIntents, ports: NodePorts, *, schema: Schema = SCHEMA) -> Lowered:
    """The desired entries of one node."""
    b = _Builder(schema)
    endpoints = _lower_ports_and_endpoints(b, intents, ports)
    src_bits, dst_bits = _lower_policy(b, intents, ports)
    _lower_services(b, intents)
    _lower_conntrack(b, intents.conntrack or ConntrackTimeouts())
    next_hops = _lower_routes(b, intents, ports)
    entries = tuple(sorted(b.entries.values(), key=lambda e: (e.table, repr(e.match), e.priority)))
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.table] = counts.get(e.table, 0) + 1
    overflow = [
        TableOverflow(t.alias, counts[t.name], t.size)
        for t in schema.tables
        if counts.get(t.name, 0) > t.size
    ]
    for label, want in (
        ("ip set bits (ingress peers)", src_bits[1]),
        ("ip set bits (egress peers)", dst_bits[1]),
    ):
        if want > SET_BITS:
            overflow.append(TableOverflow(label, want, SET_BITS))
    return Lowered(
        entries,
        tuple(overflow),
        tuple(b.problems),
        src_bits[0],
        dst_bits[0],
        next_hops,
        endpoints,
    )


# --- ports, endpoints ----------------------------------------------------------------


def _lower_ports_and_endpoints(b: _Builder, intents: NodeIntents, ports: NodePorts) -> dict[int, str]:
    out: dict[int, str] = {}
    if ports.host is not None:
        b.add("port_info", {"in_port": Exact(ports.host)}, "from_host", origin="host")
    for up in ports.uplinks:
        b.add("port_info", {"in_port": Exact(up)}, "from_uplink", origin="uplink")
    for ep in sorted(intents.endpoints, key=lambda e: (e.namespace, e.pod)):
        ref = f"{ep.namespace}/{ep.pod}"
        port = ports.endpoints.get(ref)
        if port is None:
            b.problems.append(f"endpoint {ref}: no vNIC port allocated; not programmed")
            continue
        origin = f"endpoint {ref}"
        out[port] = ref
        b.add("port_info", {"in_port": Exact(port)}, "from_endpoint", {"endpoint_id": port}, origin=origin)
        for addr in ep.ips:
            try:
                version, value = ip_int(addr)
            except ValueError as exc:
                b.problems.append(f"endpoint {ref}: {exc}")
                continue
            fam = family_suffix(version)
            b.add(
                f"endpoint_by_ip_{fam}",
                {"src_addr": Exact(value)},
                "source_endpoint",
                {"endpoint_id": port},
                origin=origin,
            )
            b.add(
                f"fib_{fam}",
                {"dst_addr": Lpm(value, 32 if version == 4 else 128)},
                "deliver_local",
                {"port": port, "endpoint_id": port},
                origin=origin,
            )
    return out


# --- policy ------------------------------------------------------------------------------


def _classify(sets: Iterable[IPSet], bits: Mapping[str, int]) -> dict[int, dict[Lpm, int]]:
    """Per IP version, LPM prefix → membership bits of every set having a member that covers it.

    LPM picks the longest matching prefix, so an address whose longest match is
    P must carry the bits of every set with a member ⊇ P.
    """
    members: dict[int, dict[Lpm, int]] = {4: {}, 6: {}}
    for s in sets:
        bit = bits.get(s.id)
        if bit is None:
            continue
        for cidr in s.members:
            version, lpm = cidr_lpm(cidr)
            members[version][lpm] = members[version].get(lpm, 0) | (1 << bit)
    out: dict[int, dict[Lpm, int]] = {4: {}, 6: {}}
    for version, by_prefix in members.items():
        width = 32 if version == 4 else 128
        for p in by_prefix:
            acc = 0
            for length in range(p.prefix_len + 1):
                mask = ((1 << length) - 1) << (width - length)
                acc |= by_prefix.get(Lpm(p.value & mask, length), 0)
            out[version][p] = acc
    return out


def _lower_policy(
    b: _Builder, intents: NodeIntents, ports: NodePorts
) -> tuple[tuple[dict[str, int], int], tuple[dict[str, int], int]]:
    programmed = [ep for ep in intents.endpoints if f"{ep.namespace}/{ep.pod}" in ports.endpoints]
    src_ids = {r.ipset for ep in programmed for r in ep.ingress if r.ipset is not None}
    dst_ids = {r.ipset for ep in programmed for r in ep.egress if r.ipset is not None}
    src_bits = hashed_ids(src_ids, SET_BITS)
    dst_bits = hashed_ids(dst_ids, SET_BITS)
    sets = {s.id: s for s in intents.ip_sets}
    for missing in sorted((src_ids | dst_ids) - sets.keys()):
        b.problems.append(f"ip set {missing}: referenced but not present; its rules match nothing")
    for side, bits in (("src", src_bits), ("dst", dst_bits)):
        try:
            classes = _classify((sets[i] for i in bits if i in sets), bits)
        except ValueError as exc:
            b.problems.append(f"ip sets: {exc}")
            continue
        action = f"set_{side}_sets"
        for version, by_prefix in classes.items():
            table = f"ip_set_{side}_{family_suffix(version)}"
            for lpm, members in by_prefix.items():
                b.add(table, {f"{side}_addr": lpm}, action, {"sets": members}, origin=f"ip sets ({side})")
    for ep in sorted(programmed, key=lambda e: (e.namespace, e.pod)):
        port = ports.endpoints[f"{ep.namespace}/{ep.pod}"]
        ref = f"{ep.namespace}/{ep.pod}"
        for direction, isolated, rules, peer, bits in (
            ("ingress", ep.ingress_isolated, ep.ingress, "src_sets", src_bits),
            ("egress", ep.egress_isolated, ep.egress, "dst_sets", dst_bits),
        ):
            table = f"acl_{direction}"
            if not isolated:
                b.add(
                    table,
                    {"endpoint_id": Exact(port)},
                    "acl_allow",
                    priority=PRIORITY_OPEN,
                    origin=f"{ref} {direction} not isolated",
                )
                continue
            for rule in rules:
                _lower_rule(b, table, port, peer, rule, bits, ref)
    return (src_bits, len(src_ids)), (dst_bits, len(dst_ids))


def _lower_rule(
    b: _Builder, table: str, port: int, peer: str, rule: PolicyRule, bits: Mapping[str, int], ref: str
) -> None:
    o = rule.origin
    origin = f"{o.namespace}/{o.policy} {o.direction}[{o.index}] for {ref}"
    match: dict[str, FieldMatch] = {"endpoint_id": Exact(port)}
    if rule.ipset is not None:
        bit = bits.get(rule.ipset)
        if bit is None:
            b.problems.append(
                f"{origin}: ip set {rule.ipset} has no membership bit (too many sets); rule left out"
            )
            return
        match[peer] = Ternary(1 << bit, 1 << bit)
    if rule.ports is None:
        b.add(table, match, "acl_allow", priority=PRIORITY_RULE, origin=origin)
        return
    for pr in rule.ports:
        m = dict(match)
        m["protocol"] = Ternary(PROTO_NUMBERS[pr.protocol], 0xFF)
        m["dst_port"] = Range(pr.first, pr.last)
        b.add(table, m, "acl_allow", priority=PRIORITY_RULE, origin=origin)


# --- services ------------------------------------------------------------------------------


def backend_groups(service_port_id: int) -> tuple[int, int]:
    """(internal, external) backend group numbers of a service port."""
    return service_port_id << 1, (service_port_id << 1) | 1


def _lower_group(b: _Builder, group: int, bset: BackendSet, version: int, origin: str) -> None:
    if not bset.table:
        action = "reject_empty_group" if bset.when_empty == "reject" else "drop_empty_group"
        b.add("backend_group", {"backend_group": Exact(group)}, action, origin=origin)
        return
    fam = family_suffix(version)
    resolved: list[tuple[int, int]] = []
    for be in bset.backends:
        bv, addr = ip_int(be.ip)
        if bv != version:
            raise ValueError(f"backend {be.ip} is not IPv{version}")
        resolved.append((addr, be.port))
    for bucket, idx in enumerate(bset.table):
        addr, port = resolved[idx]
        b.add(
            f"maglev_backend_{fam}",
            {"backend_group": Exact(group), "bucket": Exact(bucket)},
            f"set_backend_{fam}",
            {"addr": addr, "port": port},
            origin=origin,
        )
    b.add(
        "backend_group",
        {"backend_group": Exact(group)},
        "maglev_group",
        {"bucket_count": len(bset.table)},
        origin=origin,
    )


def _lower_services(b: _Builder, intents: NodeIntents) -> None:
    overrides = {o.id: o for o in intents.overrides}
    node_addrs: set[str] = set(intents.addresses.addresses if intents.addresses else ())
    for r in intents.routes:
        if r.node == intents.node:
            node_addrs.update(r.addresses)
    for a in sorted(node_addrs):
        try:
            version, value = ip_int(a)
        except ValueError as exc:
            b.problems.append(f"node addresses: {exc}")
            continue
        b.add(
            f"node_address_{family_suffix(version)}",
            {"dst_addr": Exact(value)},
            "to_node_address",
            origin="node addresses",
        )
    for svc in sorted(intents.services, key=lambda s: s.id):
        origin = f"service {svc.namespace}/{svc.service} {svc.protocol.lower()}/{svc.port} {svc.family}"
        try:
            _lower_service(b, svc, overrides.get(svc.id), origin)
        except ValueError as exc:
            b.problems.append(f"{origin}: {exc}; not programmed")


def _lower_service(b: _Builder, svc: LbServicePort, ov: LbNodeOverride | None, origin: str) -> None:
    version = 4 if svc.family == "ipv4" else 6
    fam = family_suffix(version)
    internal = ov.internal if ov is not None and ov.internal is not None else svc.internal
    external = ov.external if ov is not None and ov.external is not None else svc.external
    g_int, g_ext = backend_groups(svc.id)
    if external is None:
        g_ext = g_int
    # Validate every frontend before adding anything, so a bad intent adds no half a service.
    fronts: list[tuple[str, dict[str, FieldMatch], int, int]] = []
    proto = PROTO_NUMBERS[svc.protocol]
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
    _lower_group(b, g_int, internal, version, origin)
    if external is not None:
        _lower_group(b, g_ext, external, version, origin + " (external)")
    timeout = svc.affinity.timeout_s if svc.affinity is not None else 0
    for table, match, group, flags in fronts:
        params = {
            "service_port_id": svc.id,
            "backend_group": group,
            "flags": flags,
            "affinity_timeout": timeout,
        }
        b.add(table, match, "to_service", params, origin=origin)


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


def _lower_conntrack(b: _Builder, ct: ConntrackTimeouts) -> None:
    for (proto, state), seconds in sorted(conntrack_timeouts(ct).items()):
        b.add(
            "ct_timeout",
            {"protocol": Exact(proto), "ct_state": Exact(state)},
            "set_ct_timeout",
            {"seconds": seconds},
            origin="conntrack timeouts",
        )


# --- routes ------------------------------------------------------------------------------------


def _lower_routes(b: _Builder, intents: NodeIntents, ports: NodePorts) -> dict[int, str]:
    me = next((r for r in intents.routes if r.node == intents.node), None)
    if me is not None and ports.host is not None:
        for a in me.addresses:
            version, value = ip_int(a)
            b.add(
                f"fib_{family_suffix(version)}",
                {"dst_addr": Lpm(value, 32 if version == 4 else 128)},
                "deliver_host",
                {"port": ports.host},
                origin=f"node {me.node} address",
            )
    others = [r for r in intents.routes if r.node != intents.node]
    if others and not ports.uplinks:
        b.problems.append("routes: no uplink port; other nodes are unreachable")
        return {}
    ids = hashed_ids((f"{r.node}/v{v}" for r in others for v in (4, 6)), 1 << 24, start=1)
    names: dict[int, str] = {}
    for r in sorted(others, key=lambda r: r.node):
        origin = f"route to node {r.node}"
        for version, cidrs in ((4, r.pod_cidrs_v4), (6, r.pod_cidrs_v6)):
            if not cidrs:
                continue
            nh = ids[f"{r.node}/v{version}"]
            if r.next_hop == "vxlan":
                under = r.underlay_address
                if under is None:
                    b.problems.append(f"{origin}: no address for the VXLAN tunnel")
                    continue
                uv, uval = ip_int(under)
                action = f"via_vxlan_{family_suffix(uv)}"
                params = {"vtep_addr": uval, "vni": r.vni, "port": ports.uplinks[0]}
            else:
                addr = r.address_of(version)
                if addr is None:
                    b.problems.append(f"{origin}: no IPv{version} node address for direct routing")
                    continue
                action = f"via_direct_{family_suffix(version)}"
                params = {"node_addr": ip_int(addr)[1], "port": ports.uplinks[0]}
            names[nh] = r.node
            b.add("next_hop", {"next_hop_id": Exact(nh)}, action, params, origin=origin)
            for cidr in cidrs:
                v, lpm = cidr_lpm(cidr)
                if v != version:
                    b.problems.append(f"{origin}: {cidr} is not IPv{version}")
                    continue
                b.add(
                    f"fib_{family_suffix(v)}",
                    {"dst_addr": lpm},
                    "route_via",
                    {"next_hop_id": nh},
                    origin=origin,
                )
    return names
