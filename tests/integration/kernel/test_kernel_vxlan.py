"""Kernel target, VXLAN next hops with real packets: pod ↔ pod across two node namespaces over the overlay.

Two node namespaces joined by one veth pair (the underlay, 172.31.0.0/24 as in
the local cluster); each node has one pod; routes come from NodeRoutes with
``next_hop="vxlan"`` through the pipeline's own lowering.  The overlay device
is either created by the target or, as the local cluster does in its VXLAN
mode, made beforehand as ``vxlan0`` (VNI 4096, head-end replication) and
adopted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology, in_ns, programmed
from xpunet.datapath.kernel.vxlan import LINK_ALIAS, vtep_mac
from xpunet.ir.policy import PolicyEndpoint
from xpunet.ir.routes import NodeRoute
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

pytestmark = pytest.mark.root

UNDERLAY = {"n1": "172.31.0.11", "n2": "172.31.0.12"}
PODS = {"n1": ("a", "10.244.1.2", "fd00:10:244:1::2"), "n2": ("b", "10.244.2.2", "fd00:10:244:2::2")}
POD_PORT = 11
UPLINK_PORT = 2


def routes() -> tuple[NodeRoute, ...]:
    return tuple(
        NodeRoute(
            node,
            (f"10.244.{i}.0/24",),
            (f"fd00:10:244:{i}::/64",),
            (UNDERLAY[node],),
            "vxlan",
            4096,
        )
        for i, node in ((1, "n1"), (2, "n2"))
    )


def entries(node: str) -> tuple[TableEntry, ...]:
    name, v4, v6 = PODS[node]
    eps = (PolicyEndpoint("d", name, f"u-{name}", node, (v4, v6)),)
    ports = NodePorts({f"d/{name}": POD_PORT}, host=1, uplinks=(UPLINK_PORT,))
    low = lower(NodeIntents(node, eps, routes=routes()), ports)
    assert low.problems == ()
    return low.entries


@dataclass
class Nodes:
    topos: dict[str, Topology]


def cluster_vxlan0(topo: Topology, node: str, other: str) -> None:
    """What the local cluster's VXLAN mode makes in a node (libs/xpunet/cluster/topology.py)."""
    in_ns(
        topo.node,
        *f"ip link add vxlan0 type vxlan id 4096 local {UNDERLAY[node]} dstport 4789".split(),
        *["dev", "uplink0", "nolearning"],
    )
    in_ns(topo.node, "ip", "link", "set", "vxlan0", "up")
    in_ns(topo.node, *f"bridge fdb append 00:00:00:00:00:00 dev vxlan0 dst {UNDERLAY[other]}".split())


@pytest.fixture(params=["created", "adopted"])
def nodes(request: pytest.FixtureRequest) -> Iterator[Nodes]:
    topos = {"n1": Topology(), "n2": Topology()}
    try:
        for node, t in topos.items():
            t.create_node()
            name, v4, v6 = PODS[node]
            t.add_pod(name, POD_PORT, v4, v6)
            t.serve(name, "tcp/80", "udp/53")
        n1, n2 = topos["n1"].node, topos["n2"].node
        in_ns(n1, "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0", "netns", n2)
        for node, t in topos.items():
            in_ns(t.node, "ip", "addr", "add", f"{UNDERLAY[node]}/24", "dev", "uplink0")
            in_ns(t.node, "ip", "link", "set", "uplink0", "up")
        if request.param == "adopted":
            cluster_vxlan0(topos["n1"], "n1", "n2")
            cluster_vxlan0(topos["n2"], "n2", "n1")
        yield Nodes(topos)
    finally:
        for t in topos.values():
            t.close()


@pytest.fixture
async def targets(nodes: Nodes) -> AsyncIterator[dict[str, KernelTarget]]:
    out = {
        node: KernelTarget(
            netns=t.node, port_names={POD_PORT: t.pods[PODS[node][0]].ifname, UPLINK_PORT: "uplink0"}
        )
        for node, t in nodes.topos.items()
    }
    async with programmed(out, entries):
        yield out


def link(topo: Topology) -> dict[str, Any]:
    out = in_ns(topo.node, "ip", "-d", "-j", "link", "show", "vxlan0").stdout
    info: list[dict[str, Any]] = json.loads(out)
    return info[0]


async def test_pods_reach_each_other_over_vxlan(nodes: Nodes, targets: dict[str, KernelTarget]) -> None:
    a, b = PODS["n1"], PODS["n2"]
    # Generous timeout: the first IPv6 packet may wait for neighbour discovery on the pod veths.
    got = nodes.topos["n1"].connect("a", [(b[1], 80), (b[2], 80)], timeout=10)
    assert got == [f"OK b {a[1]}", f"OK b {a[2]}"]  # no NAT: b sees a's own addresses
    assert nodes.topos["n2"].connect("b", [(a[1], 53), (a[2], 53)], kind="udp", timeout=10) == [
        f"OK a {b[1]}",
        f"OK a {b[2]}",
    ]
    # Through the overlay: the pod CIDR routes go on-link via the VTEP on the vxlan device.
    n1 = nodes.topos["n1"].node
    assert "10.244.2.0/24 via 172.31.0.12 dev vxlan0 proto 93 onlink" in in_ns(n1, "ip", "route").stdout
    dev = link(nodes.topos["n1"])
    assert dev["address"] == vtep_mac((4, 0xAC1F000B))  # 172.31.0.11: every node derives it alike
    assert dev["linkinfo"]["info_data"]["id"] == 4096
    neigh = in_ns(n1, "ip", "-6", "neigh", "show", "dev", "vxlan0").stdout
    assert vtep_mac((4, 0xAC1F000C)) in neigh
    assert "PERMANENT" in neigh


