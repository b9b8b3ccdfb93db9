"""Kernel target, learned state with real packets: ClientIP affinity entries and conntrack timeouts.

Affinity is learned from the packet path into the dynamic maps ``aff4``/``aff4p``
(group . client → backend) with the intent's timeout; the tests read those maps
and the kernel's conntrack table of the node namespace, and run real TCP/UDP
flows from pod namespaces.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology, in_ns
from xpunet.ir.lb import Affinity, Backend, BackendSet, ConntrackTimeouts, Frontend, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

PORTS = {"client": 11, "web": 12, "web2": 13, "web3": 14}
ADDRS = {
    "client": ("10.0.1.2", "fd00:1::2"),
    "web": ("10.0.1.3", "fd00:1::3"),
    "web2": ("10.0.1.4", "fd00:1::4"),
    "web3": ("10.0.1.5", "fd00:1::5"),
}
SERVICE_ID = 3
GROUP = SERVICE_ID * 2  # the internal backend set's group
MARK = 0x40000000 | GROUP  # the affinity key's first part: the connection mark (affinity bit, group)
TIMEOUTS = ConntrackTimeouts(tcp_time_wait=97, udp=17, udp_stream=77)
NODE_PORTS = NodePorts({f"d/{n}": p for n, p in PORTS.items()}, host=1)


def entries(
    *backends: str, family: str = "ipv4", timeouts: ConntrackTimeouts = TIMEOUTS
) -> tuple[TableEntry, ...]:
    v = 0 if family == "ipv4" else 1
    bs = tuple(Backend(ADDRS[n][v], 8080) for n in sorted(backends))
    vip = "10.96.0.11" if family == "ipv4" else "fd00:96::11"
    svc = LbServicePort(
        SERVICE_ID,
        "d",
        "sticky",
        family,  # type: ignore[arg-type]  # the test passes "ipv4" or "ipv6"
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", vip, 80),),
        internal=BackendSet(bs, build_table([b.identity for b in bs])),
        affinity=Affinity(600),
    )
    eps = tuple(PolicyEndpoint("d", n, f"u-{n}", "n1", ADDRS[n]) for n in PORTS)
    low = lower(NodeIntents("n1", eps, services=(svc,), conntrack=timeouts), NODE_PORTS)
    assert low.problems == ()
    return low.entries


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create_node()
        for name, port in PORTS.items():
            t.add_pod(name, port, *ADDRS[name])
        for name in ("web", "web2", "web3"):
            t.serve(name, "tcp/80", "tcp/8080", "udp/53")
        yield t
    finally:
        t.close()


@pytest.fixture
async def target(topo: Topology) -> AsyncIterator[KernelTarget]:
    kt = KernelTarget(netns=topo.node, port_names={p.port: p.ifname for p in topo.pods.values()})
    try:
        yield kt
    finally:
        await kt.close()


def learned(topo: Topology, v: int = 4) -> dict[tuple[int, object], tuple[str, int, int]]:
    """(mark, client) → (backend address, port, timeout) from the node's affinity maps."""
    out: dict[tuple[int, object], tuple[str, int, int]] = {}
    ports: dict[tuple[int, object], int] = {}
    for name in (f"aff{v}", f"aff{v}p"):
        doc = json.loads(in_ns(topo.node, "nft", "-j", "-n", "list", "map", "inet", "xpunet", name).stdout)
        for obj in doc["nftables"]:
            for key, value in obj.get("map", {}).get("elem", ()):
                group, client = key["elem"]["val"]["concat"]
                if name.endswith("p"):
                    ports[(group, client)] = value
                else:
                    out[(group, client)] = (value, 0, key["elem"]["timeout"])
    return {k: (a, ports.get(k, 0), t) for k, (a, _, t) in out.items()}


