"""Every failure of xpunet-cni prints the spec's error JSON with the right code and a message naming the
problem, and leaves nothing half-attached (no lease, no vNIC taken, no interface in the pod)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni import errors, runtime
from xpunet.datapath.cni.runtime import CniRun, link_names, run_command, run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]


def netconf(settings: AttachSettings, **extra: Any) -> dict[str, Any]:
    return runtime.netconf(settings.socket_path, **extra)


def assert_error(run: CniRun, code: int, *words: str) -> None:
    assert run.rc != 0, run
    assert run.out is not None, run
    assert run.out["code"] == code, run.out
    assert run.out["cniVersion"]
    for word in words:
        assert word in run.out["msg"], run.out


async def assert_nothing_attached(server: AttachServer, host_ns: str) -> None:
    assert server.attacher.list() == ()
    assert server.attacher.ipam.leases() == ()
    stats = server.attacher.pool.stats()
    assert stats.attached == 0
    host_sides = [n for n in await link_names(host_ns) if n.startswith("xpv")]
    assert len(host_sides) == stats.free


@pytest.mark.parametrize(
    ("stdin", "code", "word"),
    [
        pytest.param(b"{not json", errors.DECODE_FAILURE, "not valid JSON", id="garbage"),
        pytest.param(b'["a"]', errors.DECODE_FAILURE, "not a JSON object", id="not-object"),
        pytest.param(b'{"cniVersion": "1.1.0"}', errors.INVALID_CONFIG, "name", id="no-name"),
        pytest.param(b'{"name": "x"}', errors.INVALID_CONFIG, "cniVersion", id="no-version"),
        pytest.param(
            b'{"cniVersion": "9.9.9", "name": "x"}', errors.INCOMPATIBLE_VERSION, "9.9.9", id="version"
        ),
        pytest.param(
            b'{"cniVersion": "1.1.0", "name": "x", "socket": 5}',
            errors.INVALID_CONFIG,
            "'socket'",
            id="bad-type",
        ),
        pytest.param(
            b'{"cniVersion": "1.1.0", "name": "x", "datapath": {"address": "1.2.3.4:1"}}',
            errors.INVALID_CONFIG,
            "tls",
            id="tcp-without-tls",
        ),
    ],
)
async def test_bad_config(host_ns: str, pod_ns: PodNs, stdin: bytes, code: int, word: str) -> None:
    run = await run_plugin(host_ns, "ADD", stdin, container_id="bad", netns_name=pod_ns())
    assert_error(run, code, word)


async def test_bad_environment(settings: AttachSettings, host_ns: str, pod_ns: PodNs) -> None:
    no_id = await run_plugin(host_ns, "ADD", netconf(settings), netns_name=pod_ns())
    assert_error(no_id, errors.INVALID_ENVIRONMENT, "CNI_CONTAINERID")
    bad_verb = await run_plugin(host_ns, "FROB", netconf(settings), container_id="x", netns_name=pod_ns())
    assert_error(bad_verb, errors.INVALID_ENVIRONMENT, "FROB")
    long_if = await run_plugin(
        host_ns, "ADD", netconf(settings), container_id="x", netns_name=pod_ns(), ifname="a-very-long-ifname0"
    )
    assert_error(long_if, errors.INVALID_ENVIRONMENT, "CNI_IFNAME")


async def test_missing_netns(server: AttachServer, settings: AttachSettings, host_ns: str) -> None:
    run = await run_plugin(
        host_ns, "ADD", netconf(settings), container_id="m", netns_path="/run/netns/xpt-none"
    )
    assert_error(run, errors.UNKNOWN_CONTAINER, "/run/netns/xpt-none", "does not exist")
    await assert_nothing_attached(server, host_ns)


async def test_datapath_unreachable(settings: AttachSettings, host_ns: str, pod_ns: PodNs) -> None:
    # No server is started: the socket does not exist.
    add = await run_plugin(host_ns, "ADD", netconf(settings), container_id="u", netns_name=pod_ns())
    assert_error(add, errors.TRY_AGAIN_LATER, "datapath unreachable", settings.socket_path)
    delete = await run_plugin(host_ns, "DEL", netconf(settings), container_id="u", netns_name=pod_ns())
    assert_error(delete, errors.TRY_AGAIN_LATER, "datapath unreachable")
    status = await run_plugin(host_ns, "STATUS", netconf(settings), ifname="")
    assert_error(status, errors.PLUGIN_NOT_AVAILABLE, "datapath unreachable")


async def test_pool_empty(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    server = await start_server(pool_size=1, low_water=0, capacity=1)
    first = await run_plugin(host_ns, "ADD", netconf(settings), container_id="p1", netns_name=pod_ns())
    assert first.rc == 0, first
    pod = pod_ns()
    second = await run_plugin(host_ns, "ADD", netconf(settings), container_id="p2", netns_name=pod)
    assert_error(second, errors.TRY_AGAIN_LATER, "vNIC pool empty")
    assert await link_names(pod) == ["lo"]
    assert [r.key.container_id for r in server.attacher.list()] == ["p1"]
    assert [lease.key.container_id for lease in server.attacher.ipam.leases()] == ["p1"]
    status = await run_plugin(host_ns, "STATUS", netconf(settings), ifname="")
    assert_error(status, errors.PLUGIN_NOT_AVAILABLE, "pool empty")


async def test_ips_exhausted(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    server = await start_server(pod_cidrs=("10.9.0.0/30",))  # one pod address
    first = await run_plugin(host_ns, "ADD", netconf(settings), container_id="i1", netns_name=pod_ns())
    assert first.rc == 0, first
    pod = pod_ns()
    second = await run_plugin(host_ns, "ADD", netconf(settings), container_id="i2", netns_name=pod)
    assert_error(second, errors.IPS_EXHAUSTED, "IPs exhausted")
    assert second.out is not None
    assert "10.9.0.0/30" in second.out["details"]
    assert await link_names(pod) == ["lo"]
    assert server.attacher.pool.stats().attached == 1


async def test_failed_plumbing_is_rolled_back(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pod = pod_ns()
    await run_command("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    run = await run_plugin(host_ns, "ADD", netconf(settings), container_id="clash", netns_name=pod)
    assert_error(run, errors.IO_FAILURE, "eth0 already exists")
    assert await link_names(pod) == ["eth0", "lo", "other0"]  # the pod's own eth0 is untouched
    theirs = json.loads(await run_command("ip", "-n", pod, "-j", "link", "show", "eth0"))[0]
    assert theirs["link"] == "other0"
    await server.attacher.pool.wait_stocked()
    await assert_nothing_attached(server, host_ns)


async def test_check_failures(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs
) -> None:
    pod = pod_ns()
    unknown = await run_plugin(host_ns, "CHECK", netconf(settings), container_id="nobody", netns_name=pod)
    assert_error(unknown, errors.UNKNOWN_CONTAINER, "no attachment")
    add = await run_plugin(host_ns, "ADD", netconf(settings), container_id="chk", netns_name=pod)
    assert add.rc == 0, add
    await run_command("ip", "-n", pod, "addr", "del", "10.244.7.2/32", "dev", "eth0")
    broken = await run_plugin(host_ns, "CHECK", netconf(settings), container_id="chk", netns_name=pod)
    assert_error(broken, errors.CHECK_FAILED, "10.244.7.2/32")


async def test_status_and_gc_need_cni_1_1(settings: AttachSettings, host_ns: str) -> None:
    for verb in ("STATUS", "GC"):
        run = await run_plugin(host_ns, verb, netconf(settings, cniVersion="1.0.0"), ifname="")
        assert_error(run, errors.INCOMPATIBLE_VERSION, verb)
