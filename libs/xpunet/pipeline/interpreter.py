"""Reference interpreter of the xpunet pipeline: table entries + a packet → verdict and table hits.  Pure.

It executes the pipeline the way ``xpunet.p4`` applies its tables (see
docs/pipeline.md for the walk), so it is the behavioural model softipu runs
and what ``xpunetctl trace`` prints.  It is stateful like a target: allowed
first packets learn connection-tracking entries for both directions, service
flows remember their backend and reverse NAT, ClientIP affinity is learned
per client; every learned entry expires after its idle timeout.  The clock is
passed in (``now``, seconds), never read.

Source NAT is modelled as the kernel target does it (docs/kernel-target.md):
a new flow to a frontend flagged ``FLAG_SNAT_TO_NODE`` (externalTrafficPolicy
Cluster on NodePort, externalIP and LoadBalancer addresses), and a hairpin
flow (a pod reaching itself through a service), leaves with the node's
address on its egress port as the source ("masquerade"), after the policy
checks; the source port is kept unless that would make the reply tuple of a
live connection ambiguous, then the next free one in the kernel's port class
is taken.  Replies are un-SNATed and reverse-NATed by the learned entry.
Host-originated flows and flows delivered to the host stack are not SNATed
(the kernel marks flows in prerouting and masquerades in postrouting only).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from xpunet.pipeline.entries import Exact, TableEntry, family_suffix, ip_int, ip_str, make_entry
from xpunet.pipeline.schema import (
    CT_CLOSING,
    CT_ESTABLISHED,
    CT_NEW,
    DROP_REASONS,
    FLAG_AFFINITY,
    FLAG_LOCAL_PODS_USE_INTERNAL,
    FLAG_SNAT_TO_NODE,
    SCHEMA,
    Schema,
)
from xpunet.pipeline.tables import MemTable

log = logging.getLogger(__name__)

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
BUILTIN_CT_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Packet:
    """The headers the pipeline looks at.  Ports are 0 for protocols without them."""

    in_port: int
    src: str
    dst: str
    protocol: int = TCP
    sport: int = 0
    dport: int = 0
    tcp_flags: int = 0
    length: int = 64

    def reply(self, in_port: int, *, tcp_flags: int = TCP_ACK) -> Packet:
        """The answer to this packet as it arrives on ``in_port``."""
        return Packet(
            in_port, self.dst, self.src, self.protocol, self.dport, self.sport, tcp_flags, self.length
        )


@dataclass(frozen=True, slots=True)
class Hit:
    """One table application: the looked-up values, and the entry hit (or the default action)."""

    table: str  # alias
    lookup: tuple[tuple[str, int], ...]
    action: str  # alias
    params: tuple[tuple[str, int], ...] = ()
    entry: TableEntry | None = None  # None: miss, default action ran
    learned: bool = False  # entry learned by the target (conntrack, affinity)

    @property
    def hit(self) -> bool:
        return self.entry is not None or self.learned


@dataclass(frozen=True, slots=True)
class Forward:
    """Out of ``port``: a local pod (``endpoint_id``) or the host stack."""

    port: int
    endpoint_id: int | None = None


@dataclass(frozen=True, slots=True)
class ToNode:
    """To another node through next hop ``next_hop_id``."""

    next_hop_id: int
    via: Literal["direct", "vxlan"]
    node_addr: str
    port: int
    vni: int | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    kind: Literal["tcp-reset", "icmp-port-unreachable", "icmpv6-port-unreachable"]


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str  # a key of DROP_REASONS


Verdict = Forward | ToNode | Reject | Drop
CtStatus = Literal["new", "established", "reply", "none"]
SnatKind = Literal["to-node", "hairpin"]


@dataclass(frozen=True, slots=True)
class Result:
    verdict: Verdict
    hits: tuple[Hit, ...]
    packet_in: Packet
    packet_out: Packet  # headers after NAT (equal to packet_in when nothing was rewritten)
    ct: CtStatus = "none"
    service_port_id: int | None = None
    snat: SnatKind | None = None  # the connection's source NAT (both directions), if any


@dataclass(slots=True)
class _Conn:
    protocol: int
    state: int
    expires: float
    affinity_key: tuple[str, tuple[int, int]] | None = None  # (table, (group, client)) refreshed per packet
    snat: SnatKind | None = None


@dataclass(slots=True)
class _CtDir:
    """One direction of a connection: what its packets' source and destination become."""

    conn: _Conn
    original: bool
    new_src: tuple[int, int] | None = None  # (addr, port): SNAT (original) or reverse NAT (reply)
    new_dst: tuple[int, int] | None = None  # (addr, port): DNAT (original) or un-SNAT (reply)

    def contract_action(self, fam: str) -> tuple[str, tuple[tuple[str, int], ...]]:
        """The P4Info action of this direction: one rewrite at most (the SNAT half is not in v1.0.0)."""
        if self.original and self.new_dst is not None:
            return f"ct_dnat_{fam}", (("addr", self.new_dst[0]), ("port", self.new_dst[1]))
        if not self.original and self.new_src is not None:
            return f"ct_reverse_nat_{fam}", (("addr", self.new_src[0]), ("port", self.new_src[1]))
        return "ct_established", ()

    def trace_action(self, fam: str) -> tuple[str, tuple[tuple[str, int], ...]]:
        """The action as the trace shows it: the contract's, or the source-NAT ones the contract lacks."""
        action, params = self.contract_action(fam)
        if self.original and self.new_src is not None:
            snat = (("snat_addr", self.new_src[0]), ("snat_port", self.new_src[1]))
            return (f"ct_dnat_snat_{fam}" if self.new_dst else f"ct_snat_{fam}"), params + snat
        if not self.original and self.new_dst is not None:
            client = (("client_addr", self.new_dst[0]), ("client_port", self.new_dst[1]))
            return (f"ct_reverse_nat_unsnat_{fam}" if self.new_src else f"ct_unsnat_{fam}"), params + client
        return action, params


