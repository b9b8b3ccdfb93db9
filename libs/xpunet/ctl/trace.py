"""``xpunetctl trace``: walk one packet through the pipeline of the live intents, table by table.

Reads the Kubernetes objects (``xpunet-k8s``) to resolve names and the
intents (``xpunet-intent``: ``node.<node>.`` and ``global.``) of the nodes the
packet crosses, lowers them with the same code the datapath uses, and runs the
reference interpreter.  A packet routed to another node continues there, entering
on that node's uplink.  Examples::

    xpunetctl trace --from default/client --to default/web-0:80/tcp
    xpunetctl trace --from default/client --to svc/default/web:443
    xpunetctl trace --from 203.0.113.9 --node node-1 --to default/web-0:80

Ports in the output are the trace's own numbering (the datapath's vNIC ports
are not published yet): pods in name order from 100, host 1, uplink 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S
from xpunet.bus.errors import BusUnavailable
from xpunet.bus.nats import connect as bus_connect
from xpunet.ctl._args import add_reach_arguments, reach_urls
from xpunet.ctl._run import run_until_signal
from xpunet.ir import lb as lb_ir
from xpunet.ir.policy import POLICY_EP_SCHEMA, POLICY_IPSET_SCHEMA, IPSet, PolicyEndpoint
from xpunet.ir.routes import ROUTES_NODE_SCHEMA, NodeRoute, RouteError, routes_from_nodes
from xpunet.model.objects import K8sObject, Node, Pod, Service
from xpunet.pipeline.interpreter import TCP_SYN, Packet, Pipeline, Result, ToNode
from xpunet.pipeline.lowering import PROTO_NUMBERS, Lowered, NodePorts, lower, node_intents_from_kv
from xpunet.pipeline.tracefmt import TraceNames, format_packet, format_result
from xpunet.wire import WireError, decode, from_wire

HOST_PORT, UPLINK_PORT, FIRST_POD_PORT = 1, 2, 100
MAX_NODES = 4  # a packet crosses at most source node → destination node; more means a loop

_INTENT_CLASSES: Mapping[str, type] = {
    POLICY_EP_SCHEMA: PolicyEndpoint,
    POLICY_IPSET_SCHEMA: IPSet,
    lb_ir.LB_SERVICE_SCHEMA: lb_ir.LbServicePort,
    lb_ir.LB_NODE_OVERRIDE_SCHEMA: lb_ir.LbNodeOverride,
    lb_ir.LB_NODE_ADDRESSES_SCHEMA: lb_ir.LbNodeAddresses,
    lb_ir.LB_CONNTRACK_SCHEMA: lb_ir.ConntrackTimeouts,
    ROUTES_NODE_SCHEMA: NodeRoute,
}


class TraceError(ValueError):
    """The trace cannot be set up (names the argument or object)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    pod: Pod | None = None
    port: int = 0
    protocol: str = "TCP"


def decode_intent(key: str, data: bytes) -> object:
    """One intent value; raises WireError naming the key."""
    schema, body = decode(data)
    cls = _INTENT_CLASSES.get(schema)
    if cls is None:
        raise WireError("intent", key, f"unknown schema {schema!r}")
    return from_wire(cls, body)


def _pods(objects: list[K8sObject]) -> list[Pod]:
    return sorted((o for o in objects if isinstance(o, Pod)), key=lambda p: (p.namespace, p.name))


