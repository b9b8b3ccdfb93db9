"""The fixed shape of xpunet's nftables table ``inet xpunet``: containers, chains, rules.  Pure.

Everything that changes with the table entries lives in set and map
*elements* (see ``render``); the chains and rules here are static, so an entry
change is only ever an element add/delete inside one transaction, and a
lookup costs the same whatever the number of services and endpoints.

Packet walk (mirrors the pipeline, see docs/kernel-target.md):

* ``pre_filter`` (prerouting, priority -150, after conntrack): the ingress
  interface decides (``port_kind``: pod vNIC → anti-spoofing, uplink →
  on; anything else → dropped, fail closed); then frontends of services with
  no backend are rejected (TCP RST / ICMP port unreachable) or dropped.
* ``pre_nat``/``out_nat`` (dstnat): a verdict map sends a service frontend to
  the *pick chain* of its backend count K (``fe4_h10``: created on demand, one
  per distinct K, not per service), which DNATs with
  ``frontend . jhash(client addr, port) mod K`` → backend in a hash map (the
  client address alone for ClientIP affinity).  Conntrack does the reverse
  NAT of replies.
* externalTrafficPolicy Local (``FLAG_LOCAL_PODS_USE_INTERNAL``): a packet
  from a pod of this node to an external frontend (NodePort, externalIP,
  LoadBalancer) uses the service's *internal* group instead of the
  frontend's own.  Pods first consult ``fi_*``/``ni_*`` maps (filled only
  for such frontends, from the internal group): in ``pod_svc_check`` the
  verdict for an empty internal group, in ``pre_nat`` the pick chain
  (``fi4_h3``), whose slots live in the frontend's own backend map at
  ``INTERNAL_SLOT_OFFSET`` + slot.  Everyone else falls through to the
  frontend's own entries.
* ``forward``/``input`` (filter): established flows pass; a packet from a pod
  goes through its egress ACL, a packet to a pod through the pod's ingress
  ACL.  An ACL is one rule per IP-set bit: ``peer in set b`` and
  ``iface . proto . port`` in the bit's interval map, whose value is the
  named counter of the entry that allows it.  No match: counted and dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from xpunet.pipeline.schema import DROP_REASONS, SET_BITS

TABLE = "xpunet"
FAMILY = "inet"
HASH_SEED = 0x78707531  # "xpu1": equal on every node, so every kernel-target node picks alike
PRIORITY_PRE_FILTER = -150
PRIORITY_CT_TIMEOUT = -190  # after conntrack (-200) made the entry, before it is confirmed
SNAT_CT_MARK = 0x20000000
"""The connection-mark bit of flows to be SNATed to the node (externalTrafficPolicy Cluster)."""
AFFINITY_CT_MARK = 0x40000000
"""The connection-mark bit of flows to a ClientIP-affinity frontend; the low bits hold the group."""
AFFINITY_GROUP_MASK = 0x01FFFFFF
"""The backend group in the connection mark (service port ids are < 2**24, so groups < 2**25)."""
AFFINITY_KEY = f"ct mark and {AFFINITY_CT_MARK | AFFINITY_GROUP_MASK:#x}"
"""The group part of an affinity entry's key: the mark without the SNAT bit, so every frontend of
a group (ClusterIP, NodePort with SNAT) shares a client's entry, as in the pipeline."""
INTERNAL_SLOT_OFFSET = 0x1000000
"""Where a frontend's internal-group slots start in its backend map (``jhash ... offset``): far above
any slot count of its own group (at most 32 slots per backend, 131,071 buckets)."""
RT_PROTO_XPUNET = 93
"""Route protocol number (``ip route ... proto 93``) of every route xpunet owns."""

L4_PROTOCOLS: Mapping[str, int] = {"tcp": 6, "udp": 17, "sctp": 132}
Kind = Literal["ifname", "ipv4", "ipv6", "proto", "port", "u32", "mark", "nfproto", "hash"]
DataKind = Literal["verdict", "counter", "ipv4_port", "ipv6_port", "mark", "ipv4", "ipv6", "port"]