@dataclass(slots=True)
class _Affinity:
    addr: int
    port: int
    timeout: float
    expires: float


@dataclass(slots=True)
class Counters:
    """Per-entry direct counters (packets, bytes) and drops by reason."""

    entries: dict[tuple[object, ...], list[int]] = field(default_factory=dict)
    defaults: dict[str, list[int]] = field(default_factory=dict)  # table alias → default-action counts
    drops: dict[str, int] = field(default_factory=dict)


def flow_hash(version: int, src: int, dst: int, protocol: int, sport: int, dport: int) -> int:
    """The pipeline's flow hash: CRC-32 (IEEE) over src, dst, protocol, sport, dport in network order."""
    n = 4 if version == 4 else 16
    data = src.to_bytes(n, "big") + dst.to_bytes(n, "big") + bytes([protocol]) + sport.to_bytes(2, "big")
    return zlib.crc32(data + dport.to_bytes(2, "big"))


def client_hash(version: int, src: int) -> int:
    """The affinity hash: CRC-32 over the client address alone."""
    return zlib.crc32(src.to_bytes(4 if version == 4 else 16, "big"))


def snat_port_range(port: int) -> tuple[int, int]:
    """The ports a masqueraded source port may move to: Linux NAT keeps its class (<512, <1024, other)."""
    if port < 512:
        return 1, 511
    if port < 1024:
        return 600, 1023
    return 1024, 65535


