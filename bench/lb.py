"""Benchmark of the lb service: cold compile to in-sync, and one endpoint change to intent written.

Runs against a real nats-server (the bundled one) unless ``--no-nats``:

* cold: the Services/EndpointSlices/Nodes are in ``xpunet-k8s`` with the sync
  markers; the clock runs from the service's start (seed from KV, watches,
  compile, encode, ``put_many``) until its first flush is written.  The service
  is set up as its ``run(ctx)`` does (``xpunet.lb.coldstart``: GC paused, Maglev
  tables prefetched and built in ``--workers`` spawned processes); the lb
  process's CPU and the workers' CPU are reported apart.  Peak RSS of the
  process is reported (``ru_maxrss``, includes the benchmark's own objects).
* change: one EndpointSlice of a 10-endpoint service changes one endpoint;
  ``change_compile_*``: update + flush + encode in the compiler alone (``pure``,
  ``pure_small``); through NATS (``nats``): the service set up as its
  ``run(ctx)`` does (cold start, heap freezing, uvloop; ``--no-freeze`` and
  ``--loop asyncio`` for comparison, ``lb.flush_interval`` at its default),
  50 warm-up and ``--changes`` measured lone changes
  (``xpunet.runtime.change_probe``), each after a quiet gap of 50-75 ms, timed
  from the ``xpunet-k8s`` put to the intent write stamped with its written-at
  arriving on a watch of ``xpunet-intent``; split into phases, GC pauses, CPU
  and run-queue waits (this process and the nats-server).  Measured at the
  full size and at 100 services, the same way.

Usage: ``.venv/bin/python bench/lb.py [--services 10000] [--big 3] [--changes 500] [--workers N]
[--quick] [--no-pure] [--no-freeze] [--loop asyncio]`` (full size: ~1.5-2 min).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import time
from typing import Any

from xpunet.bus.nats import NatsBus, connect
from xpunet.embedded.nats import NatsServer
from xpunet.lb.coldstart import ColdGc, ColdStart
from xpunet.lb.service import LbOptions, LbService, encode_changes, load_existing
from xpunet.lb.state import LbCompiler
from xpunet.model.objects import (
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Labels,
    Node,
    NodeAddress,
    Service,
    ServicePort,
)
from xpunet.runtime.change_probe import headline, lone_changes, run_loop, summary, until_in_sync
from xpunet.runtime.compiler_service import HeapFreezer
from xpunet.wire import encode_object

NODES = 50
WARMUP = 50  # lone changes through NATS before the measured ones
CHANGE_GAP = 0.05  # seconds of quiet before each change (x 1..1.5): longer than lb.flush_interval


def _ip(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def build(services: int, big: int, per_service: int = 10, big_size: int = 1000) -> list[Any]:
    objs: list[Any] = [
        Node(name=f"node-{i}", addresses=(NodeAddress("InternalIP", f"172.16.{i // 250}.{i % 250 + 1}"),))
        for i in range(NODES)
    ]
    counter = 1
    for s in range(services + big):
        name = f"svc-{s}"
        size = big_size if s >= services else per_service
        objs.append(
            Service(
                namespace="bench",
                name=name,
                cluster_ips=(f"10.96.{s // 250}.{s % 250 + 1}",),
                ports=(ServicePort(80, name="http"),),
                selector=Labels({"app": name}),
            )
        )
        eps = tuple(
            Endpoint(addresses=(_ip(counter + i),), node_name=f"node-{(counter + i) % NODES}")
            for i in range(size)
        )
        counter += size
        objs.append(
            EndpointSlice(
                namespace="bench",
                name=f"{name}-1",
                service=name,
                address_type="IPv4",
                endpoints=eps,
                ports=(EndpointPort(8080, name="http"),),
            )
        )
    return objs


def key_of(obj: Any) -> str:
    if isinstance(obj, Node):
        return f"node.{obj.name}"
    return f"{obj.kind.value}.{obj.namespace}.{obj.name}"


def changed_slice(s: int, step: int) -> EndpointSlice:
    """Service s's slice with its first endpoint replaced (a fresh IP each step)."""
    name = f"svc-{s}"
    first = (1 << 23) + step
    rest = [
        Endpoint(addresses=(_ip(1 + s * 10 + i),), node_name=f"node-{(1 + s * 10 + i) % NODES}")
        for i in range(1, 10)
    ]
    eps = (Endpoint(addresses=(_ip(first),), node_name="node-0"), *rest)
    return EndpointSlice(
        namespace="bench",
        name=f"{name}-1",
        service=name,
        address_type="IPv4",
        endpoints=eps,
        ports=(EndpointPort(8080, name="http"),),
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def pure(services: int, big: int, changes: int) -> dict[str, Any]:
    """The compiler alone, in this process only (no table workers), GC as the service handles it."""
    objs = build(services, big)
    c = LbCompiler()
    cold = ColdGc()
    cold.pause()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for o in objs:
        c.update(o)
    out = c.flush()
    t1 = time.perf_counter()
    cpu1 = time.process_time()
    encoded = encode_changes(out.intents)
    t2 = time.perf_counter()
    cold.resume()
    lat: list[float] = []
    cpu: list[float] = []
    for step in range(changes):
        s = step % min(services, 1000)
        t = time.perf_counter()
        tc = time.thread_time()
        c.update(changed_slice(s, step))
        ch = c.flush()
        encode_changes(ch.intents)
        lat.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - tc) * 1000)
    return {
        "services": services + big,
        "compile_s": round(t1 - t0, 3),
        "compile_cpu_s": round(cpu1 - cpu0, 3),  # this process's CPU: robust to a busy machine
        "encode_s": round(t2 - t1, 3),
        "intent_keys": len(encoded),
        "intent_bytes": sum(len(v) for v in encoded.values() if v),
        "change_compile_ms_p50": pct(lat, 0.5),
        "change_compile_ms_p99": pct(lat, 0.99),
        # The same in CPU time of this thread: what a change costs, whatever else the machine runs.
        "change_compile_cpu_ms_p50": pct(cpu, 0.5),
        "change_compile_cpu_ms_p99": pct(cpu, 0.99),
    }


