"""Watcher benchmark: a synthetic cluster streamed through the real watcher into a real NATS KV.

Three processes: this one runs the local Kubernetes API server
(``xpunet.testing.kubeapi``) with the synthetic cluster and measures; a child
process runs the watcher (``ApiSource`` over the real kubernetes_asyncio
client, no leader election) exactly as the service does; nats-server is the
embedded launcher's.

Phase 1: time from starting the watcher to every ``sync.<kind>`` marker being
in KV, and the watcher's peak RSS.  Phase 2: 100 pod changes/s (a new IP each,
on distinct pods) for a minute; event→KV lag = from the API write to this
process seeing the new value through a KV watch, so it includes the API's watch
stream, the watcher and NATS delivery.

    .venv/bin/python bench/watcher.py            # full size
    .venv/bin/python bench/watcher.py --quick    # 1/30 of the cluster, 10 s of changes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from opentelemetry import metrics, trace

from xpunet.bus.api import InSync
from xpunet.bus.nats import connect
from xpunet.embedded.nats import NatsServer
from xpunet.model import Kind, Pod
from xpunet.testing.kubeapi import FakeKubeAPI, ipv4, pod, synthetic_cluster
from xpunet.watcher.engine import ApiSource, Watcher
from xpunet.watcher.informer import InformerOptions
from xpunet.watcher.kube import api_client
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.watcher.state import sync_key
from xpunet.wire import decode_k8s, encode_object

FULL = {"nodes": 5000, "pods": 150_000, "services": 10_000, "endpoints": 100_000, "policies": 2000}


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the steadier figure on a shared machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (the watcher's parse workers)."""
    total = _cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += _cpu_seconds(int(child))
    return total


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _LagRecorder(WatcherMetrics):
    """Also keeps the watcher's own event→KV-ack lags, to tell its share from the rest of the path."""

    def __init__(self) -> None:
        super().__init__(metrics.get_meter("bench"))
        self.lags: list[float] = []

    def lag(self, seconds: float) -> None:
        self.lags.append(seconds)


async def child(args: argparse.Namespace) -> None:
    """The watcher under test, as the service runs it (without the runtime around it)."""
    bus = await connect(args.nats, name="bench-watcher", initial_timeout=10)
    store = await bus.kv(args.bucket)
    kube = await api_client(args.kubeconfig)
    recorder = _LagRecorder()
    watcher = Watcher(
        store=store,
        source=ApiSource(kube, InformerOptions(page_size=args.page_size), parse_workers=args.parse_workers),
        encode=encode_object,
        tracer=trace.get_tracer("bench"),
        metrics=recorder,
        write_batch=args.write_batch,
        freeze_gc_after_sync=True,  # as the service does
    )
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    # The parent signals: SIGUSR1 = in sync (reset the lag samples, write the profile),
    # SIGUSR2 = report the watcher's own lags (one JSON line on stdout).
    loop = asyncio.get_running_loop()

    def reset() -> None:
        recorder.lags.clear()
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)

    def report() -> None:
        lags = recorder.lags
        line = {"p50_ms": _percentile(lags, 0.5) * 1000, "p99_ms": _percentile(lags, 0.99) * 1000}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    loop.add_signal_handler(signal.SIGUSR1, reset)
    loop.add_signal_handler(signal.SIGUSR2, report)
    # SIGTERM: stop cleanly, so parse workers exit too (they hold our stdout open).
    task = asyncio.create_task(watcher.run())
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await bus.drain()


