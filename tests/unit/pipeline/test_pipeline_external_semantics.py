"""Service semantics on external frontends (NodePort, externalIP, LoadBalancer) with both traffic policies.

Two nodes: n1 (192.168.0.1, pods 10.0.1.0/24, pod gateway 10.0.1.1) receives
the flows; backends are pods on n1 and n2.  A flow that leaves n1 for n2 is
walked through n2's pipeline and its reply back through n2 and n1, so the
whole round trip runs on lowered entries.  For random backend sets, frontend
kinds, policies, affinity and clients (outside clients sharing source ports,
and a pod on n1), the property is:

* Cluster: the backend is one of all backends; the backend sees the node's
  address on the egress port (n1's veth gateway for a local backend, n1's
  node address for a remote one), the same for every packet of the flow,
  and no two live flows share a reply tuple;
* Local: outside clients reach only n1's backends (none: dropped) and the
  backend sees the client's own address; n1's pods use every backend;
* replies reach the client from the frontend address and port, addressed to
  the client's own address and port; ClientIP affinity keeps a client on one
  backend; no backend at all rejects.
"""

from __future__ import annotations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xpunet.ir.lb import (
    Affinity,
    Backend,
    BackendSet,
    Frontend,
    FrontendKind,
    LbNodeAddresses,
    LbNodeOverride,
    LbServicePort,
)
from xpunet.ir.policy import PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.lb.maglev import build_table
from xpunet.pipeline.entries import Exact, Lpm, make_entry
from xpunet.pipeline.interpreter import (
    TCP,
    TCP_ACK,
    TCP_SYN,
    Drop,
    Forward,
    Packet,
    Pipeline,
    Reject,
    Result,
    ToNode,
)
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

UPLINK, HOST, POD_CLIENT_PORT = 2, 1, 10
POD_CLIENT = "10.0.1.2"
NODE_ADDR = {"n1": "192.168.0.1", "n2": "192.168.0.2"}
GATEWAY_N1 = "10.0.1.1"
ROUTES = tuple(NodeRoute(n, (f"10.0.{i + 1}.0/24",), (), (NODE_ADDR[n],)) for i, n in enumerate(("n1", "n2")))
FRONTENDS: dict[FrontendKind, tuple[str, int]] = {
    "node_port": (NODE_ADDR["n1"], 30443),
    "external_ip": ("198.51.100.3", 443),
    "load_balancer": ("198.51.100.4", 443),
}


def backend_port(ip: str) -> int:
    return 100 + int(ip.rsplit(".", 1)[1])


def node_of(ip: str) -> str:
    return "n1" if ip.startswith("10.0.1.") else "n2"


def bset(backends: tuple[Backend, ...], when_empty: str) -> BackendSet:
    table = build_table([b.identity for b in backends]) if backends else ()
    return BackendSet(backends, table, when_empty)  # type: ignore[arg-type]  # "reject" | "drop"


def pipelines(
    backends: tuple[Backend, ...], kind: FrontendKind, local: bool, affinity: bool
) -> dict[str, Pipeline]:
    addr, port = FRONTENDS[kind]
    fronts = (
        Frontend("cluster_ip", "10.96.0.3", 443),
        Frontend(kind, None if kind == "node_port" else addr, port),
    )
    empty = "drop" if backends else "reject"  # as the lb service: reject only when nothing is usable
    svc = LbServicePort(
        3,
        "d",
        "s",
        "ipv4",
        "TCP",
        443,
        frontends=fronts,
        internal=bset(backends, "reject"),
        external=bset((), empty) if local else None,
        external_snat=not local,
        affinity=Affinity(600) if affinity else None,
    )
    out = {}
    for node in ("n1", "n2"):
        mine = tuple(b for b in backends if node_of(b.ip) == node)
        eps = [PolicyEndpoint("d", f"b{b.ip}", f"u{b.ip}", node, (b.ip,)) for b in mine]
        ports = {f"d/b{b.ip}": backend_port(b.ip) for b in mine}
        if node == "n1":
            eps.append(PolicyEndpoint("d", "client", "uc", "n1", (POD_CLIENT,)))
            ports["d/client"] = POD_CLIENT_PORT
        overrides = (LbNodeOverride(3, external=bset(mine, empty)),) if local else ()
        intents = NodeIntents(
            node,
            tuple(eps),
            (),
            (svc,),
            overrides,
            LbNodeAddresses(node, (NODE_ADDR[node],)),
            routes=ROUTES,
        )
        low = lower(intents, NodePorts(ports, host=HOST, uplinks=(UPLINK,)))
        assert low.problems == (), low.problems
        gateways = dict.fromkeys(ports.values(), (GATEWAY_N1,)) if node == "n1" else None
        pipe = Pipeline(low.entries, port_addresses=gateways)
        # A default route out of the uplink for clients outside the cluster (not lowered).
        pipe.write("INSERT", make_entry("fib_v4", {"dst_addr": Lpm(0, 0)}, "route_via", {"next_hop_id": 999}))
        router = {"node_addr": 0xC0A800FE, "port": UPLINK}
        pipe.write("INSERT", make_entry("next_hop", {"next_hop_id": Exact(999)}, "via_direct_v4", router))
        out[node] = pipe
    return out


