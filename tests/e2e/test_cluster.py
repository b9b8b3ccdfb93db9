"""The local cluster itself, with real packets: pods reach each other on one node and across nodes
(routed and over VXLAN, IPv4 and IPv6, TCP and UDP), and nothing outlives ``close`` or ``down``.

These run on whatever carries the packets today: xpunet (kernel target + CNI)
when wired, otherwise the harness's plain veths and routes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from xpunet.cluster import probe
from xpunet.cluster.manifests import load_declared
from xpunet.cluster.netns import list_netns, run
from xpunet.cluster.plan import Overlay, PlanError
from xpunet.cluster.state import RunDir, process_starttime
from xpunet.cluster.teardown import marked_processes
from xpunet.cluster.testing import EXAMPLES, running_cluster

XPUNETCTL = str(Path(sys.executable).parent / "xpunetctl")

pytestmark = pytest.mark.root


@pytest.mark.parametrize("overlay", ["none", "vxlan"])
async def test_pods_reach_each_other_on_one_node_and_across_nodes(tmp_path: Path, overlay: Overlay) -> None:
    async with running_cluster(tmp_path, nodes=2, pods_per_node=2, overlay=overlay) as (cluster, _stack):
        pods = sorted(cluster.pods.values(), key=lambda p: p.ref)
        assert [p.spec.node for p in pods] == ["node-1", "node-1", "node-2", "node-2"]
        checks = []
        for src in pods:
            for dst in pods:
                for family in (4, 6):
                    checks.append((src, dst, family, probe.tcp(src.netns, dst.ip(family), 8080)))
        results = await asyncio.gather(*(c[3] for c in checks))
        for (src, dst, family, _), result in zip(checks, results, strict=True):
            assert result.outcome == "open", f"{src.ref} → {dst.ref} IPv{family}: {result}"
            assert result.peer == dst.ref
        udp = await probe.udp(pods[0].netns, pods[-1].ip(4), 5353)
        assert (udp.outcome, udp.peer) == ("open", pods[-1].ref)
        if overlay == "vxlan":
            # The fabric knows no pod routes: cross-node pod traffic can only have gone through vxlan0.
            routes = await run("ip", "-n", cluster.plan.fabric_netns, "route", "show")
            assert "10.244." not in routes
            if cluster.wiring.attach == "cni":
                # Pods attached by xpunet get the overlay's MTU, so a full-sized packet that must not
                # be fragmented (IPv4 DF, as UDP applications often send) still crosses vxlan0.
                link = await run("ip", "-n", pods[0].netns, "-o", "link", "show", "eth0")
                assert " mtu 1450 " in link
                ping = ["ip", "netns", "exec", pods[0].netns, "ping", "-c1", "-W5", "-M", "do"]
                await run(*ping, "-s", str(1450 - 28), pods[-1].ip(4))


async def test_examples_are_what_the_watcher_reads() -> None:
    declared = load_declared(EXAMPLES)
    assert {p.ref for p in declared.pods} == {
        "shop/web-1",
        "shop/web-2",
        "shop/db",
        "shop/client",
        "ops/monitor",
        "ops/debug",
    }
    assert {s.name for s in declared.services} == {"web", "web-np", "db", "empty"}
    assert {p.name for p in declared.policies} == {"default-deny", "web-ingress", "db-from-web"}
    load_declared(EXAMPLES.parent / "edits")


async def test_a_pod_on_a_missing_node_fails_before_anything_is_created(tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "p.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: d, name: lost}\nspec: {nodeName: node-9}\n"
    )
    with pytest.raises(PlanError, match="node-9"):
        async with running_cluster(tmp_path, manifests=manifests, nodes=1):
            pass


async def test_down_removes_everything_after_kill_9_of_up(tmp_path: Path) -> None:
    env = {**os.environ, "XPUNETCTL_STATE_DIR": str(tmp_path / "runs")}
    up = await asyncio.create_subprocess_exec(
        XPUNETCTL,
        "up",
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--run",
        "e2ekill",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert up.stdout is not None
    try:
        seen: list[str] = []
        while not any(line.startswith("cluster e2ekill up") for line in seen):
            line = (await up.stdout.readline()).decode()
            assert line, "xpunetctl up ended early:\n" + "".join(seen)
            seen.append(line)
        run_dir = tmp_path / "runs" / "e2ekill"
        state = RunDir.open(run_dir).state
        assert len(list_netns("xpunet-e2ekill-")) == 5  # fabric, 2 nodes, 2 pods
        up.send_signal(signal.SIGKILL)
        await up.wait()
        assert marked_processes(str(run_dir), exclude=set()), "responders die with `up`?"
        assert list_netns("xpunet-e2ekill-")
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    down = await asyncio.create_subprocess_exec(XPUNETCTL, "down", stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await down.communicate()
    assert down.returncode == 0, out.decode()
    assert "run e2ekill" in out.decode()
    assert list_netns("xpunet-e2ekill-") == []
    assert marked_processes(str(run_dir), exclude=set()) == []
    assert all(process_starttime(p.pid) != p.starttime for p in state.processes)
    assert not run_dir.exists()
    again = await asyncio.create_subprocess_exec(XPUNETCTL, "down", stdout=asyncio.subprocess.PIPE, env=env)
    out, _ = await again.communicate()
    assert again.returncode == 0
    assert "no local cluster to remove" in out.decode()
