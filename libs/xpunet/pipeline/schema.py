"""The xpunet pipeline contract as plain data: tables, keys, actions, sizes, counters.

This room mirrors ``xpunet.p4info.txtpb`` (the P4Runtime contract, beside this
file) so the pure lowering and interpreter can reason about names, widths and
match kinds without importing protobuf.  ``xpunet.pipeline.p4info`` renders
this schema to the text file and parses the file back; a unit test checks the
two are equal, and another checks the P4-16 program ``xpunet.p4`` declares the
same tables, keys, actions and sizes.

Names are the P4Info names (``ingress.<table>``); the short alias is the part
after the dot.  Ids follow the P4Runtime prefix rules (tables 0x02, actions
0x01, counters 0x12, direct counters 0x13 in the top byte).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

PIPELINE_NAME = "xpunet"
PIPELINE_VERSION = "1.0.0"
PIPELINE_ARCH = "pna"
CONTROL = "ingress"

MatchKind = Literal["exact", "lpm", "ternary", "range", "optional"]
PRIORITY_KINDS: frozenset[str] = frozenset({"ternary", "range", "optional"})
Scope = Literal["table_and_default", "table_only", "default_only"]

SET_BITS = 128
"""Width of the IP-set membership bitmaps: at most this many sets per direction per node."""

# Flags of the ``to_service`` action.
FLAG_AFFINITY = 0x1  # sessionAffinity ClientIP: hash the client IP, learn an affinity entry
FLAG_LOCAL_PODS_USE_INTERNAL = 0x2  # externalTrafficPolicy Local: local pods use the internal set
FLAG_SNAT_TO_NODE = 0x4  # externalTrafficPolicy Cluster on an external frontend (see docs/pipeline.md)

# Connection-tracking states, the ``ct_state`` key of ``ct_timeout``.
CT_NEW = 0  # seen in the original direction only
CT_ESTABLISHED = 1  # a reply was seen
CT_CLOSING = 2  # TCP FIN or RST seen

# Drop reasons: the index into the ``drop_reasons`` counter.
DROP_REASONS: Mapping[str, int] = {
    "unknown_port": 1,
    "spoofed_source": 2,
    "policy_egress": 3,
    "policy_ingress": 4,
    "no_route": 5,
    "no_backend": 6,
    "unknown_backend_group": 7,
}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    id: int
    name: str
    bitwidth: int
    match_kind: MatchKind


@dataclass(frozen=True, slots=True)
class ParamSpec:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True, slots=True)
class ActionSpec:
    id: int
    name: str
    params: tuple[ParamSpec, ...]
    brief: str

    @property
    def alias(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"action {self.name} has no parameter {name!r}")


@dataclass(frozen=True, slots=True)
class ActionRef:
    action: str
    scope: Scope = "table_and_default"


@dataclass(frozen=True, slots=True)
class TableSpec:
    id: int
    name: str
    key: tuple[FieldSpec, ...]
    actions: tuple[ActionRef, ...]
    default_action: str  # const: the controller cannot change it (fail closed)
    size: int
    brief: str
    learned: bool = False  # entries are added by the target (PNA add_on_miss), never written by xpunet
    direct_counter: int | None = None  # id of the direct counter, if any

    @property
    def alias(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def needs_priority(self) -> bool:
        return any(f.match_kind in PRIORITY_KINDS for f in self.key)

    def field(self, name: str) -> FieldSpec:
        for f in self.key:
            if f.name == name:
                return f
        raise KeyError(f"table {self.name} has no key field {name!r}")

    def action_names(self) -> tuple[str, ...]:
        return tuple(a.action for a in self.actions)


@dataclass(frozen=True, slots=True)
class CounterSpec:
    id: int
    name: str
    size: int  # 0 for direct counters
    brief: str
    direct_table: str | None = None  # set for direct counters


@dataclass(frozen=True, slots=True)
class Schema:
    tables: tuple[TableSpec, ...]
    actions: tuple[ActionSpec, ...]
    counters: tuple[CounterSpec, ...]

    def table(self, name: str) -> TableSpec:
        t = _TABLES.get(name) if self is SCHEMA else None
        if t is None:
            t = next((x for x in self.tables if x.name == name or x.alias == name), None)
        if t is None:
            raise KeyError(f"no table {name!r} in the xpunet pipeline")
        return t

    def action(self, name: str) -> ActionSpec:
        a = _ACTIONS.get(name) if self is SCHEMA else None
        if a is None:
            a = next((x for x in self.actions if x.name == name or x.alias == name), None)
        if a is None:
            raise KeyError(f"no action {name!r} in the xpunet pipeline")
        return a


# --- the definition -----------------------------------------------------------------

_ACTION_DEFS: list[tuple[str, tuple[tuple[str, int], ...], str]] = [
    ("from_endpoint", (("endpoint_id", 32),), "The port is a local pod vNIC; its endpoint id follows."),
    ("from_host", (), "The port is the node network stack (host traffic; ingress policy allows it)."),
    ("from_uplink", (), "The port faces the fabric (other nodes, outside clients)."),
    ("drop_unknown_port", (), "Fail closed: packets from a port xpunet did not set up are dropped."),
    ("source_endpoint", (("endpoint_id", 32),), "The source address belongs to this local endpoint."),
    ("drop_spoofed_source", (), "Fail closed: a pod sent from an address that is not its own."),
    ("ct_established", (), "Known flow, no address translation: skip policy and load balancing."),
    ("ct_dnat_v4", (("addr", 32), ("port", 16)), "Known service flow: rewrite destination to the backend."),
    ("ct_dnat_v6", (("addr", 128), ("port", 16)), "Known service flow: rewrite destination to the backend."),
    (
        "ct_reverse_nat_v4",
        (("addr", 32), ("port", 16)),
        "Reply of a service flow: rewrite source to the frontend.",
    ),
    (
        "ct_reverse_nat_v6",
        (("addr", 128), ("port", 16)),
        "Reply of a service flow: rewrite source to the frontend.",
    ),
    ("ct_new_flow", (), "No conntrack entry: evaluate services and policy; learn the flow if allowed."),
    ("set_ct_timeout", (("seconds", 32),), "Idle timeout of a flow in this protocol and state."),
    ("use_builtin_ct_timeout", (), "No configured timeout: the target's built-in default applies."),
    ("to_node_address", (), "The destination is one of this node's addresses (NodePorts listen here)."),
    ("not_node_address", (), "The destination is not an address of this node."),
    (
        "to_service",
        (("service_port_id", 32), ("backend_group", 32), ("flags", 8), ("affinity_timeout", 32)),
        "A service frontend: pick a backend of the group (flags: 1 affinity, 2 local pods use the"
        " internal set, 4 SNAT to node); affinity_timeout in seconds.",
    ),
    ("not_a_service", (), "Not a service frontend: forward on the original destination."),
    ("maglev_group", (("bucket_count", 32),), "A backend group with a Maglev table of bucket_count buckets."),
    ("reject_empty_group", (), "No usable backend: answer TCP RST or ICMP port unreachable."),
    ("drop_empty_group", (), "No local backend under a Local traffic policy: drop silently."),
    ("drop_unknown_group", (), "Fail closed: a frontend points at a group that is not programmed."),
    ("affinity_backend_v4", (("addr", 32), ("port", 16)), "The client remembered backend (ClientIP)."),
    ("affinity_backend_v6", (("addr", 128), ("port", 16)), "The client remembered backend (ClientIP)."),
    ("no_affinity", (), "No remembered backend: use the Maglev table."),
    ("set_backend_v4", (("addr", 32), ("port", 16)), "The backend of this bucket (DNAT target)."),
    ("set_backend_v6", (("addr", 128), ("port", 16)), "The backend of this bucket (DNAT target)."),
    ("drop_missing_bucket", (), "Fail closed: a bucket of the group is not programmed."),
    ("set_src_sets", (("sets", SET_BITS),), "Source address is in these IP sets (bit i = set i)."),
    ("no_src_sets", (), "Source address is in no IP set."),
    ("set_dst_sets", (("sets", SET_BITS),), "Destination address is in these IP sets (bit i = set i)."),
    ("no_dst_sets", (), "Destination address is in no IP set."),
    ("acl_allow", (), "A policy rule allows the packet (counted per rule)."),
    ("acl_deny", (), "Fail closed: no rule allows the packet (counted)."),
    ("deliver_local", (("port", 32), ("endpoint_id", 32)), "Deliver to a local pod vNIC."),
    ("deliver_host", (("port", 32),), "Deliver to the node network stack."),
    ("route_via", (("next_hop_id", 32),), "Send towards another node through a next hop."),
    ("drop_no_route", (), "Fail closed: no route to the destination."),
    ("via_direct_v4", (("node_addr", 32), ("port", 32)), "Routed directly to the node IPv4 address."),
    ("via_direct_v6", (("node_addr", 128), ("port", 32)), "Routed directly to the node IPv6 address."),
    (
        "via_vxlan_v4",
        (("vtep_addr", 32), ("vni", 24), ("port", 32)),
        "VXLAN-encapsulated to the node IPv4 VTEP.",
    ),
    (
        "via_vxlan_v6",
        (("vtep_addr", 128), ("vni", 24), ("port", 32)),
        "VXLAN-encapsulated to the node IPv6 VTEP.",
    ),
]


def _f(n: int, name: str, width: int, kind: MatchKind) -> FieldSpec:
    return FieldSpec(n, name, width, kind)


def _tables() -> list[tuple[str, tuple[FieldSpec, ...], tuple[str, ...], str, int, str, bool]]:
    """(alias, key, actions, default, size, brief, learned) in the order the program applies them."""
    out: list[tuple[str, tuple[FieldSpec, ...], tuple[str, ...], str, int, str, bool]] = [
        (
            "port_info",
            (_f(1, "in_port", 32, "exact"),),
            ("from_endpoint", "from_host", "from_uplink"),
            "drop_unknown_port",
            4096,
            "What is behind an ingress port: a pod vNIC, the host, or the uplink.",
            False,
        ),
    ]
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"endpoint_by_ip_{fam}",
                (_f(1, "src_addr", w, "exact"),),
                ("source_endpoint",),
                "drop_spoofed_source",
                16384,
                "Anti-spoofing: the local endpoint owning a source address.",
                False,
            )
        )
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"conntrack_{fam}",
                (
                    _f(1, "src_addr", w, "exact"),
                    _f(2, "dst_addr", w, "exact"),
                    _f(3, "protocol", 8, "exact"),
                    _f(4, "src_port", 16, "exact"),
                    _f(5, "dst_port", 16, "exact"),
                ),
                ("ct_established", f"ct_dnat_{fam}", f"ct_reverse_nat_{fam}"),
                "ct_new_flow",
                262144,
                "Connection tracking, learned by the target: one entry per direction of an allowed flow.",
                True,
            )
        )
    out.append(
        (
            "ct_timeout",
            (_f(1, "protocol", 8, "exact"), _f(2, "ct_state", 8, "exact")),
            ("set_ct_timeout",),
            "use_builtin_ct_timeout",
            64,
            "Conntrack idle timeouts per protocol and state (0 new, 1 established, 2 closing).",
            False,
        )
    )
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"node_address_{fam}",
                (_f(1, "dst_addr", w, "exact"),),
                ("to_node_address",),
                "not_node_address",
                256,
                "This node's own addresses, where NodePort frontends listen.",
                False,
            )
        )
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"service_frontend_{fam}",
                (
                    _f(1, "dst_addr", w, "exact"),
                    _f(2, "protocol", 8, "exact"),
                    _f(3, "dst_port", 16, "exact"),
                ),
                ("to_service",),
                "not_a_service",
                65536,
                "Service frontends by address: ClusterIP, externalIP, LoadBalancer ingress.",
                False,
            )
        )
    for fam in ("v4", "v6"):
        out.append(
            (
                f"node_port_{fam}",
                (_f(1, "protocol", 8, "exact"), _f(2, "dst_port", 16, "exact")),
                ("to_service",),
                "not_a_service",
                16384,
                "NodePort frontends, applied only to packets for one of this node's addresses.",
                False,
            )
        )
    out.append(
        (
            "backend_group",
            (_f(1, "backend_group", 32, "exact"),),
            ("maglev_group", "reject_empty_group", "drop_empty_group"),
            "drop_unknown_group",
            131072,
            "A service port backend set (group = service_port_id*2 + external): bucket count or empty.",
            False,
        )
    )
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"affinity_{fam}",
                (_f(1, "backend_group", 32, "exact"), _f(2, "client_addr", w, "exact")),
                (f"affinity_backend_{fam}",),
                "no_affinity",
                262144,
                "ClientIP session affinity, learned by the target with the frontend timeout.",
                True,
            )
        )
    for fam in ("v4", "v6"):
        out.append(
            (
                f"maglev_backend_{fam}",
                (_f(1, "backend_group", 32, "exact"), _f(2, "bucket", 32, "exact")),
                (f"set_backend_{fam}",),
                "drop_missing_bucket",
                16777216,
                "Maglev lookup: (group, flow hash mod bucket_count) to a backend address and port.",
                False,
            )
        )
    for side, addr, act, none in (
        ("src", "src_addr", "set_src_sets", "no_src_sets"),
        ("dst", "dst_addr", "set_dst_sets", "no_dst_sets"),
    ):
        for fam, w in (("v4", 32), ("v6", 128)):
            out.append(
                (
                    f"ip_set_{side}_{fam}",
                    (_f(1, addr, w, "lpm"),),
                    (act,),
                    none,
                    65536,
                    f"IP-set classification of the {side} address (after DNAT): set-membership bits.",
                    False,
                )
            )
    for direction, peer in (("egress", "dst_sets"), ("ingress", "src_sets")):
        out.append(
            (
                f"acl_{direction}",
                (
                    _f(1, "endpoint_id", 32, "exact"),
                    _f(2, peer, SET_BITS, "ternary"),
                    _f(3, "protocol", 8, "ternary"),
                    _f(4, "dst_port", 16, "range"),
                ),
                ("acl_allow",),
                "acl_deny",
                65536,
                f"NetworkPolicy {direction} rules of a local endpoint: peer set bit, protocol, port range.",
                False,
            )
        )
    for fam, w in (("v4", 32), ("v6", 128)):
        out.append(
            (
                f"fib_{fam}",
                (_f(1, "dst_addr", w, "lpm"),),
                ("deliver_local", "deliver_host", "route_via"),
                "drop_no_route",
                65536,
                "Forwarding: local pods (host routes), this host, other nodes pod CIDRs.",
                False,
            )
        )
    out.append(
        (
            "next_hop",
            (_f(1, "next_hop_id", 32, "exact"),),
            ("via_direct_v4", "via_direct_v6", "via_vxlan_v4", "via_vxlan_v6"),
            "drop_no_route",
            4096,
            "How to reach another node: directly routed or over a VXLAN overlay.",
            False,
        )
    )
    return out


def _build() -> Schema:
    actions: list[ActionSpec] = []
    for i, (alias, params, brief) in enumerate(_ACTION_DEFS, start=1):
        ps = tuple(ParamSpec(j, n, w) for j, (n, w) in enumerate(params, start=1))
        actions.append(ActionSpec(0x01000000 | i, f"{CONTROL}.{alias}", ps, brief))
    by_alias = {a.alias: a for a in actions}
    tables: list[TableSpec] = []
    counters: list[CounterSpec] = []
    for i, (alias, key, acts, default, size, brief, learned) in enumerate(_tables(), start=1):
        for a in (*acts, default):
            if a not in by_alias:
                raise AssertionError(f"table {alias} names unknown action {a}")
        name = f"{CONTROL}.{alias}"
        counter_id = None if learned else 0x13000000 | i
        refs = (
            *(ActionRef(f"{CONTROL}.{a}", "table_only") for a in acts),
            ActionRef(f"{CONTROL}.{default}", "default_only"),
        )
        tables.append(
            TableSpec(
                0x02000000 | i, name, key, refs, f"{CONTROL}.{default}", size, brief, learned, counter_id
            )
        )
        if counter_id is not None:
            counters.append(
                CounterSpec(
                    counter_id, f"{CONTROL}.{alias}_counter", 0, f"Packets and bytes per {alias} entry.", name
                )
            )
    counters.append(
        CounterSpec(
            0x12000001, f"{CONTROL}.drop_reasons", 16, "Dropped packets by reason (see DROP_REASONS)."
        )
    )
    return Schema(tuple(tables), tuple(actions), tuple(counters))


SCHEMA: Schema = _build()
"""The xpunet pipeline, version ``PIPELINE_VERSION``."""

_TABLES: dict[str, TableSpec] = {t.name: t for t in SCHEMA.tables} | {t.alias: t for t in SCHEMA.tables}
_ACTIONS: dict[str, ActionSpec] = {a.name: a for a in SCHEMA.actions} | {a.alias: a for a in SCHEMA.actions}


def qualified(alias: str) -> str:
    """``port_info`` → ``ingress.port_info`` (table and action names)."""
    return alias if "." in alias else f"{CONTROL}.{alias}"