@dataclass(frozen=True, slots=True)
class Container:
    """A set (``data is None``) or map of the table, with its key components."""

    name: str
    key: tuple[Kind, ...]
    data: DataKind | None = None
    interval: bool = False
    l4: str = ""  # backend maps: the transport protocol the map serves (nft needs one per protocol)
    dynamic: bool = False  # filled from the packet path (affinity): never rendered nor read back

    @property
    def kind(self) -> str:
        return "map" if self.data else "set"

    def declaration(self) -> str:
        """``{ type ...; flags ...; }``: the body of an ``add set``/``add map`` command."""
        types = {
            "ifname": "ifname",
            "ipv4": "ipv4_addr",
            "ipv6": "ipv6_addr",
            "proto": "inet_proto",
            "port": "inet_service",
            "u32": "mark",
            "mark": "mark",
            "nfproto": "nf_proto",
            "hash": "mark",
        }
        data = {
            "verdict": "verdict",
            "counter": "counter",
            "ipv4_port": "ipv4_addr . inet_service",
            "ipv6_port": "ipv6_addr . inet_service",
            "mark": "mark",
            "ipv4": "ipv4_addr",
            "ipv6": "ipv6_addr",
            "port": "inet_service",
        }
        if "hash" in self.key:
            # A jhash result is a plain integer: declared with typeof (see below), data likewise.
            keyof = {"mark": "ct mark", "hash": "meta cpu"}
            valueof = {"ipv4": "ip daddr", "ipv6": "ip6 daddr", "port": "tcp dport"}
            body = f"typeof {' . '.join(keyof[k] for k in self.key)} : {valueof[str(self.data)]};"
        elif "u32" in self.key:
            # A jhash result is a plain 32-bit integer: only typeof declares a key nft accepts for it,
            # and `meta cpu` is the plain-integer expression nft 1.0.6 can also list back.
            typeofs = {
                "ipv4": "ip daddr",
                "ipv6": "ip6 daddr",
                "proto": "meta l4proto",
                "port": "th dport",
                "u32": "meta cpu",
            }
            key = " . ".join(typeofs[k] for k in self.key)
            # The data is declared with the map's own protocol: nft 1.0.6 cannot reload a
            # `th dport` data type into a rule that matched a protocol.
            ip = "ip" if self.data == "ipv4_port" else "ip6"
            value = f"{ip} daddr . {self.l4} dport"
            body = f"typeof {key} : {value};"
        else:
            key = " . ".join(types[k] for k in self.key)
            body = f"type {key}" + (f" : {data[self.data]};" if self.data else ";")
        flags = " flags interval;" if self.interval else ""
        if self.dynamic:
            flags = " flags dynamic,timeout; size 262144;"  # the pipeline's affinity_vN size
        return f"{{ {body}{flags} }}"


