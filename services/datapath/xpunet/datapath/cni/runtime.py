"""A minimal CNI runtime for tests and benchmarks: exec a CNI plugin as a container runtime would.

The plugin runs inside a given network namespace (the "host" of the pods)
with the CNI_* environment and the network config on stdin; its stdout is
parsed as the result or error JSON.  Also here: named network namespaces
(made with pyroute2), and a command helper for `ip`, `ping`, `iptables-save`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import netns

PY_CNI_BIN = Path(sys.executable).parent / "xpunet-cni"  # the console script
SHIM_CNI_BIN = Path(sys.executable).parent / "xpunet-cni-shim"  # the C shim (`make cni-shim`)
# What a node installs as the CNI binary: the shim, which execs the console script when it cannot forward.
CNI_BIN = SHIM_CNI_BIN if SHIM_CNI_BIN.exists() else PY_CNI_BIN
PLUGIN_DIR = Path("/usr/lib/cni")


@dataclass(frozen=True, slots=True)
class CniRun:
    rc: int
    out: dict[str, Any] | None
    stderr: str


def make_ns(prefix: str) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    netns.create(name)
    return name


def drop_ns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def netconf(socket_path: str, *, agent_socket: str = "", **extra: Any) -> dict[str, Any]:
    """An xpunet-cni network config; no agent unless one is named (never the node's default one)."""
    conf: dict[str, Any] = {
        "cniVersion": "1.1.0",
        "name": "xpunet",
        "type": "xpunet-cni",
        "socket": socket_path,
        "agentSocket": agent_socket,
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }
    conf.update(extra)
    return conf


async def run_plugin(
    host_ns: str,
    command: str,
    conf: dict[str, Any] | bytes,
    *,
    container_id: str = "",
    netns_name: str = "",
    netns_path: str = "",
    ifname: str = "eth0",
    plugin: Path = CNI_BIN,
    extra_env: dict[str, str] | None = None,
) -> CniRun:
    """Exec a CNI plugin in the host namespace, as a runtime would: CNI_* env, config on stdin."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command}
    env["CNI_PATH"] = f"{PLUGIN_DIR}:{CNI_BIN.parent}"
    if container_id:
        env["CNI_CONTAINERID"] = container_id
        env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{container_id[:6]}"
    if netns_name or netns_path:
        env["CNI_NETNS"] = netns_path or f"/run/netns/{netns_name}"
    if ifname:
        env["CNI_IFNAME"] = ifname
    env.update(extra_env or {})
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    # In the pods' host namespace when one is named, else in the caller's own.
    ip = shutil.which("ip") or "/usr/sbin/ip"
    prefix = [ip, "netns", "exec", host_ns] if host_ns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        str(plugin),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    text = out.decode().strip()
    return CniRun(rc=proc.returncode or 0, out=json.loads(text) if text else None, stderr=err.decode())


async def run_command(*args: str) -> str:
    """Run a command (ip, ping, iptables), return stdout; fail the test with stderr on error."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"{' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def link_names(ns: str) -> list[str]:
    data = json.loads(await run_command("ip", "-n", ns, "-j", "link", "show"))
    return sorted(str(link["ifname"]) for link in data)