class Pipeline:
    """Tables with entries, learned state and counters; :meth:`process` walks one packet."""

    def __init__(
        self,
        entries: Iterable[TableEntry] = (),
        *,
        schema: Schema = SCHEMA,
        port_addresses: Mapping[int, Iterable[str]] | None = None,
    ) -> None:
        """``port_addresses``: the node's own addresses on an egress port, as the target's interface
        carries them (on the kernel target every pod veth carries the pod gateway address); source
        NAT out of that port uses the one of the packet's family.  Ports not given, or without an
        address of the family, use the node's address (:meth:`node_address`)."""
        self.schema = schema
        self.tables = {t.name: MemTable(t) for t in schema.tables if not t.learned}
        self.port_addresses: dict[int, dict[int, int]] = {}
        for port, addrs in (port_addresses or {}).items():
            for a in addrs:
                version, value = ip_int(a)
                self.port_addresses.setdefault(port, {}).setdefault(version, value)
        self._ct: dict[str, dict[tuple[int, ...], _CtDir]] = {"v4": {}, "v6": {}}
        self._affinity: dict[str, dict[tuple[int, int], _Affinity]] = {"v4": {}, "v6": {}}
        self.counters = Counters()
        for e in entries:
            self.write("INSERT", e)

    # --- control plane ---------------------------------------------------------------

    def write(self, kind: str, entry: TableEntry) -> None:
        """One P4Runtime-style update; raises TableWriteError or KeyError (unknown table)."""
        table = self.tables.get(entry.table)
        if table is None:
            raise KeyError(f"table {entry.table} is not writable")
        table.write(kind, entry)
        if entry.alias.startswith("maglev_backend") or entry.alias == "backend_group":
            self._forget_affinity(entry)

    def entries(self) -> list[TableEntry]:
        return [e for t in self.tables.values() for e in t]

    def learned_entries(self, *, now: float) -> list[TableEntry]:
        """Live conntrack and affinity entries as table entries (what a Read of those tables returns)."""
        out: list[TableEntry] = []
        for fam, flows in self._ct.items():
            for key, d in flows.items():
                if d.conn.expires > now:
                    names = ("src_addr", "dst_addr", "protocol", "src_port", "dst_port")
                    match = {n: Exact(v) for n, v in zip(names, key, strict=True)}
                    action, params = d.contract_action(fam)
                    out.append(
                        make_entry(f"conntrack_{fam}", match, action, dict(params), schema=self.schema)
                    )
        for fam, affs in self._affinity.items():
            for (group, client), a in affs.items():
                if a.expires > now:
                    out.append(
                        make_entry(
                            f"affinity_{fam}",
                            {"backend_group": Exact(group), "client_addr": Exact(client)},
                            f"affinity_backend_{fam}",
                            {"addr": a.addr, "port": a.port},
                            schema=self.schema,
                        )
                    )
        return out

    def expire(self, *, now: float) -> int:
        """Remove learned entries idle past their timeout; returns how many went."""
        gone = 0
        for flows in self._ct.values():
            for k in [k for k, d in flows.items() if d.conn.expires <= now]:
                del flows[k]
                gone += 1
        for affs in self._affinity.values():
            for k in [k for k, a in affs.items() if a.expires <= now]:
                del affs[k]
                gone += 1
        return gone

    def _forget_affinity(self, entry: TableEntry) -> None:
        # A changed backend set must not keep clients on a backend that left it.
        m = entry.match_of("backend_group")
        if not isinstance(m, Exact):
            return
        for fam, affs in self._affinity.items():
            stale = [k for k in affs if k[0] == m.value]
            if not stale:
                continue
            live = self._group_backends(m.value, fam)
            for k in stale:
                if (affs[k].addr, affs[k].port) not in live:
                    del affs[k]

    def node_address(self, version: int) -> int | None:
        """The node's address of a family for source NAT: the lowest ``node_address_vN`` entry the FIB
        delivers to the host (the node's routed addresses), else the lowest entry; None without one."""
        fam = family_suffix(version)
        mine: list[int] = []
        for e in self.tables[f"ingress.node_address_{fam}"]:
            m = e.match_of("dst_addr")
            if isinstance(m, Exact):
                mine.append(m.value)
        mine.sort()
        fib = self.tables[f"ingress.fib_{fam}"]
        for a in mine:
            r = fib.lookup({"dst_addr": a})
            if r is not None and r.action == "ingress.deliver_host":
                return a
        return mine[0] if mine else None

    def _group_backends(self, group: int, fam: str) -> set[tuple[int, int]]:
        g = self.tables["ingress.backend_group"].lookup({"backend_group": group})
        if g is None or g.action != "ingress.maglev_group":
            return set()
        table = self.tables[f"ingress.maglev_backend_{fam}"]
        out = set()
        for bucket in range(g.param("bucket_count")):
            e = table.lookup({"backend_group": group, "bucket": bucket})
            if e is not None:
                out.add((e.param("addr"), e.param("port")))
        return out

    # --- data plane ---------------------------------------------------------------------

    def process(self, pkt: Packet, *, now: float) -> Result:
        """Walk one packet through the pipeline at time ``now``."""
        return _Walk(self, pkt, now).run()