def _containers() -> dict[str, Container]:
    out: list[Container] = [
        Container("port_kind", ("ifname",), "verdict"),
        Container("pod_ifs", ("ifname",)),
        Container("pod_oifs", ("ifname",)),
        Container("hairpin", ("ifname", "ifname")),
        Container("ep_src4", ("ifname", "ipv4")),
        Container("ep_src6", ("ifname", "ipv6")),
        Container("node_addr4", ("ipv4",)),
        Container("node_addr6", ("ipv6",)),
        Container("aff_rec", ("mark",), "verdict"),
        Container("ct_to", ("nfproto", "proto"), "verdict"),
        Container("mss_clamp", ("ifname",)),
    ]
    fams: tuple[tuple[int, Kind, DataKind], ...] = ((4, "ipv4", "ipv4_port"), (6, "ipv6", "ipv6_port"))
    for v, k, data in fams:
        out += [
            Container(f"fe_reject{v}", (k, "proto", "port")),
            Container(f"fe_drop{v}", (k, "proto", "port")),
            Container(f"fe_snat{v}", (k, "proto", "port")),
            Container(f"np_reject{v}", ("proto", "port")),
            Container(f"np_drop{v}", ("proto", "port")),
            Container(f"np_snat{v}", ("proto", "port")),
            Container(f"np_shadow{v}", (k, "proto", "port")),
        ]
        out += [
            Container(f"fe_pick{v}", (k, "proto", "port"), "verdict"),
            Container(f"np_pick{v}", ("proto", "port"), "verdict"),
            Container(f"fe_aff{v}", (k, "proto", "port"), "mark"),
            Container(f"np_aff{v}", ("proto", "port"), "mark"),
            # Local pods on externalTrafficPolicy Local frontends: the internal group's verdict
            # (accept / reject / counted drop) before NAT, its pick chain and affinity mark.
            Container(f"fi_chk{v}", (k, "proto", "port"), "verdict"),
            Container(f"ni_chk{v}", ("proto", "port"), "verdict"),
            Container(f"fi_pick{v}", (k, "proto", "port"), "verdict"),
            Container(f"ni_pick{v}", ("proto", "port"), "verdict"),
            Container(f"fi_aff{v}", (k, "proto", "port"), "mark"),
            Container(f"ni_aff{v}", ("proto", "port"), "mark"),
            # Learned affinity: (connection mark, client) → backend address, and → port.  nft
            # 1.0.6 allocates the registers of a packet-path map update as if key and value fit
            # 16 bytes each: a longer key is overwritten by the value (an IPv6 client is keyed
            # by a 32-bit jhash of its address) and an IPv6 address . port value asserts (two maps).
            Container(
                f"aff{v}", ("mark", k if v == 4 else "hash"), "ipv4" if v == 4 else "ipv6", dynamic=True
            ),
            Container(f"aff{v}p", ("mark", k if v == 4 else "hash"), "port", dynamic=True),
        ]
        for l4 in L4_PROTOCOLS:
            out += [
                Container(f"fe_be{v}_{l4}", (k, "port", "u32"), data, False, l4),
                Container(f"np_be{v}_{l4}", ("port", "u32"), data, False, l4),
            ]
        for side in ("src", "dst"):
            out += [Container(f"{side}{v}_b{b}", (k,), None, True) for b in range(SET_BITS)]
    for d in ("eg", "in"):
        names = [f"acl_{d}_b{b}" for b in range(SET_BITS)] + [f"acl_{d}_any"]
        out += [Container(n, ("ifname", "proto", "port"), "counter", True) for n in names]
    return {c.name: c for c in out}


CONTAINERS: Mapping[str, Container] = _containers()

STATIC_COUNTERS: tuple[str, ...] = (
    *(f"drop_{r}" for r in DROP_REASONS),
    "deny_egress",
    "deny_ingress",
)


def _acl_chain(direction: Literal["egress", "ingress"]) -> list[str]:
    d, iface, side, verdict = (
        ("eg", "iifname", "dst", "return") if direction == "egress" else ("in", "oifname", "src", "accept")
    )
    addr = "daddr" if side == "dst" else "saddr"
    lookup = f"{iface} . meta l4proto . th dport"
    rules = []
    for b in range(SET_BITS):
        for v, p in ((4, "ip"), (6, "ip6")):
            rules.append(f"{p} {addr} @{side}{v}_b{b} counter name {lookup} map @acl_{d}_b{b} {verdict}")
    rules.append(f"counter name {lookup} map @acl_{d}_any {verdict}")
    rules.append(f'counter name "deny_{direction}" drop')
    return rules


_CT_TIMEOUT_RULE = "meta nfproto . meta l4proto vmap @ct_to"
_MSS_CLAMP = "oifname @mss_clamp tcp flags syn / syn,rst tcp option maxseg size set rt mtu"
_ND = "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept"


