"""Thick-plugin mode: the exec'ed xpunet-cni forwards to the resident agent (started by the AttachServer),
which runs the same verbs; without a reachable agent the binary runs them itself."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni import errors, runtime
from xpunet.datapath.cni.runtime import link_names, run_command, run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]


def _exists(path: str) -> bool:
    return Path(path).exists()


@pytest.mark.parametrize("plugin", [runtime.SHIM_CNI_BIN, runtime.PY_CNI_BIN], ids=["shim", "python"])
async def test_agent_runs_add_check_del(
    start_server: ServerFactory,
    settings: AttachSettings,
    host_ns: str,
    pod_ns: PodNs,
    tmp_path: Path,
    plugin: Path,
) -> None:
    agent_socket = str(tmp_path / "agent.sock")
    server = await start_server(cni_agent_socket=agent_socket)
    assert server.cni_agent is not None
    conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket)
    pod = pod_ns()
    add = await run_plugin(host_ns, "ADD", conf, container_id="ag1", netns_name=pod, plugin=plugin)
    assert add.rc == 0, add
    assert add.out is not None
    assert [ip["address"] for ip in add.out["ips"]] == ["10.244.7.2/32", "fd00:10:244:7::2/128"]
    assert server.cni_agent.served == 1
    await run_command("ip", "netns", "exec", host_ns, "ping", "-c1", "-W2", "10.244.7.2")

    check = await run_plugin(host_ns, "CHECK", conf, container_id="ag1", netns_name=pod, plugin=plugin)
    assert (check.rc, check.out) == (0, None), check
    missing = await run_plugin(
        host_ns, "ADD", conf, container_id="ag2", netns_path="/run/netns/xpt-gone", plugin=plugin
    )
    assert missing.out is not None
    assert missing.out["code"] == errors.UNKNOWN_CONTAINER
    delete = await run_plugin(host_ns, "DEL", conf, container_id="ag1", netns_name=pod, plugin=plugin)
    assert (delete.rc, delete.out) == (0, None), delete
    assert server.cni_agent.served == 4
    assert await link_names(pod) == ["lo"]
    assert server.attacher.list() == ()


async def test_without_agent_the_binary_runs_the_verb(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    conf = runtime.netconf(settings.socket_path, agent_socket=str(tmp_path / "no-agent.sock"))
    pod = pod_ns()
    add = await run_plugin(host_ns, "ADD", conf, container_id="solo", netns_name=pod)
    assert add.rc == 0, add
    delete = await run_plugin(host_ns, "DEL", conf, container_id="solo", netns_name=pod)
    assert delete.rc == 0, delete


async def test_a_dead_agent_socket_falls_back(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    stale = tmp_path / "stale.sock"
    stale.touch()  # exists, nobody listens
    conf = runtime.netconf(settings.socket_path, agent_socket=str(stale))
    add = await run_plugin(host_ns, "ADD", conf, container_id="fb", netns_name=pod_ns())
    assert add.rc == 0, add
    assert "running the verb here" in add.stderr


async def test_standalone_agent_process(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    agent_socket = str(tmp_path / "standalone.sock")
    proc = await asyncio.create_subprocess_exec(
        str(runtime.CNI_BIN),
        "agent",
        "--socket",
        agent_socket,
        "--netns",
        host_ns,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        ready = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert b"listening" in ready
        conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket)
        pod = pod_ns()
        add = await run_plugin(host_ns, "ADD", conf, container_id="sa", netns_name=pod)
        assert add.rc == 0, add
        delete = await run_plugin(host_ns, "DEL", conf, container_id="sa", netns_name=pod)
        assert delete.rc == 0, delete
        assert await link_names(pod) == ["lo"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    assert not _exists(agent_socket)  # removed on the way out


@pytest.mark.parametrize("pool_size", [0, 3], ids=["made-in-pod", "from-stock"])
async def test_agent_rolls_back_a_failed_add(
    start_server: ServerFactory,
    settings: AttachSettings,
    host_ns: str,
    pod_ns: PodNs,
    tmp_path: Path,
    pool_size: int,
) -> None:
    agent_socket = str(tmp_path / "agent.sock")
    server = await start_server(cni_agent_socket=agent_socket, pool_size=pool_size, low_water=0)
    conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket)
    pod = pod_ns()
    await run_command("ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    add = await run_plugin(host_ns, "ADD", conf, container_id="rb", netns_name=pod)
    assert add.out is not None
    assert (add.rc, add.out["code"]) == (1, errors.IO_FAILURE), add
    assert "eth0 already exists" in add.out["msg"]
    assert server.cni_agent is not None
    assert server.cni_agent.served == 1
    assert await link_names(pod) == ["eth0", "lo", "other0"]
    assert server.attacher.list() == ()
    assert server.attacher.ipam.leases() == ()