def _split_port(text: str) -> tuple[str, int, str]:
    """``name:80/tcp`` → (name, 80, "TCP"); port and protocol are optional."""
    if ":" not in text:
        return text, 0, "TCP"
    name, _, rest = text.rpartition(":")
    port, _, proto = rest.partition("/")
    proto = (proto or "tcp").upper()
    if proto not in ("TCP", "UDP", "SCTP"):
        raise TraceError(f"{text!r}: unknown protocol {proto.lower()!r} (tcp, udp, sctp)")
    try:
        return name, int(port or 0), proto
    except ValueError as exc:
        raise TraceError(f"{text!r}: port {port!r} is not a number") from exc


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve(spec: str, objects: list[K8sObject], *, family: int | None = None) -> Endpoint:
    """``ns/pod[:port[/proto]]``, ``svc/ns/name[:port[/proto]]`` or ``ip[:port[/proto]]``."""
    if spec.startswith("svc/"):
        name, port, proto = _split_port(spec[4:])
        ns, _, svc_name = name.partition("/")
        svc = next(
            (o for o in objects if isinstance(o, Service) and (o.namespace, o.name) == (ns, svc_name)), None
        )
        if svc is None:
            raise TraceError(f"service {ns}/{svc_name} not found in {BUCKET_K8S}")
        ips = [ip for ip in svc.cluster_ips if family is None or ipaddress.ip_address(ip).version == family]
        if not ips:
            raise TraceError(
                f"service {ns}/{svc_name} has no cluster IP" + (f" of IPv{family}" if family else "")
            )
        if not port and svc.ports:
            port, proto = svc.ports[0].port, svc.ports[0].protocol
        return Endpoint(ips[0], None, port, proto)
    if spec.startswith("["):  # [v6]:port/proto
        ip, _, rest = spec[1:].partition("]")
        _, port, proto = _split_port("x" + rest)
        return Endpoint(ip, None, port, proto)
    if _is_ip(spec):
        return Endpoint(spec)
    if spec.count(":") == 1 and _is_ip(spec.partition(":")[0]):
        ip, port, proto = _split_port(spec)
        return Endpoint(ip, None, port, proto)
    name, port, proto = _split_port(spec)
    ns, _, pod_name = name.partition("/")
    pod = next((p for p in _pods(objects) if (p.namespace, p.name) == (ns, pod_name)), None)
    if pod is None:
        raise TraceError(f"pod {name} not found in {BUCKET_K8S}")
    ips = [ip for ip in pod.ips if family is None or ipaddress.ip_address(ip).version == family]
    if not ips:
        raise TraceError(f"pod {name} has no IP" + (f" of IPv{family}" if family else ""))
    return Endpoint(ips[0], pod, port, proto)


def _names(low: Lowered, objects: list[K8sObject], intents: Mapping[str, object]) -> TraceNames:
    services = {
        v.id: f"{v.namespace}/{v.service} {v.protocol.lower()}/{v.port}"
        for v in intents.values()
        if isinstance(v, lb_ir.LbServicePort)
    }
    return TraceNames(
        endpoints=dict(low.endpoints),
        ports={HOST_PORT: "host", UPLINK_PORT: "uplink"},
        src_sets={b: s for s, b in low.src_set_bits.items()},
        dst_sets={b: s for s, b in low.dst_set_bits.items()},
        services=services,
        next_hops=dict(low.next_hops),
    )


def run_trace(
    objects: list[K8sObject],
    intents: Mapping[str, object],
    *,
    src: str,
    dst: str,
    node: str | None = None,
    sport: int = 40000,
    now: float = 0.0,
) -> tuple[list[str], Result]:
    """The trace lines and the last node's result.  Pure: everything comes in as arguments."""
    target = resolve(dst, objects)
    family = ipaddress.ip_address(target.ip).version
    source = resolve(src, objects, family=family)
    pods = _pods(objects)
    port_of = {f"{p.namespace}/{p.name}": FIRST_POD_PORT + i for i, p in enumerate(pods)}
    routes = [v for k, v in intents.items() if isinstance(v, NodeRoute)]
    values = dict(intents)
    if not routes:  # no routing service publishing yet: derive routes from the Node objects
        try:
            for r in routes_from_nodes(o for o in objects if isinstance(o, Node)):
                values[f"global.routes.node.{r.node}"] = r
        except RouteError as exc:
            raise TraceError(str(exc)) from exc
    here = node or (source.pod.node if source.pod is not None else None)
    if here is None:
        raise TraceError("--node is needed: the source is not a pod scheduled on a node")
    in_port = port_of[f"{source.pod.namespace}/{source.pod.name}"] if source.pod is not None else UPLINK_PORT
    proto = PROTO_NUMBERS[target.protocol]
    pkt = Packet(
        in_port,
        source.ip,
        target.ip,
        proto,
        sport if proto != 1 else 0,
        target.port,
        TCP_SYN if proto == 6 else 0,
    )
    lines = [f"trace {format_packet(pkt)}"]
    ports = NodePorts(port_of, host=HOST_PORT, uplinks=(UPLINK_PORT,))
    for _ in range(MAX_NODES):
        low = lower(node_intents_from_kv(here, values), ports)
        result = Pipeline(low.entries).process(pkt, now=now)
        names = _names(low, objects, values)
        lines.append("")
        lines += format_result(result, names, title=f"node {here}: {format_packet(pkt)}")
        lines += [f"  note: {p}" for p in low.problems] + [f"  overflow: {o}" for o in low.overflow]
        if not isinstance(result.verdict, ToNode):
            return lines, result
        nxt = names.next_hops.get(result.verdict.next_hop_id)
        if nxt is None:
            raise TraceError(f"next hop {result.verdict.next_hop_id} names no node")
        here = nxt
        out = result.packet_out
        pkt = Packet(UPLINK_PORT, out.src, out.dst, out.protocol, out.sport, out.dport, out.tcp_flags)
    raise TraceError(f"the packet crossed more than {MAX_NODES} nodes: a routing loop")


