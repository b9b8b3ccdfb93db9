"""``xpunet-datapath`` as its own process with the kernel target and the attach server (root).

The local cluster runs datapaths inside ``xpunetctl``; this runs the console
script as a node agent would: it waits for its Node's pod CIDRs in
``xpunet-k8s``, serves the infra API and the CNI agent, a pod is attached through the real
``xpunet-cni`` binary, the pod's host route is the kernel target's (protocol
93), and SIGTERM stops it cleanly with the pod's state kept on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from pathlib import Path

import pytest

from xpunet.bus.api import BUCKET_K8S
from xpunet.bus.nats import connect
from xpunet.cluster.netns import add_netns, delete_netns, run, sysctls
from xpunet.cluster.plan import PodSpec
from xpunet.cluster.pods import RunningPod, cni_call, result_ips
from xpunet.cluster.testing import dataplane_missing
from xpunet.embedded.nats import NatsServer
from xpunet.model.objects import Node
from xpunet.wire import encode_object

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        bool(dataplane_missing()), reason=f"xpunet dataplane not wired: {dataplane_missing()}"
    ),
]

DATAPATH = str(Path(sys.executable).parent / "xpunet-datapath")
CIDRS = ("10.244.9.0/24", "fd00:10:244:9::/64")


async def _until(predicate: object, proc: asyncio.subprocess.Process, what: str) -> None:
    assert callable(predicate)
    for _ in range(600):  # up to 30 s on a loaded machine
        if predicate():
            return
        assert proc.returncode is None, f"xpunet-datapath exited ({proc.returncode}) before {what}"
        await asyncio.sleep(0.05)
    raise AssertionError(f"xpunet-datapath: no {what} in 30 s")


async def test_console_script_serves_the_cni_and_programs_the_pod_route(tmp_path: Path) -> None:
    run_id = secrets.token_hex(3)
    node_ns, pod_ns = f"xpunet-t{run_id}-node", f"xpunet-t{run_id}-pod"
    sock = tmp_path / "infra.sock"
    nats = NatsServer(name="e2e-datapath-process")
    await nats.astart()
    proc: asyncio.subprocess.Process | None = None
    try:
        await add_netns(node_ns)
        await add_netns(pod_ns)
        await sysctls(node_ns, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XPUNET_", "OTEL_"))}
        settings = [
            f"bus.urls={nats.url}",
            "node.name=n9",
            "health.port=0",
            "datapath.target=kernel",
            f"datapath.kernel_netns={node_ns}",
            f"attach.socket_path={sock}",
            # The veths live in the node namespace: the plugin forwards to the agent that works there.
            f"attach.cni_agent_socket={tmp_path / 'cni-agent.sock'}",
            f"attach.state_path={tmp_path / 'attach-state.json'}",
            "attach.pool_size=1",
            "attach.low_water=0",
        ]
        argv = [a for s in settings for a in ("--set", s)]
        with (tmp_path / "datapath.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                DATAPATH, *argv, stdout=log, stderr=log, env=env, start_new_session=True
            )
        # The pod CIDRs come from the Node object: the datapath waits for it.
        bus = await connect([nats.url], name="e2e-writer", initial_timeout=10.0)
        try:
            k8s = await bus.kv(BUCKET_K8S)
            await k8s.put("node.n9", encode_object(Node("n9", pod_cidrs=CIDRS)))
        finally:
            await bus.drain()
        agent = tmp_path / "cni-agent.sock"  # started right after the infra socket
        await _until(lambda: sock.exists() and agent.exists(), proc, "infra and CNI agent sockets")

        spec = PodSpec("demo", "p", "n9", {}, (), {})  # type: ignore[arg-type]  # labels: a plain dict
        pod = RunningPod(spec, pod_ns, "ctr-" + run_id)
        result = await cni_call("ADD", pod, socket_path=str(sock))
        ips = result_ips(result)
        assert [ip.split(".")[:3] for ip in ips if "." in ip] == [["10", "244", "9"]]
        v4 = next(ip for ip in ips if "." in ip)
        (route,) = (await run("ip", "-n", node_ns, "route", "show", v4)).strip().splitlines()
        assert "proto 93" in route, route  # the kernel target's route, and no other

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, (tmp_path / "datapath.log").read_text()[-2000:]
        assert "ctr-" + run_id in (tmp_path / "attach-state.json").read_text()  # kept for the restart
    finally:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await delete_netns(pod_ns)
        await delete_netns(node_ns)
        await nats.astop()