def _node_port(v: int) -> str:
    """The match of a NodePort rule: a node address that is not also a frontend of its own.

    The pipeline looks ``service_frontend`` up first and ``node_port`` only on a miss, so an
    externalIP equal to a node address shadows a NodePort of the same protocol and port.  The
    frontend's own rules come first everywhere; this keeps the NodePort's checks and marks from
    applying too.  ``np_shadow`` holds the frontends on node addresses (not ``fe_pick``: a verdict
    map whose chains DNAT cannot be looked up from a filter chain).  Only packets to a node address
    pay the extra lookup.
    """
    p = "ip" if v == 4 else "ip6"
    return f"{p} daddr @node_addr{v} {p} daddr . meta l4proto . th dport != @np_shadow{v}"


def _nat_rules(*, pods: bool) -> list[str]:
    # The frontend picks the chain that hashes with its backend count (see pick_chain).  A pod of
    # this node tries the internal-group maps first (only Local-policy external frontends are in
    # them); frontend addresses before NodePorts, as the pipeline looks them up.
    out = []
    for v, p in ((4, "ip"), (6, "ip6")):
        fe = f"{p} daddr . meta l4proto . th dport"
        np = f"{_node_port(v)} meta l4proto . th dport"
        out += [f"iifname @pod_ifs {fe} vmap @fi_pick{v}"] if pods else []
        out += [f"{fe} vmap @fe_pick{v}"]
        out += [f"iifname @pod_ifs {np} vmap @ni_pick{v}"] if pods else []
        out += [f"{np} vmap @np_pick{v}"]
    return out


def _affinity_mark_rules(*, pods: bool) -> list[str]:
    # A ClientIP-affinity frontend writes its backend group (and the affinity bit) into the
    # connection mark: nft cannot nest one map lookup in another's key, so the group travels in
    # the mark to the pick chain (remembered backend) and past DNAT to the learning chain.  The
    # mark of a new connection is replaced; the SNAT bit is or-ed in after this rule.  A local pod
    # on a Local-policy external frontend then gets the internal group's mark instead.
    out = []
    for v, p in ((4, "ip"), (6, "ip6")):
        out += [
            f"ct mark set {p} daddr . meta l4proto . th dport map @fe_aff{v}",
            f"{_node_port(v)} ct mark set meta l4proto . th dport map @np_aff{v}",
        ]
        if pods:
            out += [
                f"iifname @pod_ifs ct mark set {p} daddr . meta l4proto . th dport map @fi_aff{v}",
                f"iifname @pod_ifs {_node_port(v)} ct mark set meta l4proto . th dport map @ni_aff{v}",
            ]
    return out


def _affinity_learn_rules() -> list[str]:
    # After DNAT (priority dstnat + 1) the packet carries the chosen backend: the group's
    # timeout chain adds it (or refreshes the remembered one) for the client.
    group = f"ct mark and {AFFINITY_GROUP_MASK:#x}"
    bit = f"ct mark and {AFFINITY_CT_MARK:#x} == {AFFINITY_CT_MARK:#x}"
    return [f"ct state new ct status dnat {bit} {group} vmap @aff_rec"]


PICK_CHAIN = re.compile(r"^(fe|np|fi|ni)([46])_([ha])(\d+)$")
AFFINITY_CHAIN = re.compile(r"^aff_t(\d+)$")
CT_TIMEOUT_NAME = re.compile(r"^ctto_(tcp|udp)([46])_[0-9a-f]+$")


def pick_chain_name(kind: str, version: int, affinity: bool, backends: int) -> str:
    """The chain that picks one of ``backends`` backends: ``fe4_h10`` (flow hash), ``np6_a3`` (client).

    ``kind`` ``fi``/``ni``: a local pod on a Local-policy external frontend (address / NodePort),
    picking among the internal group's slots of the frontend's backend map.
    """
    return f"{kind}{version}_{'a' if affinity else 'h'}{backends}"