async def test_reconcile_finds_the_overlay_as_written_and_destroy_keeps_an_adopted_device(
    nodes: Nodes, targets: dict[str, KernelTarget]
) -> None:
    t1 = nodes.topos["n1"]
    adopted = link(t1).get("ifalias") != LINK_ALIAS
    fresh = KernelTarget(netns=t1.node, port_names=targets["n1"].state.port_names)
    try:
        result = await fresh.reconcile(entries("n1"))
        assert (result.added, result.deleted) == (0, 0)
        # Drift: a deleted FDB entry and neighbour come back, the cluster's flood entry stays.
        mac2 = vtep_mac((4, 0xAC1F000C))
        in_ns(t1.node, *f"bridge fdb del {mac2} dev vxlan0 dst 172.31.0.12".split())
        in_ns(t1.node, *["ip", "neigh", "del", "172.31.0.12", "dev", "vxlan0"])
        result = await fresh.reconcile(entries("n1"))
        assert (result.added, result.deleted) == (2, 0)
        got = t1.connect("a", [(PODS["n2"][1], 80)])
        assert got == [f"OK b {PODS['n1'][1]}"]
        await fresh.destroy()
    finally:
        await fresh.close()
    exists = in_ns(t1.node, "ip", "link", "show", "vxlan0", check=False).returncode == 0
    assert exists == adopted
    if adopted:
        fdb = in_ns(t1.node, "bridge", "fdb", "show", "dev", "vxlan0").stdout
        assert "00:00:00:00:00:00 dst 172.31.0.12" in fdb
        assert "0e:78:" not in fdb
    assert "proto 93" not in in_ns(t1.node, "ip", "route").stdout


async def test_a_node_leaving_takes_its_fdb_entry_neighbours_and_routes(
    nodes: Nodes, targets: dict[str, KernelTarget]
) -> None:
    t1 = nodes.topos["n1"]
    adopted = link(t1).get("ifalias") != LINK_ALIAS
    alone = tuple(e for e in entries("n1") if "n2" not in (e.origin or ""))
    result = await targets["n1"].apply(diff(entries("n1"), alone))
    assert result.route_errors == ()
    assert not any(k[0] == "@link" for k in targets["n1"].state.items())
    # No vxlan next hop left: a device the target made goes too; an adopted one stays, without
    # xpunet's entries.
    exists = in_ns(t1.node, "ip", "link", "show", "vxlan0", check=False).returncode == 0
    assert exists == adopted
    if adopted:
        assert "0e:78:" not in in_ns(t1.node, "bridge", "fdb", "show", "dev", "vxlan0").stdout
        assert "0e:78:" not in in_ns(t1.node, "ip", "neigh", "show", "dev", "vxlan0").stdout
    assert "10.244.2.0/24" not in in_ns(t1.node, "ip", "route").stdout
    (got,) = t1.connect("a", [(PODS["n2"][1], 80)], timeout=1)
    assert got in ("TIMEOUT", "ERROR [Errno 101] Network is unreachable")


MSS_SERVER = r"""
import socket, sys, threading
def serve(fam):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", 9000))
    s.listen(8)
    while True:
        c, _ = s.accept()
        mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        n = 0
        while data := c.recv(65536):
            n += len(data)
        c.sendall(f"{n} {mss}".encode() + b"x" * 200000)
        c.close()
for fam in (socket.AF_INET, socket.AF_INET6):
    threading.Thread(target=serve, args=(fam,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

MSS_CLIENT = r"""
import json, socket, sys
out = []
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.create_connection((host, 9000), timeout=10)
    mss = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    s.sendall(b"y" * 300000)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while data := s.recv(65536):
        got += data
    n, server_mss = got[: got.index(b"x")].decode().split()
    out.append([mss, int(server_mss), int(n), len(got) - got.index(b"x")])
print(json.dumps(out))
"""


def mss_probe(client: Topology, server_topo: Topology) -> list[list[int]]:
    """Per address of pod b: [client MSS, server MSS, bytes up, bytes down] of one bulk connection."""
    b = PODS["n2"]
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_topo.pods[b[0]].ns, sys.executable, "-c", MSS_SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        out = in_ns(client.pods[PODS["n1"][0]].ns, sys.executable, "-c", MSS_CLIENT, b[1], b[2]).stdout
    finally:
        server.kill()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    result: list[list[int]] = json.loads(out)
    return result


async def test_tcp_through_the_overlay_gets_the_devices_mss(
    nodes: Nodes, targets: dict[str, KernelTarget]
) -> None:
    # Pods have MTU 1500, vxlan0 the uplink's 1500 minus 50: SYNs leaving through vxlan0 are
    # clamped to its route MTU (IPv4: 1450 - 40, IPv6: 1450 - 60) on both nodes, so both ends of
    # a connection send segments that fit before any PMTU discovery; bulk data flows both ways.
    t1, t2 = nodes.topos["n1"], nodes.topos["n2"]
    assert link(t1)["mtu"] == 1450
    v4, v6 = mss_probe(t1, t2)
    # TCP_MAXSEG is the MSS less the options every segment carries (timestamps: 12 bytes); without
    # the clamp it would be 1460 (1440 for IPv6) less those.
    for (client_mss, server_mss, up, down), mss in ((v4, 1410), (v6, 1390)):
        assert mss - 40 <= client_mss <= mss
        assert mss - 40 <= server_mss <= mss
        assert (up, down) == (300000, 200000)
    assert "mss_clamp" in in_ns(t1.node, "nft", "list", "chain", "inet", "xpunet", "mss").stdout
