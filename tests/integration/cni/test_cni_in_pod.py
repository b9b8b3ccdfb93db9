"""veth pairs made for the pod (`pool_size=0`): the pod side is created inside the pod's namespace, so
nothing is moved between namespaces; and the hand-encoded rtnetlink requests (attach/rtnl.py) that do
the per-pod work, against the real kernel."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from xpunet.datapath.attach import rtnl
from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni import errors, runtime
from xpunet.datapath.cni.runtime import link_names, run_command, run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]


async def test_add_check_del_with_the_pod_side_made_in_the_pod(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    server = await start_server(pool_size=0, low_water=0)
    assert await link_names(host_ns) == ["lo"]  # no stock
    pod = pod_ns()
    conf = runtime.netconf(settings.socket_path)
    add = await run_plugin(host_ns, "ADD", conf, container_id="ip1", netns_name=pod)
    assert add.rc == 0, add
    assert add.out is not None
    [record] = server.attacher.list()
    host_names = await link_names(host_ns)
    assert host_names == sorted(["lo", record.vnic.host_ifname])  # the pod side never was in the host
    addr = json.loads(await run_command("ip", "-n", pod, "-j", "addr", "show", "dev", "eth0"))[0]
    assert addr["address"] == add.out["interfaces"][-1]["mac"] == record.vnic.mac
    assert addr["mtu"] == 1500
    assert "UP" in addr["flags"]
    await run_command("ip", "netns", "exec", host_ns, "ping", "-c1", "-W2", "10.244.7.2")
    await run_command("ip", "netns", "exec", host_ns, "ping", "-6", "-c1", "-W2", "fd00:10:244:7::2")
    check = await run_plugin(host_ns, "CHECK", conf, container_id="ip1", netns_name=pod)
    assert (check.rc, check.out) == (0, None), check
    again = await run_plugin(host_ns, "ADD", conf, container_id="ip1", netns_name=pod)
    assert (again.rc, again.out) == (0, add.out)
    delete = await run_plugin(host_ns, "DEL", conf, container_id="ip1", netns_name=pod)
    assert (delete.rc, delete.out) == (0, None), delete
    assert await link_names(pod) == ["lo"]
    assert await link_names(host_ns) == ["lo"]
    assert server.attacher.ipam.leases() == ()


async def test_pod_interface_name_taken_is_rolled_back(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    server = await start_server(pool_size=0, low_water=0)
    pod = pod_ns()
    await run_command("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    run = await run_plugin(
        host_ns, "ADD", runtime.netconf(settings.socket_path), container_id="x", netns_name=pod
    )
    assert run.out is not None
    assert (run.rc, run.out["code"]) == (1, errors.IO_FAILURE), run
    assert "eth0 already exists" in run.out["msg"]
    assert await link_names(pod) == ["eth0", "lo", "other0"]  # ours is gone, theirs untouched
    assert await link_names(host_ns) == ["lo"]
    assert server.attacher.list() == ()
    assert server.attacher.ipam.leases() == ()


async def test_restart_between_add_and_del(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    first = await start_server(pool_size=0, low_water=0)
    pod = pod_ns()
    conf = runtime.netconf(settings.socket_path)
    add = await run_plugin(host_ns, "ADD", conf, container_id="rs", netns_name=pod)
    assert add.rc == 0, add
    await first.stop(grace=0)
    second = await start_server(pool_size=0, low_water=0)
    assert [r.key.container_id for r in second.attacher.list()] == ["rs"]  # kept, not reconciled away
    delete = await run_plugin(host_ns, "DEL", conf, container_id="rs", netns_name=pod)
    assert delete.rc == 0, delete
    assert await link_names(pod) == ["lo"]
    assert await link_names(host_ns) == ["lo"]


def test_rtnl_batches_answer_in_order_and_name_the_refused_request(host_ns: str) -> None:
    with rtnl.Rtnl(rtnl.socket_in(host_ns)) as nl:
        lo, missing = nl.run([rtnl.get_link("lo"), rtnl.get_link("nope0", tolerate=(errno.ENODEV,))])
        assert lo is not None
        assert (lo.ifname, lo.index) == ("lo", 1)
        assert missing is None
        nl.run([rtnl.set_link(lo.index, up=True), rtnl.replace_addr(lo.index, "10.9.9.9/32")])
        # The whole batch is answered, and the first refusal is reported by what it was.
        with pytest.raises(rtnl.RtnlError, match=r"delete route 10\.9\.8\.0/24") as failure:
            nl.run(
                [
                    rtnl.del_route("10.9.8.0/24", tolerate=()),
                    rtnl.replace_route("10.9.7.0/24", oif=lo.index),
                ]
            )
        assert failure.value.errno == errno.ESRCH
        show = ["ip", "-n", host_ns, "-j", "route", "show", "10.9.7.0/24"]
        routes = json.loads(subprocess.run(show, capture_output=True, check=True).stdout)
        assert [r["dst"] for r in routes] == ["10.9.7.0/24"]  # the request after the refused one ran
        nl.run([rtnl.del_route("10.9.7.0/24")])
        assert nl.get_link("nope0") is None