def pick_chain_rules(name: str) -> list[str]:
    """DNAT rules of a pick chain: ``jhash mod K`` selects the slot in the backend map.

    Within one frontend the destination and protocol are fixed, so the client
    address and port are all the flow hash needs; ClientIP affinity hashes the
    client address alone, so a client keeps its backend while the set is
    unchanged.  nft needs a map per transport protocol (see Container.l4).
    """
    m = PICK_CHAIN.match(name)
    if m is None:
        raise ValueError(f"not a pick chain: {name!r}")
    kind, v, how, k = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
    p = "ip" if v == 4 else "ip6"
    key = f"{p} daddr . th dport" if kind in ("fe", "fi") else "th dport"
    hashed = f"jhash {p} saddr . th sport" if how == "h" else f"jhash {p} saddr"
    offset = f" offset {INTERNAL_SLOT_OFFSET:#x}" if kind in ("fi", "ni") else ""
    bemap = {"fe": "fe", "fi": "fe", "np": "np", "ni": "np"}[kind]
    out = []
    if how == "a":
        # The backend this client got before (learned by the group's affinity chain), if any:
        # dnat ends the chain.  A miss falls through to the hash, whose pick is then learned.
        client = f"{AFFINITY_KEY} . {affinity_client(v)}"
        out += [
            f"meta l4proto {l4} dnat {p} to {client} map @aff{v} : {client} map @aff{v}p"
            for l4 in L4_PROTOCOLS
        ]
    return out + [
        f"meta l4proto {l4} dnat {p} to {key} . {hashed} mod {k} seed {HASH_SEED:#x}{offset} "
        f"map @{bemap}_be{v}_{l4}"
        for l4 in L4_PROTOCOLS
    ]


def affinity_chain_name(timeout_s: int) -> str:
    """The chain learning affinity entries that expire ``timeout_s`` s after the last connection."""
    return f"aff_t{max(1, timeout_s)}"


def affinity_chain_rules(name: str) -> list[str]:
    m = AFFINITY_CHAIN.match(name)
    if m is None:
        raise ValueError(f"not an affinity chain: {name!r}")
    # `update` adds the element, or only refreshes the timeout of one that exists (its backend
    # stays): the client keeps the backend it first got while it keeps connecting.
    t = f"timeout {m.group(1)}s"
    return [
        f"meta nfproto {fam} meta l4proto {l4} "
        f"update @aff{v} {{ {AFFINITY_KEY} . {affinity_client(v)} {t} : {p} daddr }} "
        f"update @aff{v}p {{ {AFFINITY_KEY} . {affinity_client(v)} {t} : {l4} dport }}"
        for v, p, fam in ((4, "ip", "ipv4"), (6, "ip6", "ipv6"))
        for l4 in L4_PROTOCOLS
    ]


AFFINITY_CLIENT_HASH_MOD = 0xFFFFFFFF


def affinity_client(version: int) -> str:
    """The client part of an affinity key: the IPv4 address, or a 32-bit hash of the IPv6 one."""
    if version == 4:
        return "ip saddr"
    return f"jhash ip6 saddr mod {AFFINITY_CLIENT_HASH_MOD:#x} seed {HASH_SEED:#x}"


def ct_timeout_rules(name: str) -> list[str]:
    """The chain of a conntrack timeout policy object has the object's name and one rule."""
    if CT_TIMEOUT_NAME.match(name) is None:
        raise ValueError(f"not a conntrack timeout policy: {name!r}")
    return [f'ct timeout set "{name}"']


def dynamic_chain_rules(name: str) -> list[str]:
    """Rules of a chain made on demand (pick, affinity learning, conntrack timeout), from its name."""
    if PICK_CHAIN.match(name):
        return pick_chain_rules(name)
    if AFFINITY_CHAIN.match(name):
        return affinity_chain_rules(name)
    return ct_timeout_rules(name)


def is_dynamic_chain(name: str) -> bool:
    return bool(PICK_CHAIN.match(name) or AFFINITY_CHAIN.match(name) or CT_TIMEOUT_NAME.match(name))


