"""Text of a packet trace: each table hit and the verdict, for a network engineer's eye.  Pure.

One line per table application: the table, what was looked up (addresses as
addresses, protocols by name, set bits by set name, ports by pod), and what
happened (the entry's action and parameters, ``miss →`` the default action,
or ``learned`` for conntrack and affinity entries).  The verdict line says
where the packet goes and what was rewritten on the way (DNAT, SNAT to the
node, hairpin masquerade, a remapped source port; on replies reverse NAT and
un-SNAT).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from xpunet.pipeline.entries import ip_str
from xpunet.pipeline.interpreter import Forward, Hit, Packet, Reject, Result, ToNode

PROTO_NAMES: Mapping[int, str] = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_TCP_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"))


@dataclass(frozen=True, slots=True)
class TraceNames:
    """What the numbers mean, from the lowering (``Lowered``) and the cluster."""

    endpoints: Mapping[int, str] = field(default_factory=dict)  # endpoint id / port → "ns/pod"
    ports: Mapping[int, str] = field(default_factory=dict)  # other ports → "host", "uplink"
    src_sets: Mapping[int, str] = field(default_factory=dict)  # bit → set id
    dst_sets: Mapping[int, str] = field(default_factory=dict)
    services: Mapping[int, str] = field(default_factory=dict)  # service port id → "ns/svc tcp/80"
    next_hops: Mapping[int, str] = field(default_factory=dict)  # next hop id → node


def _version(table_or_action: str) -> int:
    return 6 if table_or_action.endswith("_v6") else 4


def _sets(bits: int, names: Mapping[int, str]) -> str:
    found = [names.get(i, f"bit{i}") for i in range(bits.bit_length()) if bits >> i & 1]
    return "{" + ", ".join(found) + "}" if found else "{}"


def _value(name: str, value: int, where: str, names: TraceNames) -> str:
    if name.endswith("addr") or name in ("addr", "node_addr", "vtep_addr"):
        return ip_str(value, _version(where))
    if name == "protocol":
        return PROTO_NAMES.get(value, str(value))
    if name in ("in_port", "port", "endpoint_id"):
        who = names.endpoints.get(value) or names.ports.get(value)
        return f"{value} ({who})" if who else str(value)
    if name in ("src_sets", "sets") and where in (
        "ip_set_src_v4",
        "ip_set_src_v6",
        "set_src_sets",
        "acl_ingress",
    ):
        return _sets(value, names.src_sets)
    if name in ("dst_sets", "sets"):
        return _sets(value, names.dst_sets)
    if name == "service_port_id":
        svc = names.services.get(value)
        return f"{value} ({svc})" if svc else str(value)
    if name == "next_hop_id":
        node = names.next_hops.get(value)
        return f"{value} (node {node})" if node else str(value)
    if name == "flags":
        return (
            "-"
            if value == 0
            else "+".join(
                n for b, n in ((1, "affinity"), (2, "local-pods-internal"), (4, "snat")) if value & b
            )
        )
    return str(value)


def _kv(pairs: tuple[tuple[str, int], ...], where: str, names: TraceNames) -> str:
    return " ".join(f"{n}={_value(n, v, where, names)}" for n, v in pairs)


def format_hit(i: int, hit: Hit, names: TraceNames) -> str:
    looked = _kv(hit.lookup, hit.table, names)
    if hit.learned:
        outcome = f"learned {hit.action} {_kv(hit.params, hit.action, names)}"
    elif hit.entry is None:
        outcome = f"miss → {hit.action}"
    else:
        outcome = f"{hit.action} {_kv(hit.params, hit.action, names)}"
        if hit.entry.priority:
            outcome += f"  [prio {hit.entry.priority}]"
        if hit.entry.origin:
            outcome += f"  ({hit.entry.origin})"
    return f"  {i:>2}  {hit.table:<20} {looked:<52} → {outcome.rstrip()}"


def format_packet(pkt: Packet) -> str:
    proto = PROTO_NAMES.get(pkt.protocol, str(pkt.protocol))
    flags = "|".join(n for b, n in _TCP_FLAGS if pkt.tcp_flags & b) if pkt.protocol == 6 else ""
    src = f"[{pkt.src}]" if ":" in pkt.src else pkt.src
    dst = f"[{pkt.dst}]" if ":" in pkt.dst else pkt.dst
    return f"{src}:{pkt.sport} → {dst}:{pkt.dport} {proto}" + (f" [{flags}]" if flags else "")


_SNAT_LABELS: Mapping[str, str] = {"to-node": "SNAT to node", "hairpin": "masquerade (hairpin)"}


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def format_verdict(result: Result, names: TraceNames) -> str:
    v = result.verdict
    if isinstance(v, Forward):
        who = (
            names.endpoints.get(v.endpoint_id)
            if v.endpoint_id is not None
            else names.ports.get(v.port, "host")
        )
        text = f"FORWARD out port {v.port} ({who})"
    elif isinstance(v, ToNode):
        node = names.next_hops.get(v.next_hop_id, v.node_addr)
        how = f"VXLAN vni {v.vni} to {v.node_addr}" if v.via == "vxlan" else f"routed to {v.node_addr}"
        text = f"TO NODE {node} ({how}, out port {v.port})"
    elif isinstance(v, Reject):
        text = f"REJECT ({v.kind})"
    else:
        text = f"DROP ({v.reason.replace('_', ' ')})"
    a, b = result.packet_in, result.packet_out
    reply = result.ct == "reply"
    if (a.dst, a.dport) != (b.dst, b.dport):
        # On a reply the destination goes back from the node's address to the client (un-SNAT).
        text += f"; {'un-SNAT' if reply else 'DNAT'} {_ep(a.dst, a.dport)} → {_ep(b.dst, b.dport)}"
    if (a.src, a.sport) != (b.src, b.sport):
        # No SNAT kind: the port moved so the reply tuple stays unique (Linux's null NAT binding).
        label = "reverse NAT" if reply else _SNAT_LABELS.get(result.snat or "", "source port remapped")
        text += f"; {label} {_ep(a.src, a.sport)} → {_ep(b.src, b.sport)}"
    if result.ct != "none":
        text += f"; conntrack {result.ct}"
    return text


def format_result(result: Result, names: TraceNames, *, title: str = "") -> list[str]:
    lines = [title or format_packet(result.packet_in)]
    lines += [format_hit(i, h, names) for i, h in enumerate(result.hits, start=1)]
    lines.append(f"  verdict: {format_verdict(result, names)}")
    return lines
