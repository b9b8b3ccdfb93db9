"""xpunet-cni end to end, as root: the real binary with real CNI env and stdin, real network namespaces,
the real infra gRPC server and veth pairs.  ADD/CHECK/DEL, repeated ADD, DEL of unknown, dual stack,
reachability as soon as ADD returns, pool replenishment, datapath restart between ADD and DEL, GC, STATUS.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni import runtime
from xpunet.datapath.cni.runtime import PLUGIN_DIR, run_command, run_plugin

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]


def netconf(settings: AttachSettings, **extra: Any) -> dict[str, Any]:
    return runtime.netconf(settings.socket_path, **extra)


sh = run_command
links = runtime.link_names

pytestmark = pytest.mark.root


async def test_add_check_del_dual_stack(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pod = pod_ns()
    conf = netconf(settings)
    add = await run_plugin(host_ns, "ADD", conf, container_id="c1", netns_name=pod)
    assert add.rc == 0, add
    result = add.out
    assert result is not None
    assert result["cniVersion"] == "1.1.0"
    pod_iface = result["interfaces"][-1]
    assert pod_iface["name"] == "eth0"
    assert pod_iface["sandbox"] == f"/run/netns/{pod}"
    assert pod_iface["mtu"] == 1500
    assert [ip["gateway"] for ip in result["ips"]] == ["10.244.7.1", "fd00:10:244:7::1"]
    assert [ip["address"] for ip in result["ips"]] == ["10.244.7.2/32", "fd00:10:244:7::2/128"]
    assert {ip["interface"] for ip in result["ips"]} == {len(result["interfaces"]) - 1}
    assert {"dst": "0.0.0.0/0", "gw": "10.244.7.1"} in result["routes"]
    assert {"dst": "::/0", "gw": "fd00:10:244:7::1"} in result["routes"]
    assert result["dns"]["nameservers"] == ["10.96.0.10"]

    # The pod side is really there, and the pod is reachable as soon as ADD returned, both families.
    addr = json.loads(await sh("ip", "-n", pod, "-j", "addr", "show", "dev", "eth0"))[0]
    assert addr["address"] == pod_iface["mac"]
    assert "UP" in addr["flags"]
    await sh("ip", "netns", "exec", host_ns, "ping", "-c1", "-W2", "10.244.7.2")
    await sh("ip", "netns", "exec", pod, "ping", "-c1", "-W2", "10.244.7.1")
    await sh("ip", "netns", "exec", host_ns, "ping", "-6", "-c1", "-W2", "fd00:10:244:7::2")

    check = await run_plugin(
        host_ns, "CHECK", netconf(settings, prevResult=result), container_id="c1", netns_name=pod
    )
    assert (check.rc, check.out) == (0, None), check

    delete = await run_plugin(host_ns, "DEL", conf, container_id="c1", netns_name=pod)
    assert (delete.rc, delete.out) == (0, None), delete
    assert await links(pod) == ["lo"]
    assert server.attacher.list() == ()
    assert server.attacher.ipam.leases() == ()
    # DEL is idempotent.
    again = await run_plugin(host_ns, "DEL", conf, container_id="c1", netns_name=pod)
    assert again.rc == 0, again


async def test_repeated_add_returns_the_same_attachment(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pod = pod_ns()
    first = await run_plugin(host_ns, "ADD", netconf(settings), container_id="c2", netns_name=pod)
    second = await run_plugin(host_ns, "ADD", netconf(settings), container_id="c2", netns_name=pod)
    assert first.rc == second.rc == 0, (first, second)
    assert first.out == second.out
    assert len(server.attacher.list()) == 1
    assert await links(pod) == ["eth0", "lo"]


async def test_del_of_unknown_container_succeeds(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    gone = await run_plugin(
        host_ns, "DEL", netconf(settings), container_id="never", netns_path="/run/netns/nope"
    )
    assert (gone.rc, gone.out) == (0, None), gone
    no_netns = await run_plugin(host_ns, "DEL", netconf(settings), container_id="never", ifname="eth0")
    assert no_netns.rc == 0, no_netns


async def test_pool_replenishes_below_low_water(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pool = server.attacher.pool
    assert pool.stats().free == 3
    for n in range(2):
        run = await run_plugin(host_ns, "ADD", netconf(settings), container_id=f"r{n}", netns_name=pod_ns())
        assert run.rc == 0, run
    await pool.wait_stocked()
    assert pool.stats().free == 3
    assert pool.stats().attached == 2
    free_pod_sides = [name for name in await links(host_ns) if name.startswith("xpp")]
    assert len(free_pod_sides) == 3


async def test_datapath_restart_between_add_and_del(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    first = await start_server()
    pod = pod_ns()
    add = await run_plugin(host_ns, "ADD", netconf(settings), container_id="keep", netns_name=pod)
    assert add.rc == 0, add
    await first.stop(grace=0)

    second = await start_server()
    restored = second.attacher.list()
    assert [r.key.container_id for r in restored] == ["keep"]
    # The same lease survives; a new pod does not get the restored pod's address.
    other = await run_plugin(host_ns, "ADD", netconf(settings), container_id="new", netns_name=pod_ns())
    assert other.rc == 0, other
    assert other.out is not None
    assert add.out is not None
    assert other.out["ips"][0]["address"] != add.out["ips"][0]["address"]
    check = await run_plugin(host_ns, "CHECK", netconf(settings), container_id="keep", netns_name=pod)
    assert check.rc == 0, check

    delete = await run_plugin(host_ns, "DEL", netconf(settings), container_id="keep", netns_name=pod)
    assert delete.rc == 0, delete
    assert await links(pod) == ["lo"]
    # Nothing leaked: host sides are the free stock plus the one attached pod.
    host_sides = [name for name in await links(host_ns) if name.startswith("xpv")]
    stats = second.attacher.pool.stats()
    assert len(host_sides) == stats.free + stats.attached
    assert stats.attached == 1


async def test_restart_reconciles_unrecorded_veth_pairs(
    start_server: ServerFactory, host_ns: str, pod_ns: PodNs
) -> None:
    first = await start_server()
    await first.stop(grace=0)
    # Left by a crash: a free pair nobody recorded (adopted into stock), and a pair whose pod side
    # went into a namespace with no attachment recording it (deleted: it would leak).
    await sh("ip", "-n", host_ns, "link", "add", "xpvfree0001", "type", "veth", "peer", "name", "xppfree0001")
    await sh("ip", "-n", host_ns, "link", "add", "xpvlost0001", "type", "veth", "peer", "name", "xpplost0001")
    await sh("ip", "-n", host_ns, "link", "set", "xpplost0001", "netns", pod_ns())
    second = await start_server()
    names = await links(host_ns)
    assert "xpvfree0001" in names
    assert "xpvlost0001" not in names
    assert second.attacher.pool.stats().free == 4


async def test_status_and_gc(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    status = await run_plugin(host_ns, "STATUS", netconf(settings), ifname="")
    assert (status.rc, status.out) == (0, None), status
    pods = {cid: pod_ns() for cid in ("g1", "g2")}
    for cid, pod in pods.items():
        run = await run_plugin(host_ns, "ADD", netconf(settings), container_id=cid, netns_name=pod)
        assert run.rc == 0, run
    gc_conf = netconf(settings, **{"cni.dev/valid-attachments": [{"containerID": "g1", "ifname": "eth0"}]})
    gc = await run_plugin(host_ns, "GC", gc_conf, ifname="")
    assert (gc.rc, gc.out) == (0, None), gc
    assert [r.key.container_id for r in server.attacher.list()] == ["g1"]
    assert await links(pods["g2"]) == ["lo"]  # its veth went with the host side
    assert [lease.key.container_id for lease in server.attacher.ipam.leases()] == ["g1"]


async def test_chained_portmap_after_xpunet_cni(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pod = pod_ns()
    # Debian's plugins speak up to CNI 1.0.0: the conflist's version is what every plugin gets.
    version, name = "1.0.0", "xpunet"
    plugins: list[dict[str, Any]] = [
        {"type": "xpunet-cni", "socket": settings.socket_path, "agentSocket": ""},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
    ]
    mappings = [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]

    def conf_for(index: int, prev: dict[str, Any] | None) -> dict[str, Any]:
        # What a runtime passes each plugin of the conflist: its entry, the list's name and version,
        # runtimeConfig for the capabilities it declares, the previous result.
        conf = {**plugins[index], "cniVersion": version, "name": name}
        if index == 1:
            conf["runtimeConfig"] = {"portMappings": mappings}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    first = await run_plugin(host_ns, "ADD", conf_for(0, None), container_id="pm", netns_name=pod)
    assert first.rc == 0, first
    assert first.out is not None
    assert first.out["cniVersion"] == "1.0.0"
    second = await run_plugin(
        host_ns,
        "ADD",
        conf_for(1, first.out),
        container_id="pm",
        netns_name=pod,
        plugin=PLUGIN_DIR / "portmap",
    )
    assert second.rc == 0, second
    assert second.out is not None
    assert second.out["ips"] == first.out["ips"]
    rules = await sh("ip", "netns", "exec", host_ns, "iptables-save", "-t", "nat")
    assert "--dport 18080" in rules, rules
    assert "10.244.7.2:80" in rules, rules

    # DEL in reverse order, with the ADD's final result as prevResult.
    undo = await run_plugin(
        host_ns,
        "DEL",
        conf_for(1, second.out),
        container_id="pm",
        netns_name=pod,
        plugin=PLUGIN_DIR / "portmap",
    )
    assert undo.rc == 0, undo
    delete = await run_plugin(host_ns, "DEL", conf_for(0, second.out), container_id="pm", netns_name=pod)
    assert delete.rc == 0, delete
    rules = await sh("ip", "netns", "exec", host_ns, "iptables-save", "-t", "nat")
    assert "10.244.7.2:80" not in rules
    assert await links(pod) == ["lo"]