def walk(pipes: dict[str, Pipeline], node: str, pkt: Packet, now: float) -> tuple[str, Result]:
    """The packet's last result (following it to the other node once), and the node it ended on."""
    r = pipes[node].process(pkt, now=now)
    if isinstance(r.verdict, ToNode) and r.verdict.node_addr in NODE_ADDR.values():
        nxt = next(n for n, a in NODE_ADDR.items() if a == r.verdict.node_addr)
        o = r.packet_out
        return nxt, pipes[nxt].process(
            Packet(UPLINK, o.src, o.dst, o.protocol, o.sport, o.dport, pkt.tcp_flags), now=now
        )
    return node, r


hosts = st.lists(st.integers(3, 60), max_size=5, unique=True)
backend_sets = st.tuples(hosts, hosts).map(
    lambda h: (
        tuple(Backend(f"10.0.1.{x}", 8443) for x in sorted(h[0]))
        + tuple(Backend(f"10.0.2.{x}", 8443) for x in sorted(h[1]))
    )
)
# Outside clients drawing from few source ports, so masqueraded flows clash on the node's address.
clients = st.lists(
    st.tuples(st.sampled_from(("203.0.113.5", "203.0.113.6", POD_CLIENT)), st.sampled_from((40000, 40001))),
    min_size=1,
    max_size=6,
    unique=True,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    backend_sets,
    st.sampled_from(sorted(FRONTENDS)),
    st.booleans(),
    st.booleans(),
    clients,
)
def test_external_frontend_semantics(
    backends: tuple[Backend, ...],
    kind: FrontendKind,
    local: bool,
    affinity: bool,
    flows: list[tuple[str, int]],
) -> None:
    pipes = pipelines(backends, kind, local, affinity)
    fe_addr, fe_port = FRONTENDS[kind]
    every = {(b.ip, b.port) for b in backends}
    on_n1 = {(b.ip, b.port) for b in backends if node_of(b.ip) == "n1"}
    seen_tuples: set[tuple[str, int, str, int]] = set()
    chosen: dict[str, set[tuple[str, int]]] = {}
    for t, (client, sport) in enumerate(flows):
        from_pod = client == POD_CLIENT
        in_port = POD_CLIENT_PORT if from_pod else UPLINK
        syn = Packet(in_port, client, fe_addr, TCP, sport, fe_port, TCP_SYN)
        first = pipes["n1"].process(syn, now=t)
        usable = every if (from_pod or not local) else on_n1
        if not backends:
            assert first.verdict == Reject("tcp-reset")
            continue
        if not usable:
            assert first.verdict == Drop("no_backend")
            event("local: no local backend")
            continue
        out = first.packet_out
        backend = (out.dst, out.dport)
        assert backend in usable
        chosen.setdefault(client, set()).add(backend)
        remote = node_of(out.dst) == "n2"
        if local:
            assert (out.src, out.sport) == (client, sport)
            assert first.snat is None
        else:
            assert out.src == (NODE_ADDR["n1"] if remote else GATEWAY_N1)
            assert first.snat == "to-node"
        tup = (out.src, out.sport, out.dst, out.dport)
        assert tup not in seen_tuples  # a reply tuple is never shared by two live flows
        seen_tuples.add(tup)
        where, arrived = walk(pipes, "n1", syn, now=t)
        assert arrived.verdict == Forward(backend_port(out.dst), backend_port(out.dst))
        assert where == node_of(out.dst)
        event(f"{'local' if local else 'cluster'} {'remote' if remote else 'local'} backend")
        for k in range(2):  # later packets of the flow: the same backend and source
            again = pipes["n1"].process(Packet(in_port, client, fe_addr, TCP, sport, fe_port, TCP_ACK), now=t)
            assert again.ct == "established", k
            assert (again.packet_out.src, again.packet_out.sport, *where_to(again)) == tup
        # The backend answers whom it saw; the client hears the frontend.
        reply = Packet(backend_port(out.dst), out.dst, out.src, TCP, out.dport, out.sport, TCP_SYN | TCP_ACK)
        back_node, back = walk(pipes, node_of(out.dst), reply, now=t)
        assert back_node == "n1"
        assert back.ct == "reply"
        b = back.packet_out
        assert (b.src, b.sport, b.dst, b.dport) == (fe_addr, fe_port, client, sport)
        if from_pod:
            assert back.verdict == Forward(POD_CLIENT_PORT, POD_CLIENT_PORT)
        else:
            assert isinstance(back.verdict, ToNode)
            assert back.verdict.node_addr == "192.168.0.254"
    if affinity:
        assert all(len(v) == 1 for v in chosen.values())  # ClientIP: a client keeps its backend


def where_to(r: Result) -> tuple[str, int]:
    return r.packet_out.dst, r.packet_out.dport