async def end_to_end(
    bus: NatsBus,
    services: int,
    big: int,
    changes: int,
    tag: str,
    workers: int | None,
    *,
    gap: float = CHANGE_GAP,
    warmup: int = WARMUP,
    freeze: bool = True,
    server_pid: int | None = None,
) -> dict[str, Any]:
    k8s, intents, status = [await bus.kv(f"bench-{tag}-{b}") for b in ("k8s", "intent", "status")]
    try:
        objs = build(services, big)
        batch = {key_of(o): encode_object(o) for o in objs}
        keys = list(batch)
        for i in range(0, len(keys), 5000):
            await k8s.put_many({k: batch[k] for k in keys[i : i + 5000]})
        for kind in ("service", "endpointslice", "node"):
            await k8s.put(f"sync.{kind}", b"\x80")
        del batch, objs

        children0 = _children_cpu()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        # As the service's run(ctx): GC paused and table workers until the first flush.
        cold = ColdStart(workers)
        cold.begin()
        compiler = LbCompiler(table_builder=cold.tables, prefetch=cold.tables.prefetch)
        existing, rejections = await load_existing(intents, status)
        compiler.seed(existing, rejections)
        service = LbService(
            compiler,
            k8s=k8s,
            intents=intents,
            status=status,
            flush_interval=LbOptions().flush_interval,
            cold=cold,
            heap=HeapFreezer() if freeze else None,  # as run(ctx) does
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(service.run(stopping))
        await service.synced.wait()
        cold_s = time.perf_counter() - t0
        cold_cpu = time.process_time() - cpu0

        watch = intents.watch("global.lb.svc.bench.")
        await until_in_sync(watch)

        def change(step: int) -> tuple[str, bytes]:
            s = step % min(services, 1000)
            return f"endpointslice.bench.svc-{s}-1", encode_object(changed_slice(s, step))

        run = await lone_changes(
            service, watch, k8s, change, count=changes, warmup=warmup, gap=gap, server_pid=server_pid
        )
        await watch.aclose()
        stopping.set()
        await task
        return {
            "services": services + big,
            "cold_to_in_sync_s": round(cold_s, 3),
            "cold_cpu_s": round(cold_cpu, 3),  # lb's CPU (nats-server runs in its own process)
            # The table workers' CPU (exited and reaped children; nats-server is still running).
            "cold_workers_cpu_s": round(_children_cpu() - children0, 3),
            "flush_interval_s": LbOptions().flush_interval,
            "heap_frozen": freeze,
            **summary(run),
        }
    finally:
        for b in ("k8s", "intent", "status"):
            await bus.delete_kv(f"bench-{tag}-{b}")


async def with_nats(args: argparse.Namespace) -> dict[str, Any]:
    with NatsServer(name="xpunet-bench") as server:
        bus = await connect(server.url, name="bench-lb", initial_timeout=10, request_timeout=30)
        try:
            freeze = not args.no_freeze
            full = await end_to_end(
                bus,
                args.services,
                args.big,
                args.changes,
                "full",
                args.workers,
                freeze=freeze,
                server_pid=server.pid,
                gap=args.gap,
            )
            small = await end_to_end(
                bus,
                100,
                0,
                args.changes,
                "small",
                args.workers,
                freeze=freeze,
                server_pid=server.pid,
                gap=args.gap,
            )
        finally:
            await bus.drain()
    return {"full": full, "small": small}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--big", type=int, default=3, help="extra services with 1,000 endpoints")
    parser.add_argument(
        "--changes", type=int, default=500, help="measured changes per size (after 50 warm-up)"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 services, 1 big, 50 changes")
    parser.add_argument("--no-nats", action="store_true", help="compiler only")
    parser.add_argument(
        "--workers", type=int, default=None, help="cold-start table workers (default: one per spare CPU)"
    )
    parser.add_argument(
        "--no-freeze", action="store_true", help="without the shared loop's heap freezing (for comparison)"
    )
    parser.add_argument("--gap", type=float, default=CHANGE_GAP, help="quiet seconds before each change")
    parser.add_argument("--no-pure", action="store_true", help="skip the in-process compiler figures")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop (services run on uvloop)"
    )
    args = parser.parse_args()
    if args.quick:
        args.services, args.big, args.changes = 1000, 1, 50
    result: dict[str, Any] = {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    if not args.no_pure:
        result["pure"] = pure(args.services, args.big, args.changes)
        result["pure_small"] = pure(100, 0, args.changes)
    if not args.no_nats:
        result["loop"] = args.loop
        result["nats"] = run_loop(with_nats(args), args.loop)
        result["change_to_intent_ms"] = headline(result["nats"])
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