def _svc_check_rules(*, pods: bool) -> list[str]:
    # Pods (chain pod_svc_check) first ask the internal-group verdict of a Local-policy external
    # frontend: accept ends the checks (the frontend's own, possibly empty, group is not theirs).
    out = ["ct state established,related accept"]
    for v, p in ((4, "ip"), (6, "ip6")):
        fe = f"{p} daddr . meta l4proto . th dport"
        np = f"{_node_port(v)} meta l4proto . th dport"
        out += [f"{fe} vmap @fi_chk{v}"] if pods else []
        out += [
            f"{fe} @fe_reject{v} goto reject_no_backend",
            f'{fe} @fe_drop{v} counter name "drop_no_backend" drop',
        ]
        out += [f"{np} vmap @ni_chk{v}"] if pods else []
        out += [
            f"{np} @np_reject{v} goto reject_no_backend",
            f'{np} @np_drop{v} counter name "drop_no_backend" drop',
        ]
    return out


def _snat_mark_rules() -> list[str]:
    # Conntrack cannot be matched on its original port in a concatenation, so the frontend is
    # recognised before DNAT and remembered in one bit of the connection mark.
    out = []
    for v, p in ((4, "ip"), (6, "ip6")):
        mark = f"ct mark set ct mark or {SNAT_CT_MARK:#x}"
        out += [
            f"{p} daddr . meta l4proto . th dport @fe_snat{v} {mark}",
            f"{_node_port(v)} meta l4proto . th dport @np_snat{v} {mark}",
        ]
    return out


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    hook: str | None  # None: a regular chain reached by jump/goto
    kind: str = "filter"
    priority: int = 0
    rules: tuple[str, ...] = ()


def _chains() -> tuple[Chain, ...]:
    return (
        Chain(
            "pre_filter",
            "prerouting",
            priority=PRIORITY_PRE_FILTER,
            rules=(
                'iifname "lo" accept',
                "iifname vmap @port_kind",
                'counter name "drop_unknown_port" drop',
            ),
        ),
        Chain(
            "from_pod",
            None,
            rules=(
                "iifname . ip saddr @ep_src4 goto pod_svc_check",
                "iifname . ip6 saddr @ep_src6 goto pod_svc_check",
                _ND,
                'counter name "drop_spoofed_source" drop',
            ),
        ),
        Chain("svc_check", None, rules=tuple(_svc_check_rules(pods=False))),
        Chain("pod_svc_check", None, rules=tuple(_svc_check_rules(pods=True))),
        Chain(
            "reject_no_backend",
            None,
            rules=("meta l4proto tcp reject with tcp reset", "reject with icmpx port-unreachable"),
        ),
        # A verdict-map target: an empty (drop) internal group counts like the frontends' drop set.
        Chain("drop_no_backend", None, rules=('counter name "drop_no_backend" drop',)),
        Chain("out_filter", "output", priority=PRIORITY_PRE_FILTER, rules=("goto svc_check",)),
        # The kernel attaches a timeout policy to a new entry only between conntrack (-200)
        # and the entry's confirmation: here, for every new flow, its protocol's policy.
        Chain("ct_pre", "prerouting", priority=PRIORITY_CT_TIMEOUT, rules=(_CT_TIMEOUT_RULE,)),
        Chain("ct_out", "output", priority=PRIORITY_CT_TIMEOUT, rules=(_CT_TIMEOUT_RULE,)),
        Chain(
            "pre_nat",
            "prerouting",
            "nat",
            -100,
            (*_affinity_mark_rules(pods=True), *_snat_mark_rules(), *_nat_rules(pods=True)),
        ),
        # Host traffic is not a pod's: it uses each frontend's own group, as in the pipeline.
        Chain("out_nat", "output", "nat", -100, (*_affinity_mark_rules(pods=False), *_nat_rules(pods=False))),
        Chain("aff_pre", "prerouting", priority=-99, rules=tuple(_affinity_learn_rules())),
        Chain("aff_out", "output", priority=-99, rules=tuple(_affinity_learn_rules())),
        Chain(
            "post_nat",
            "postrouting",
            "nat",
            100,
            (
                f"ct status dnat ct mark and {SNAT_CT_MARK:#x} == {SNAT_CT_MARK:#x} masquerade",
                # Hairpin: a pod reaching itself through a service.  Without SNAT its reply would not
                # leave the pod, so the client would never see the frontend answer.
                "ct status dnat iifname . oifname @hairpin masquerade",
            ),
        ),
        # TCP through the overlay: pods keep MTU 1500 while the vxlan device has the uplink's minus
        # the encapsulation, so SYNs leaving through it (either direction of a handshake) get their
        # MSS lowered to the route's (the kernel only ever lowers it).  Large segments then fit
        # without relying on PMTU discovery (ICMP that a firewall on the way may eat).
        Chain("mss", "postrouting", priority=PRIORITY_PRE_FILTER, rules=(_MSS_CLAMP,)),
        Chain(
            "forward",
            "forward",
            rules=(
                "ct state established,related accept",
                "iifname @pod_ifs jump egress",
                "oifname @pod_oifs goto ingress",
            ),
        ),
        Chain(
            "input",
            "input",
            rules=("ct state established,related accept", _ND, "iifname @pod_ifs jump egress"),
        ),
        Chain("egress", None, rules=tuple(_acl_chain("egress"))),
        Chain("ingress", None, rules=tuple(_acl_chain("ingress"))),
    )


