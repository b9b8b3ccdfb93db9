"""The compiled CNI binary (cni-shim/xpunet-cni.c): forwards to the agent, and hands every case it does
not forward to the Python plugin with the same arguments, environment and stdin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni import errors, runtime
from xpunet.datapath.cni.runtime import PY_CNI_BIN, SHIM_CNI_BIN, run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]


def test_the_shim_is_built() -> None:
    # `make deps` builds it; without it the CNI tests would silently run the Python plugin only.
    assert SHIM_CNI_BIN.exists(), f"{SHIM_CNI_BIN} is missing: run `make cni-shim`"
    assert runtime.CNI_BIN == SHIM_CNI_BIN


async def test_version_is_the_python_plugins() -> None:
    stdin = {"cniVersion": "1.0.0"}
    shim = await run_plugin("", "VERSION", stdin, ifname="", plugin=SHIM_CNI_BIN)
    python = await run_plugin("", "VERSION", stdin, ifname="", plugin=PY_CNI_BIN)
    assert (shim.rc, shim.out) == (python.rc, python.out) == (0, python.out)
    assert python.out is not None
    assert python.out["cniVersion"] == "1.0.0"


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        pytest.param(b"not json", errors.DECODE_FAILURE, id="not-json"),
        pytest.param(b"[1, 2]", errors.DECODE_FAILURE, id="not-an-object"),
        pytest.param(b'{"cniVersion": "1.1.0"', errors.DECODE_FAILURE, id="truncated"),
        pytest.param(b'{"cniVersion": "9.9.9", "name": "x"}', errors.INCOMPATIBLE_VERSION, id="version"),
    ],
)
async def test_configs_it_cannot_read_go_to_the_python_plugin(stdin: bytes, code: int) -> None:
    run = await run_plugin(
        "", "ADD", stdin, container_id="c1", netns_path="/run/netns/none", plugin=SHIM_CNI_BIN
    )
    assert run.rc == 1, run
    assert run.out is not None
    assert run.out["code"] == code, run.out


async def test_missing_python_plugin_is_an_error_json() -> None:
    run = await run_plugin(
        "",
        "ADD",
        runtime.netconf("/nonexistent.sock"),
        container_id="c1",
        netns_path="/run/netns/none",
        plugin=SHIM_CNI_BIN,
        extra_env={"XPUNET_CNI_FALLBACK": "/nonexistent/xpunet-cni"},
    )
    assert run.rc == 1
    assert run.out is not None
    assert run.out["code"] == errors.IO_FAILURE
    assert "/nonexistent/xpunet-cni" in run.out["msg"]


@pytest.mark.parametrize(
    ("extra", "forwarded"),
    [
        pytest.param({}, True, id="agent-socket"),
        pytest.param(
            {"timeoutSeconds": 3.5, "dns": {"nameservers": ["10.96.0.10"]}}, True, id="float-timeout"
        ),
        pytest.param({"agentSocket": 5}, False, id="socket-not-a-string"),
        pytest.param({"agentSocket": ""}, False, id="forwarding-off"),
    ],
)
async def test_forwards_exactly_when_the_python_plugin_would(
    start_server: ServerFactory,
    settings: AttachSettings,
    host_ns: str,
    pod_ns: PodNs,
    tmp_path: Path,
    extra: dict[str, Any],
    forwarded: bool,
) -> None:
    agent_socket = str(tmp_path / "agent.sock")
    server = await start_server(cni_agent_socket=agent_socket)
    assert server.cni_agent is not None
    conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket)
    conf.update(extra)
    pod = pod_ns()
    for plugin in (SHIM_CNI_BIN, PY_CNI_BIN):
        served = server.cni_agent.served
        add = await run_plugin(host_ns, "ADD", conf, container_id="fw", netns_name=pod, plugin=plugin)
        assert add.rc == 0, add
        assert add.out is not None
        assert add.out["ips"][0]["address"] == "10.244.7.2/32"
        assert server.cni_agent.served == served + forwarded, plugin
    delete = await run_plugin(host_ns, "DEL", conf, container_id="fw", netns_name=pod)
    assert (delete.rc, delete.out) == (0, None), delete


async def test_a_bad_timeout_is_the_python_plugins_config_error(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    agent_socket = str(tmp_path / "agent.sock")
    server = await start_server(cni_agent_socket=agent_socket)
    assert server.cni_agent is not None
    conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket, timeoutSeconds=True)
    add = await run_plugin(host_ns, "ADD", conf, container_id="to", netns_name=pod_ns(), plugin=SHIM_CNI_BIN)
    assert add.out is not None
    assert (add.rc, add.out["code"]) == (1, errors.INVALID_CONFIG), add
    assert server.cni_agent.served == 0


async def test_agent_answers_the_first_json_framing(
    start_server: ServerFactory, settings: AttachSettings, tmp_path: Path
) -> None:
    """An older binary still on a node speaks JSON lines; the agent answers it in kind."""
    agent_socket = str(tmp_path / "agent.sock")
    await start_server(cni_agent_socket=agent_socket)
    reader, writer = await asyncio.open_unix_connection(agent_socket)
    config = json.dumps({"cniVersion": "1.1.0", "name": "xpunet", "socket": settings.socket_path})
    request = {"env": {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "old", "CNI_IFNAME": "eth0"}, "stdin": config}
    writer.write(json.dumps(request).encode() + b"\n")
    writer.write_eof()
    reply = json.loads(await reader.read())
    writer.close()
    await writer.wait_closed()
    assert reply == {"code": 0, "stdout": ""}


async def test_a_malformed_agent_reply_falls_back(
    server: AttachServer, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    path = str(tmp_path / "liar.sock")

    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(b"garbage")
        await writer.drain()
        writer.close()

    fake = await asyncio.start_unix_server(liar, path=path)
    try:
        conf = runtime.netconf(settings.socket_path, agent_socket=path)
        pod = pod_ns()
        add = await run_plugin(host_ns, "ADD", conf, container_id="liar", netns_name=pod, plugin=SHIM_CNI_BIN)
        assert add.rc == 0, add
        assert "malformed reply" in add.stderr
        assert "running the verb here" in add.stderr
        delete = await run_plugin(host_ns, "DEL", conf, container_id="liar", netns_name=pod)
        assert delete.rc == 0, delete
    finally:
        fake.close()
        await fake.wait_closed()


@pytest.mark.parametrize(
    ("sock_name", "nested_only", "forwarded"),
    [
        # Only a top-level agentSocket counts; one inside another object is not the plugin's.
        pytest.param("agent.sock", True, False, id="nested-key-ignored"),
        # json.dumps writes "\u00e9": the shim hands the config to the Python plugin, which forwards.
        pytest.param("agént.sock", False, True, id="unicode-escape-via-python"),
    ],
)
async def test_json_corners(
    start_server: ServerFactory,
    settings: AttachSettings,
    host_ns: str,
    pod_ns: PodNs,
    tmp_path: Path,
    sock_name: str,
    nested_only: bool,
    forwarded: bool,
) -> None:
    agent_socket = str(tmp_path / sock_name)
    server = await start_server(cni_agent_socket=agent_socket)
    assert server.cni_agent is not None
    conf = runtime.netconf(settings.socket_path, agent_socket=agent_socket)
    conf["args"] = {"cni": {"labels": [{"key": 'a"b\\c', "value": "x\ty"}]}}  # escapes to skip over
    if nested_only:
        conf["agentSocket"] = str(tmp_path / "absent.sock")  # exists nowhere: runs in the plugin
        conf["extra"] = {"agentSocket": agent_socket}
    pod = pod_ns()
    add = await run_plugin(host_ns, "ADD", conf, container_id="js", netns_name=pod, plugin=SHIM_CNI_BIN)
    assert add.rc == 0, add
    assert server.cni_agent.served == int(forwarded)
    delete = await run_plugin(host_ns, "DEL", conf, container_id="js", netns_name=pod, plugin=SHIM_CNI_BIN)
    assert delete.rc == 0, delete
