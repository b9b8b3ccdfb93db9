"""The CNI as deploy/kustomize puts it on a node: the initContainer's script installs the static shim and
the conflist, and the runtime execs that shim with no Python plugin to fall back to, so every verb must
reach the datapath's resident agent.  The datapath has the deployed pool settings (veth: no stock)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni.runtime import SHIM_CNI_BIN, link_names, run_command, run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
PodNs = Callable[[], str]

BASE = Path(__file__).resolve().parents[3] / "deploy" / "kustomize" / "base"
KUBECTL = Path(sys.executable).parent / "kubectl"


def _install(host: Path) -> tuple[Path, dict[str, Any]]:
    """Run the base DaemonSet's initContainer script into ``host``; the installed plugin and conflist."""
    rendered = subprocess.run(
        [str(KUBECTL), "kustomize", str(BASE)], capture_output=True, text=True, check=True
    )
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    daemonset = next(
        d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "xpunet-datapath"
    )
    (init,) = daemonset["spec"]["template"]["spec"]["initContainers"]
    config_map = next(d for d in docs if d["metadata"]["name"].startswith("xpunet-cni-config"))
    (host / "conflist").write_text(config_map["data"]["10-xpunet.conflist"])
    bin_dir, conf_dir = host / "opt-cni-bin", host / "etc-cni-net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    env = {e["name"]: e["value"] for e in init["env"]}
    env.update(
        SHIM=str(SHIM_CNI_BIN),
        CONFLIST=str(host / "conflist"),
        CNI_BIN_DIR=str(bin_dir),
        CNI_CONF_DIR=str(conf_dir),
        PATH="/usr/sbin:/usr/bin:/sbin:/bin",
    )
    subprocess.run([*init["command"], *init["args"]], env=env, check=True, capture_output=True)
    conflist: dict[str, Any] = json.loads((conf_dir / "10-xpunet.conflist").read_text())
    return bin_dir / "xpunet-cni", conflist


async def test_the_installed_plugin_attaches_through_the_agent_alone(
    start_server: ServerFactory, settings: AttachSettings, host_ns: str, pod_ns: PodNs, tmp_path: Path
) -> None:
    plugin, conflist = _install(tmp_path)
    agent_socket = str(tmp_path / "cni-agent.sock")
    # The deployed stock (the veth default) and agent; the test's own socket paths.
    server = await start_server(
        pool_size=AttachSettings().pool_size,
        low_water=AttachSettings().low_water,
        cni_agent_socket=agent_socket,
    )
    assert (server.settings.pool_size, server.settings.low_water) == (0, 0)
    assert server.cni_agent is not None
    conf = {
        **conflist["plugins"][0],
        "name": conflist["name"],
        "cniVersion": conflist["cniVersion"],
        "socket": settings.socket_path,
        "agentSocket": agent_socket,
    }
    no_python = {"XPUNET_CNI_FALLBACK": str(tmp_path / "no-python-plugin")}
    pod = pod_ns()

    async def verb(command: str) -> Any:
        return await run_plugin(
            host_ns, command, conf, container_id="dep1", netns_name=pod, plugin=plugin, extra_env=no_python
        )

    add = await verb("ADD")
    assert add.rc == 0, add
    assert add.out is not None
    assert [ip["address"] for ip in add.out["ips"]] == ["10.244.7.2/32", "fd00:10:244:7::2/128"]
    await run_command("ip", "netns", "exec", host_ns, "ping", "-c1", "-W2", "10.244.7.2")
    check = await verb("CHECK")
    assert (check.rc, check.out) == (0, None), check
    status = await verb("STATUS")
    assert (status.rc, status.out) == (0, None), status
    delete = await verb("DEL")
    assert (delete.rc, delete.out) == (0, None), delete
    assert server.cni_agent.served == 4  # every verb went to the agent
    assert await link_names(pod) == ["lo"]
    assert server.attacher.list() == ()
