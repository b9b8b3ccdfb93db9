"""``xpunetctl up`` with a local cluster: build it, run the stack on it, stay up, tear it down."""

from __future__ import annotations

import asyncio
import sys
import time

from xpunet.cluster.cluster import ClusterOptions, LocalCluster, pods_summary
from xpunet.cluster.netns import ClusterError
from xpunet.cluster.plan import PlanError
from xpunet.ctl.stack import Stack, StackOptions, summary_lines
from xpunet.runtime.host import ServiceFailedError
from xpunet.runtime.settings import SettingsError

READY_TIMEOUT = 60.0


async def cluster_up(copts: ClusterOptions, base: StackOptions, stop: asyncio.Event) -> int:
    try:
        cluster = LocalCluster(copts)
    except (ClusterError, PlanError) as exc:
        print(f"xpunetctl up: {exc}", file=sys.stderr)
        return 2
    for note in cluster.wiring.notes:
        print(f"note: {note}", flush=True)
    stack: Stack | None = None
    code = 1
    try:
        options = await cluster.prepare(base)
        assert cluster.rd is not None
        print(f"run {cluster.run}: state in {cluster.rd.path}", flush=True)
        stack = Stack(options, stop_requested=stop)
        await stack.start()
        await stack.health_urls_bound()
        for line in summary_lines(stack):
            print(line, flush=True)
        async with asyncio.timeout(READY_TIMEOUT):
            ready = await stack.wait_ready()
        if ready:
            started = time.monotonic()
            await cluster.attach_pods(stack)
            converged = await cluster.wait_converged(stack)
            print(f"{len(cluster.pods)} pods attached ({cluster.wiring.attach}):", flush=True)
            for line in pods_summary(cluster):
                print(line, flush=True)
            print(
                f"cluster {cluster.run} up: {len(cluster.plan.nodes)} nodes, target {cluster.wiring.target}, "
                f"converged {converged * 1000:.0f} ms after the pods ({time.monotonic() - started:.2f}s "
                "with attachment); Ctrl-C to stop",
                flush=True,
            )
            print(f"  xpunetctl status --nats {stack.nats_urls[0]}", flush=True)
            print(
                f"  ip netns exec {next(iter(cluster.pods.values())).netns or '<pod netns>'} ...", flush=True
            )
            await stop.wait()
        code = 0
    except (ClusterError, PlanError, SettingsError) as exc:
        print(f"xpunetctl up: {exc}", file=sys.stderr)
        code = 2 if isinstance(exc, SettingsError | PlanError) else 1
    except TimeoutError as exc:
        print(f"xpunetctl up: {exc or 'services not ready in time'}", file=sys.stderr)
    except ServiceFailedError as exc:
        print(f"xpunetctl up: {exc}", file=sys.stderr)
    finally:
        if stack is not None:
            await stack.stop()
            if not stack.ok:
                code = 1
        removed = await cluster.close()
        print(f"stopped; removed {len(removed)} namespace(s)/process group(s)", flush=True)
    return code