CHAINS: tuple[Chain, ...] = _chains()


def _digest() -> str:
    text = "\n".join(f"{c.name} {c.declaration()}" for c in CONTAINERS.values())
    text += "\n".join(f"{c.name} {c.hook} {c.kind} {c.priority} {c.rules}" for c in CHAINS)
    text += f"{STATIC_COUNTERS} {HASH_SEED} {pick_chain_rules('fe4_h1')} {pick_chain_rules('np6_a1')}"
    text += f"{pick_chain_rules('fi4_h1')} {pick_chain_rules('ni6_a1')}"
    text += f"{affinity_chain_rules('aff_t1')} {ct_timeout_rules('ctto_tcp4_0')}"
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


RULESET_DIGEST = _digest()
MARKER_COUNTER = f"ruleset_{RULESET_DIGEST}"
"""A named counter whose name says which version of this shape the table holds."""


def bootstrap_script(*, existing_containers: Mapping[str, str], existing_counters: frozenset[str]) -> str:
    """The nft script (one transaction) that brings the table to this shape without touching elements.

    ``existing_containers`` maps the name of each set/map already in the table
    to its kind (``set`` or ``map``).  Containers are added, chains are emptied and
    refilled, and containers or marker counters of an older shape are removed
    after the rules that used them.
    """
    lines = [f"add table {FAMILY} {TABLE}"]
    for c in CONTAINERS.values():
        if c.name not in existing_containers:
            lines.append(f"add {c.kind} {FAMILY} {TABLE} {c.name} {c.declaration()}")
    for name in (*STATIC_COUNTERS, MARKER_COUNTER):
        if name not in existing_counters:
            lines.append(f"add counter {FAMILY} {TABLE} {name}")
    for ch in CHAINS:
        if ch.hook is None:
            lines.append(f"add chain {FAMILY} {TABLE} {ch.name}")
        else:
            lines.append(
                f"add chain {FAMILY} {TABLE} {ch.name} {{ type {ch.kind} hook {ch.hook} "
                f"priority {ch.priority}; policy accept; }}"
            )
    for ch in CHAINS:
        lines.append(f"flush chain {FAMILY} {TABLE} {ch.name}")
    for ch in CHAINS:
        for r in ch.rules:
            lines.append(f"add rule {FAMILY} {TABLE} {ch.name} {r}")
    for name, kind in sorted(existing_containers.items()):
        if name not in CONTAINERS:
            lines.append(f"delete {kind} {FAMILY} {TABLE} {name}")
    for name in sorted(existing_counters):
        if name.startswith("ruleset_") and name != MARKER_COUNTER:
            lines.append(f"delete counter {FAMILY} {TABLE} {name}")
    return "\n".join(lines) + "\n"