def served_by(got: list[str]) -> set[str]:
    assert all(g.startswith("OK") for g in got), got
    return {g.split()[1] for g in got}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_affinity_is_learned_kept_across_set_changes_and_dropped_with_its_backend(
    topo: Topology, target: KernelTarget, family: str
) -> None:
    v, vip = (4, "10.96.0.11") if family == "ipv4" else (6, "fd00:96::11")
    client = ADDRS["client"][0 if v == 4 else 1]
    await target.apply(diff((), entries("web", "web2", family=family)))
    # Generous timeout: a pod's first IPv6 packet may wait for neighbour discovery.
    first = served_by(topo.connect("client", [(vip, 80)] * 6, timeout=10))
    assert len(first) == 1
    (chosen,) = first
    entry = learned(topo, v)
    # Keyed by the connection mark (affinity bit, group) and the client (IPv6: a hash of it).
    assert [k[0] for k in entry] == [MARK]
    if v == 4:
        assert list(entry) == [(MARK, client)]
    ((backend, port, timeout),) = entry.values()
    assert (backend, port) == (ADDRS[chosen][v // 6], 8080)
    assert timeout == 600  # the intent's affinity timeout

    # A new backend joins and the other one leaves: the remembered backend stays.
    other = "web2" if chosen == "web" else "web"
    before = entries("web", "web2", family=family)
    after = entries(chosen, "web3", family=family)
    await target.apply(diff(before, after))
    assert served_by(topo.connect("client", [(vip, 80)] * 6)) == {chosen}
    assert other not in served_by(topo.connect("client", [(vip, 80)]))

    # The remembered backend leaves: its entry is purged, the client moves and sticks again.
    await target.apply(diff(after, entries("web3", family=family)))
    assert learned(topo, v) == {}
    assert served_by(topo.connect("client", [(vip, 80)] * 4)) == {"web3"}
    assert [x[:2] for x in learned(topo, v).values()] == [(ADDRS["web3"][v // 6], 8080)]

    # The service goes away: its entries go with it.
    await target.apply(diff(entries("web3", family=family), ()))
    assert learned(topo, v) == {}


async def test_a_remembered_backend_wins_over_the_hash(topo: Topology, target: KernelTarget) -> None:
    await target.apply(diff((), entries("web", "web2", "web3")))
    client = ADDRS["client"][0]
    for name in ("web", "web2", "web3"):
        # What the client would get by hash does not matter: the learned entry decides.
        key = f"{MARK} . {client}"
        in_ns(topo.node, "nft", f"add element inet xpunet aff4 {{ {key} timeout 60s : {ADDRS[name][0]} }}")
        in_ns(topo.node, "nft", f"add element inet xpunet aff4p {{ {key} timeout 60s : 8080 }}")
        assert served_by(topo.connect("client", [("10.96.0.11", 80)] * 3)) == {name}
        in_ns(topo.node, "nft", f"delete element inet xpunet aff4 {{ {key} }}")
        in_ns(topo.node, "nft", f"delete element inet xpunet aff4p {{ {key} }}")


async def test_reconcile_purges_entries_whose_backend_or_group_went_while_no_datapath_ran(
    topo: Topology, target: KernelTarget
) -> None:
    await target.apply(diff((), entries("web", "web2")))
    client = ADDRS["client"][0]
    stale = {
        f"{MARK} . {client}": ADDRS["web3"][0],  # web3 is not in the group
        f"{0x40000000 | 99} . {client}": ADDRS["web"][0],  # no group 99
        f"{MARK} . 10.0.9.9": ADDRS["web2"][0],  # still right: kept
    }
    for key, backend in stale.items():
        in_ns(topo.node, "nft", f"add element inet xpunet aff4 {{ {key} timeout 60s : {backend} }}")
        in_ns(topo.node, "nft", f"add element inet xpunet aff4p {{ {key} timeout 60s : 8080 }}")
    fresh = KernelTarget(netns=topo.node, port_names=target.state.port_names)
    try:
        result = await fresh.reconcile(entries("web", "web2"))
        assert (result.added, result.deleted) == (0, 0)
    finally:
        await fresh.close()
    assert {k: v[0] for k, v in learned(topo).items()} == {(MARK, "10.0.9.9"): ADDRS["web2"][0]}


def conntrack_timeout(topo: Topology, *args: str) -> int:
    out = in_ns(topo.node, "conntrack", "-L", *args).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    m = re.match(r"^\w+\s+\d+\s+(\d+)\s", lines[0])
    assert m is not None, lines[0]
    return int(m.group(1))


async def test_conntrack_timeouts_of_the_intent_apply_to_new_flows(
    topo: Topology, target: KernelTarget
) -> None:
    await target.apply(diff((), entries("web")))
    web = ADDRS["web"][0]
    # One UDP request and its reply: not yet a stream, the "unreplied" (udp) timeout, 17 s
    # instead of the kernel's 30 (a stream, after 2 s of traffic, gets udp_stream).
    assert topo.connect("client", [(web, 53)], kind="udp")[0].startswith("OK web")
    assert 0 < conntrack_timeout(topo, "-p", "udp", "-d", web, "--dport", "53") <= 17
    # TCP closed by the server: TIME_WAIT (closing), 97 s instead of 120.
    assert topo.connect("client", [(web, 80)])[0].startswith("OK web")
    assert 60 < conntrack_timeout(topo, "-p", "tcp", "-d", web, "--dport", "80") <= 97


async def test_changed_timeouts_replace_the_policy_and_reconcile_leaves_it(
    topo: Topology, target: KernelTarget
) -> None:
    await target.apply(diff((), entries("web")))
    names = {k[1][0] for k in target.state.items() if k[0] == "@ct_timeout"}
    assert len(names) == 4  # TCP and UDP, IPv4 and IPv6
    fresh = KernelTarget(netns=topo.node, port_names=target.state.port_names)
    try:
        again = await fresh.reconcile(entries("web"))
        assert again.added == again.deleted == 0
    finally:
        await fresh.close()
    listing = in_ns(topo.node, "nft", "list", "table", "inet", "xpunet").stdout
    assert all(f"ct timeout {n}" in listing for n in names)
    # Only the TCP policy changes: it is replaced (new object, chain, map element; old ones gone).
    changed = entries("web", timeouts=ConntrackTimeouts(tcp_time_wait=55, udp=17, udp_stream=77))
    await target.apply(diff(entries("web"), changed))
    now = {k[1][0] for k in target.state.items() if k[0] == "@ct_timeout"}
    assert len(now - names) == len(names - now) == 2
    listing = in_ns(topo.node, "nft", "list", "table", "inet", "xpunet").stdout
    assert all(f"ct timeout {n}" in listing for n in now)
    assert not any(f"ct timeout {n}" in listing for n in names - now)
    assert topo.connect("client", [(ADDRS["web"][0], 80)])[0].startswith("OK web")
    assert conntrack_timeout(topo, "-p", "tcp", "-d", ADDRS["web"][0], "--dport", "80") <= 55