async def read_state(
    urls: list[str],
    *,
    connect_within: float,
    k8s_bucket: str = BUCKET_K8S,
    intent_bucket: str = BUCKET_INTENT,
) -> tuple[list[K8sObject], dict[str, object], list[str]]:
    """Kubernetes objects, decoded intents (``node.*`` and ``global.*``) and problems with bad values."""
    from xpunet.wire import decode_k8s

    bus = await bus_connect(urls, name="xpunetctl-trace", initial_timeout=connect_within)
    problems: list[str] = []
    try:
        k8s = await bus.kv(k8s_bucket)
        objects: list[K8sObject] = []
        for prefix in ("pod.", "node.", "service."):
            for key in await k8s.keys(prefix):
                entry = await k8s.get(key)
                if entry is None or entry.value is None:
                    continue
                try:
                    objects.append(decode_k8s(entry.value))
                except WireError as exc:
                    problems.append(f"{k8s_bucket} {key}: {exc}")
        store = await bus.kv(intent_bucket)
        intents: dict[str, object] = {}
        for prefix in ("node.", "global."):
            for key in await store.keys(prefix):
                entry = await store.get(key)
                if entry is None or entry.value is None:
                    continue
                try:
                    intents[key] = decode_intent(key, entry.value)
                except WireError as exc:
                    problems.append(f"{intent_bucket} {key}: {exc}")
        return objects, intents, problems
    finally:
        await bus.close()


async def trace(urls: list[str], args: argparse.Namespace) -> int:
    try:
        objects, intents, problems = await read_state(
            urls, connect_within=args.timeout, k8s_bucket=args.k8s_bucket, intent_bucket=args.intent_bucket
        )
    except BusUnavailable:
        print(f"xpunetctl trace: cannot reach NATS at {', '.join(urls)}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    try:
        lines, _ = run_trace(objects, intents, src=args.src, dst=args.dst, node=args.node, sport=args.sport)
    except TraceError as exc:
        print(f"xpunetctl trace: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "trace",
        help="walk a packet through a node's pipeline and print every table hit",
        description="Lower the live intents of the nodes on the path and walk one packet through the "
        "reference pipeline. Exit 0 when the trace ran (whatever the verdict), 2 when it could not.",
    )
    parser.add_argument("--from", dest="src", required=True, metavar="NS/POD|IP", help="the source")
    parser.add_argument(
        "--to",
        dest="dst",
        required=True,
        metavar="NS/POD:PORT/PROTO|svc/NS/NAME:PORT|IP:PORT",
        help="the destination",
    )
    parser.add_argument("--node", help="the node the packet enters (default: the source pod's node)")
    parser.add_argument("--sport", type=int, default=40000, help="source port (40000)")
    parser.add_argument("--k8s-bucket", default=BUCKET_K8S, help=argparse.SUPPRESS)
    parser.add_argument("--intent-bucket", default=BUCKET_INTENT, help=argparse.SUPPRESS)
    add_reach_arguments(parser)
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    urls = reach_urls(args)
    return run_until_signal(lambda _stop: trace(urls, args))