class _Walk:
    """One packet's trip; keeps the hits in order."""

    def __init__(self, pipe: Pipeline, pkt: Packet, now: float) -> None:
        self.pipe, self.pkt, self.now = pipe, pkt, now
        self.hits: list[Hit] = []
        self.version, self.src = ip_int(pkt.src)
        dv, self.dst = ip_int(pkt.dst)
        if dv != self.version:
            raise ValueError(f"packet mixes IPv{self.version} and IPv{dv} addresses")
        self.fam = family_suffix(self.version)
        self.sport, self.dport = pkt.sport, pkt.dport
        self.service_port_id: int | None = None
        self.ct: CtStatus = "none"
        self.snat: SnatKind | None = None

    def apply(self, alias: str, values: dict[str, int]) -> tuple[str, TableEntry | None]:
        table = self.pipe.tables[f"ingress.{alias}"]
        e = table.lookup(values)
        lookup = tuple((f.name, values[f.name]) for f in table.spec.key)
        c = self.pipe.counters
        if e is None:
            action = table.spec.default_action
            cnt = c.defaults.setdefault(alias, [0, 0])
            self.hits.append(Hit(alias, lookup, action.rsplit(".", 1)[-1]))
        else:
            action = e.action
            cnt = c.entries.setdefault(e.key, [0, 0])
            self.hits.append(Hit(alias, lookup, e.action.rsplit(".", 1)[-1], e.params, e))
        cnt[0] += 1
        cnt[1] += self.pkt.length
        return action.rsplit(".", 1)[-1], e

    def drop(self, reason: str) -> Result:
        assert reason in DROP_REASONS, reason
        self.pipe.counters.drops[reason] = self.pipe.counters.drops.get(reason, 0) + 1
        return self.result(Drop(reason))

    def result(self, verdict: Verdict) -> Result:
        out = replace(
            self.pkt,
            src=ip_str(self.src, self.version),
            dst=ip_str(self.dst, self.version),
            sport=self.sport,
            dport=self.dport,
        )
        return Result(verdict, tuple(self.hits), self.pkt, out, self.ct, self.service_port_id, self.snat)

    def tuple5(self) -> tuple[int, int, int, int, int]:
        return (self.src, self.dst, self.pkt.protocol, self.sport, self.dport)

    def run(self) -> Result:
        pkt = self.pkt
        action, e = self.apply("port_info", {"in_port": pkt.in_port})
        if e is None:
            return self.drop("unknown_port")
        src_endpoint = e.param("endpoint_id") if action == "from_endpoint" else None
        from_host = action == "from_host"
        if src_endpoint is not None:
            _, se = self.apply(f"endpoint_by_ip_{self.fam}", {"src_addr": self.src})
            if se is None or se.param("endpoint_id") != src_endpoint:
                return self.drop("spoofed_source")
        flow = self.conntrack()
        if flow is not None:
            return self.forward(from_host=from_host, learn=None, egress_endpoint=None)
        learn = self.tuple5()
        svc = self.service(src_endpoint, from_host=from_host)
        if svc is not None:
            return svc
        return self.forward(from_host=from_host, learn=learn, egress_endpoint=src_endpoint)

    # conntrack: a hit rewrites per the learned entry and skips services and policy.
    def conntrack(self) -> _CtDir | None:
        key = self.tuple5()
        flows = self.pipe._ct[self.fam]
        d = flows.get(key)
        lookup = tuple(zip(("src_addr", "dst_addr", "protocol", "src_port", "dst_port"), key, strict=True))
        if d is not None and d.conn.expires <= self.now:
            del flows[key]
            d = None
        if d is None:
            self.hits.append(Hit(f"conntrack_{self.fam}", lookup, "ct_new_flow"))
            return None
        action, params = d.trace_action(self.fam)
        self.hits.append(Hit(f"conntrack_{self.fam}", lookup, action, params, learned=True))
        conn = d.conn
        flags = self.pkt.tcp_flags
        if conn.protocol == TCP and flags & (TCP_FIN | TCP_RST):
            conn.state = CT_CLOSING
        elif not d.original and conn.state == CT_NEW:
            conn.state = CT_ESTABLISHED
        conn.expires = self.now + self.timeout(conn.protocol, conn.state)
        if conn.affinity_key is not None:
            fam, akey = conn.affinity_key
            a = self.pipe._affinity[fam].get(akey)
            if a is not None:
                a.expires = self.now + a.timeout
        if d.new_src is not None:
            self.src, self.sport = d.new_src
        if d.new_dst is not None:
            self.dst, self.dport = d.new_dst
        self.ct = "established" if d.original else "reply"
        self.snat = conn.snat
        return d

    def timeout(self, protocol: int, state: int) -> float:
        _, e = self.apply("ct_timeout", {"protocol": protocol, "ct_state": state})
        return float(e.param("seconds")) if e is not None else BUILTIN_CT_TIMEOUT

    def service(self, src_endpoint: int | None, *, from_host: bool) -> Result | None:
        """Service frontend → backend group → affinity or Maglev → DNAT.  A Result ends the walk."""
        fam, proto = self.fam, self.pkt.protocol
        _, fe = self.apply(
            f"service_frontend_{fam}", {"dst_addr": self.dst, "protocol": proto, "dst_port": self.dport}
        )
        if fe is None:
            _, na = self.apply(f"node_address_{fam}", {"dst_addr": self.dst})
            if na is None:
                return None
            _, fe = self.apply(f"node_port_{fam}", {"protocol": proto, "dst_port": self.dport})
            if fe is None:
                return None
        self.service_port_id = fe.param("service_port_id")
        flags = fe.param("flags")
        group = fe.param("backend_group")
        if flags & FLAG_LOCAL_PODS_USE_INTERNAL and src_endpoint is not None:
            group = self.service_port_id << 1
        action, g = self.apply("backend_group", {"backend_group": group})
        if g is None:
            return self.drop("unknown_backend_group")
        if action == "reject_empty_group":
            self.pipe.counters.drops["no_backend"] = self.pipe.counters.drops.get("no_backend", 0) + 1
            if proto == TCP:
                return self.result(Reject("tcp-reset"))
            return self.result(
                Reject("icmp-port-unreachable" if self.version == 4 else "icmpv6-port-unreachable")
            )
        if action == "drop_empty_group":
            return self.drop("no_backend")
        original = self.tuple5()
        affinity_key: tuple[str, tuple[int, int]] | None = None
        backend: tuple[int, int] | None = None
        if flags & FLAG_AFFINITY:
            affinity_key = (fam, (group, self.src))
            a = self.pipe._affinity[fam].get((group, self.src))
            lookup = (("backend_group", group), ("client_addr", self.src))
            if a is not None and a.expires > self.now:
                backend = (a.addr, a.port)
                params = (("addr", a.addr), ("port", a.port))
                self.hits.append(
                    Hit(f"affinity_{fam}", lookup, f"affinity_backend_{fam}", params, learned=True)
                )
            else:
                self.hits.append(Hit(f"affinity_{fam}", lookup, "no_affinity"))
        if backend is None:
            h = (
                client_hash(self.version, self.src)
                if flags & FLAG_AFFINITY
                else flow_hash(self.version, *original)
            )
            bucket = h % g.param("bucket_count")
            _, be = self.apply(f"maglev_backend_{fam}", {"backend_group": group, "bucket": bucket})
            if be is None:
                return self.drop("no_backend")
            backend = (be.param("addr"), be.param("port"))
        self.dst, self.dport = backend
        # The kernel marks SNAT flows in prerouting: host-originated flows (output hook) are not marked.
        snat = bool(flags & FLAG_SNAT_TO_NODE) and not from_host
        # Host traffic skips the destination pod's ingress policy on the service path too (the P4
        # program and the kernel do): NetworkPolicy always allows connections from the pod's node.
        res = self.forward(
            from_host=from_host, learn=original, egress_endpoint=src_endpoint, nat=True, snat_to_node=snat
        )
        if affinity_key is not None and isinstance(res.verdict, Forward | ToNode):
            timeout = float(fe.param("affinity_timeout"))
            fam_, akey = affinity_key
            self.pipe._affinity[fam_][akey] = _Affinity(backend[0], backend[1], timeout, self.now + timeout)
            learned = self.pipe._ct[fam].get(original)
            if learned is not None:
                learned.conn.affinity_key = affinity_key
        return res

    def forward(
        self,
        *,
        from_host: bool,
        learn: tuple[int, int, int, int, int] | None,
        egress_endpoint: int | None,
        nat: bool = False,
        snat_to_node: bool = False,
    ) -> Result:
        """Egress policy, FIB (and next hop), ingress policy; learn the flow if it leaves."""
        fam = self.fam
        if egress_endpoint is not None and learn is not None:
            _, ds = self.apply(f"ip_set_dst_{fam}", {"dst_addr": self.dst})
            sets = ds.param("sets") if ds is not None else 0
            action, _ = self.apply(
                "acl_egress",
                {
                    "endpoint_id": egress_endpoint,
                    "dst_sets": sets,
                    "protocol": self.pkt.protocol,
                    "dst_port": self.dport,
                },
            )
            if action != "acl_allow":
                return self.drop("policy_egress")
        action, r = self.apply(f"fib_{fam}", {"dst_addr": self.dst})
        verdict: Verdict
        if r is None:
            return self.drop("no_route")
        if action == "deliver_local":
            endpoint = r.param("endpoint_id")
            if learn is not None and not from_host:
                _, ss = self.apply(f"ip_set_src_{fam}", {"src_addr": self.src})
                sets = ss.param("sets") if ss is not None else 0
                action, _ = self.apply(
                    "acl_ingress",
                    {
                        "endpoint_id": endpoint,
                        "src_sets": sets,
                        "protocol": self.pkt.protocol,
                        "dst_port": self.dport,
                    },
                )
                if action != "acl_allow":
                    return self.drop("policy_ingress")
            verdict = Forward(r.param("port"), endpoint)
        elif action == "deliver_host":
            verdict = Forward(r.param("port"))
        else:
            nh_id = r.param("next_hop_id")
            action, nh = self.apply("next_hop", {"next_hop_id": nh_id})
            if nh is None:
                return self.drop("no_route")
            if action.startswith("via_vxlan"):
                vv = 4 if action.endswith("v4") else 6
                verdict = ToNode(
                    nh_id, "vxlan", ip_str(nh.param("vtep_addr"), vv), nh.param("port"), nh.param("vni")
                )
            else:
                vv = 4 if action.endswith("v4") else 6
                verdict = ToNode(nh_id, "direct", ip_str(nh.param("node_addr"), vv), nh.param("port"))
        if learn is not None and nat:
            kind = self.snat_kind(verdict, snat_to_node=snat_to_node, from_pod=egress_endpoint is not None)
            if kind is not None and not self.masquerade(verdict, kind):
                return self.drop("no_route")
        if learn is not None and not (self.pkt.protocol == TCP and self.pkt.tcp_flags & TCP_RST):
            if self.snat is None:
                # Linux gives every connection a NAT binding, at least a null one, which moves the
                # source port when the reply tuple is already a live connection's (a pod reaching a
                # backend directly from the port it uses towards the backend's service, say).
                self.sport = self.free_port(self.src)
            self.learn(learn)
        return self.result(verdict)

    def snat_kind(self, verdict: Verdict, *, snat_to_node: bool, from_pod: bool) -> SnatKind | None:
        """Which source NAT a new service flow gets on its way out (after the policy checks)."""
        if isinstance(verdict, Forward) and verdict.endpoint_id is None:
            return None  # delivered to the host stack: the kernel's input path has no masquerade
        if snat_to_node:
            return "to-node"
        if from_pod and isinstance(verdict, Forward) and verdict.port == self.pkt.in_port:
            # A pod reaching itself through a service: without SNAT its reply would stay inside the
            # pod and never be reverse-NATed (the kernel's `hairpin` masquerade).
            return "hairpin"
        return None

    def masquerade(self, verdict: Verdict, kind: SnatKind) -> bool:
        """Rewrite the source to the node's address on the egress port; False: no address to use."""
        assert isinstance(verdict, Forward | ToNode)
        addr = self.pipe.port_addresses.get(verdict.port, {}).get(self.version)
        if addr is None:
            addr = self.pipe.node_address(self.version)
        if addr is None:
            return False  # the kernel's masquerade drops a packet it has no source address for
        self.src, self.sport = addr, self.free_port(addr)
        self.snat = kind
        return True

    def free_port(self, addr: int) -> int:
        """The client's port if the reply tuple it gives is unused, else the next free one of its class.

        Two clients with the same source port masqueraded to one node address would otherwise give
        one reply tuple, and the second connection would steal the first one's replies.
        """
        flows = self.pipe._ct[self.fam]
        proto, want = self.pkt.protocol, self.sport

        def taken(port: int) -> bool:
            d = flows.get((self.dst, addr, proto, self.dport, port))
            return d is not None and d.conn.expires > self.now

        if not taken(want) or proto not in (TCP, UDP, SCTP):
            return want
        lo, hi = snat_port_range(want)
        span = hi - lo + 1
        for i in range(1, span):
            port = lo + (want - lo + i) % span
            if not taken(port):
                return port
        log.warning("snat: no free source port towards %s; the reply tuple is reused", self.dst)
        return want

    def learn(self, original: tuple[int, int, int, int, int]) -> None:
        """Both directions of the new connection, with the rewrites this packet got (NAT, SNAT)."""
        src, dst, proto, sport, dport = original
        conn = _Conn(proto, CT_NEW, 0.0, snat=self.snat)
        conn.expires = self.now + self.timeout(proto, CT_NEW)
        reply = (self.dst, self.src, proto, self.dport, self.sport)
        snat = (self.src, self.sport) != (src, sport)
        dnat = (self.dst, self.dport) != (dst, dport)
        flows = self.pipe._ct[self.fam]
        flows[original] = _CtDir(
            conn, True, (self.src, self.sport) if snat else None, (self.dst, self.dport) if dnat else None
        )
        flows[reply] = _CtDir(conn, False, (dst, dport) if dnat else None, (src, sport) if snat else None)
        self.ct = "new"