async def parent(args: argparse.Namespace) -> dict[str, object]:
    sizes = {k: max(1, v // 30) for k, v in FULL.items()} if args.quick else dict(FULL)
    churn_seconds = 10.0 if args.quick else args.churn_seconds
    api = FakeKubeAPI(history_limit=1_000_000)
    t = time.monotonic()
    api.apply_many(synthetic_cluster(**sizes))
    build_s = time.monotonic() - t
    gc.freeze()  # the fake API's 177k objects: keep full GC passes here from stalling the churn
    await api.start()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(name="bench-watcher") as nats_server:
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        bus = await connect(nats_server.url, name="bench", initial_timeout=10)
        bucket = "bench-k8s"
        store = await bus.kv(bucket)
        cmd = [sys.executable, __file__, "--child", "--nats", nats_server.url, "--bucket", bucket]
        cmd += ["--kubeconfig", str(kubeconfig), "--page-size", str(args.page_size)]
        cmd += ["--write-batch", str(args.write_batch), "--loop", args.loop]
        cmd += ["--parse-workers", str(args.parse_workers)]
        cmd += ["--profile", args.profile] if args.profile else []
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        try:
            pending = {sync_key(k) for k in Kind}
            while pending:
                for key in list(pending):
                    if await store.get(key) is not None:
                        pending.discard(key)
                await asyncio.sleep(0.05)
            in_sync_s = time.monotonic() - start
            rss_sync = _peak_rss_mib(proc.pid)
            cpu_sync = _tree_cpu_seconds(proc.pid)
            nats_cpu_sync = _cpu_seconds(nats_server.pid) if nats_server.pid else float("nan")
            keys = len(await store.keys(""))

            # Phase 2: churn pods of one namespace (watched here) at a steady rate.
            ns = "ns-0"
            # synthetic_cluster puts pod i in namespace ns-(i % 50)
            names = [f"pod-{i}" for i in range(0, sizes["pods"], 50)]
            sent: dict[str, tuple[float, str]] = {}
            lags: list[float] = []
            ready, all_seen = asyncio.Event(), asyncio.Event()
            sending = True

            async def follow() -> None:
                async for item in store.watch(f"pod.{ns}."):
                    if isinstance(item, InSync):
                        ready.set()
                        continue
                    want = sent.get(item.key)
                    if want is None or item.value is None:
                        continue
                    obj = decode_k8s(item.value)
                    if isinstance(obj, Pod) and obj.ips == (want[1],):
                        lags.append(time.monotonic() - want[0])
                        del sent[item.key]
                        if not sent and not sending:
                            all_seen.set()

            follower = asyncio.create_task(follow())
            await ready.wait()
            proc.send_signal(signal.SIGUSR1)
            total = int(churn_seconds * args.rate)
            t0 = time.monotonic()
            for i in range(total):
                await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
                name = names[i % len(names)]
                ip = ipv4(i, 11 << 24)
                sent[f"pod.{ns}.{name}"] = (time.monotonic(), ip)
                api.apply(pod(ns, name, ip=ip, node="node-0"))
            sending = False
            if not sent:
                all_seen.set()
            async with asyncio.timeout(30):
                await all_seen.wait()
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            rss_peak = _peak_rss_mib(proc.pid)
            proc.send_signal(signal.SIGUSR2)
            own = json.loads(await proc.stdout.readline())
        finally:
            proc.terminate()
            await proc.wait()
            await bus.drain()
            await api.stop()
    return {
        "bench": "watcher",
        "quick": args.quick,
        "sizes": sizes,
        "keys_in_kv": keys,
        "build_cluster_s": round(build_s, 2),
        "in_sync_s": round(in_sync_s, 2),
        "objects_per_s": round(keys / in_sync_s),
        "watcher_cpu_s_at_sync": round(cpu_sync, 2),
        "nats_server_cpu_s_at_sync": round(nats_cpu_sync, 2),
        "peak_rss_mib_at_sync": round(rss_sync, 1),
        "peak_rss_mib": round(rss_peak, 1),
        "churn": {
            "rate_per_s": args.rate,
            "seconds": churn_seconds,
            "changes": total,
            "seen": len(lags),
            "lag_p50_ms": round(_percentile(lags, 0.5) * 1000, 2),
            "lag_p99_ms": round(_percentile(lags, 0.99) * 1000, 2),
            "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 2),
            "watcher_own_lag_p50_ms": round(own["p50_ms"], 2),
            "watcher_own_lag_p99_ms": round(own["p99_ms"], 2),
        },
        "page_size": args.page_size,
        "write_batch": args.write_batch,
        "parse_workers": args.parse_workers,
        "watcher_loop": args.loop,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1/30 of the cluster, 10 s of changes")
    p.add_argument("--rate", type=float, default=100.0, help="changes per second in phase 2")
    p.add_argument("--churn-seconds", type=float, default=60.0)
    p.add_argument("--page-size", type=int, default=500)
    p.add_argument("--write-batch", type=int, default=5000)
    p.add_argument("--parse-workers", type=int, default=0, help="worker processes decoding list pages")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the watcher's event loop")
    p.add_argument("--profile", help="write a cProfile of the watcher up to in-sync to this file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nats", help=argparse.SUPPRESS)
    p.add_argument("--bucket", help=argparse.SUPPRESS)
    p.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        # The runtime runs services under uvloop; so does the watcher here unless told otherwise.
        with contextlib.suppress(KeyboardInterrupt):
            if args.loop == "uvloop":
                uvloop.run(child(args))
            else:
                asyncio.run(child(args))
        return
    print(json.dumps(asyncio.run(parent(args)), indent=2))


if __name__ == "__main__":
    main()
