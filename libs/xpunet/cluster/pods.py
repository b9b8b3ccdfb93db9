"""Pods of the local cluster: a network namespace, an interface, and a responder inside.

The interface comes from the real ``xpunet-cni`` binary, called as a container
runtime calls it (``CNI_*`` environment, network config on stdin, result JSON
on stdout) against the node's datapath infra socket — or, while that is not
wired, from the harness's plain veth (``topology.plain_attach``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpunet.cluster.netns import ClusterError
from xpunet.cluster.plan import PodSpec
from xpunet.cluster.state import RunDir
from xpunet.cluster.wiring import cni_binary

log = logging.getLogger(__name__)

CNI_VERSION = "1.1.0"
CNI_TIMEOUT = 30.0
RESPONDER_TIMEOUT = 15.0


@dataclass(slots=True)
class RunningPod:
    spec: PodSpec
    netns: str  # "" when the cluster has no kernel side (not root)
    container_id: str
    ips: tuple[str, ...] = ()
    responder: asyncio.subprocess.Process | None = None
    cni_result: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return self.spec.ref

    def ip(self, family: int = 4) -> str:
        for ip in self.ips:
            if ipaddress.ip_address(ip).version == family:
                return ip
        raise ClusterError(f"pod {self.ref} has no IPv{family} address")


def sctp_supported() -> bool:
    """Whether this kernel offers SCTP sockets (the module may be absent or blacklisted)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()
    except OSError:
        return False
    return True


def netconf(socket_path: str) -> dict[str, Any]:
    """The network config for one node: its infra socket, and its own CNI agent socket beside it
    (several nodes share this machine; the default agent path would be one for all of them)."""
    agent = str(Path(socket_path).with_name("cni-agent.sock"))
    return {
        "cniVersion": CNI_VERSION,
        "name": "xpunet",
        "type": "xpunet-cni",
        "socket": socket_path,
        "agentSocket": agent,
    }


async def cni_call(
    command: str,
    pod: RunningPod,
    *,
    socket_path: str,
    ifname: str = "eth0",
) -> dict[str, Any]:
    """Run ``xpunet-cni`` once; the parsed result (ADD) or ``{}``.  A CNI error raises ``ClusterError``."""
    spec = pod.spec
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": f"/run/netns/{pod.netns}" if pod.netns else "",
        "CNI_IFNAME": ifname,
        "CNI_PATH": f"{cni_binary().parent}:/usr/lib/cni",
        "CNI_ARGS": (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={spec.namespace};K8S_POD_NAME={spec.name};"
            f"K8S_POD_UID={spec.uid};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}"
        ),
    }
    proc = await asyncio.create_subprocess_exec(
        str(cni_binary()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(CNI_TIMEOUT):
            out, err = await proc.communicate(json.dumps(netconf(socket_path)).encode())
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise ClusterError(f"xpunet-cni {command} {spec.ref}: no answer in {CNI_TIMEOUT:.0f}s") from exc
    if proc.returncode != 0:
        raise ClusterError(
            f"xpunet-cni {command} {spec.ref}: exit {proc.returncode}: "
            f"{out.decode().strip() or err.decode().strip()}"
        )
    if command != "ADD":
        return {}
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise ClusterError(f"xpunet-cni ADD {spec.ref}: result is not JSON: {out[:200]!r}") from exc
    return result


def result_ips(result: Mapping[str, Any]) -> tuple[str, ...]:
    """The pod's addresses from a CNI result (``ips[].address`` is CIDR notation)."""
    out: list[str] = []
    for entry in result.get("ips", []):
        address = str(entry.get("address", ""))
        if address:
            out.append(str(ipaddress.ip_interface(address).ip))
    return tuple(out)


async def start_responder(rd: RunDir, pod: RunningPod, *, sctp: bool) -> None:
    """The pod's echo server on its container ports, inside its namespace; waits until it listens."""
    tcp = sorted({p.port for p in pod.spec.ports if p.protocol == "TCP"})
    udp = sorted({p.port for p in pod.spec.ports if p.protocol == "UDP"})
    sctp_ports = sorted({p.port for p in pod.spec.ports if p.protocol == "SCTP"}) if sctp else []
    logs = rd.sub("logs")
    with (logs / f"responder-{pod.spec.namespace}-{pod.spec.name}.log").open("ab") as errlog:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            pod.netns,
            sys.executable,
            "-m",
            "xpunet.cluster.responder",
            "--name",
            pod.ref,
            "--tcp",
            ",".join(map(str, tcp)),
            "--udp",
            ",".join(map(str, udp)),
            "--sctp",
            ",".join(map(str, sctp_ports)),
            "--run-dir",
            rd.marker,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errlog,
            start_new_session=True,  # a Ctrl-C on the terminal reaches `up`, which stops pods in order
        )
    rd.add_process(proc.pid, f"responder {pod.ref}")
    pod.responder = proc
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(RESPONDER_TIMEOUT):
            line = await proc.stdout.readline()
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        raise ClusterError(f"responder of {pod.ref} did not start; see {logs}")


async def stop_process(proc: asyncio.subprocess.Process | None, *, grace: float = 3.0) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(grace):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
