"""Bus benchmark: KV updates/s end to end (put_many → watch) and latencies at a steady 1k msgs/s.

Starts its own nats-server (the embedded launcher) unless ``--url`` is given,
and prints one JSON object.  ``--quick`` runs small sizes for a smoke check.

    .venv/bin/python bench/bus.py            # full size
    .venv/bin/python bench/bus.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.nats import connect
from xpunet.embedded.nats import NatsServer


def _server_cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by the (embedded) server process; 0 when it is not ours."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _latency_summary(samples_ms: list[float]) -> dict[str, float | int]:
    return {
        "count": len(samples_ms),
        "p50_ms": round(_percentile(samples_ms, 0.50), 3),
        "p99_ms": round(_percentile(samples_ms, 0.99), 3),
        "max_ms": round(max(samples_ms), 3),
        "mean_ms": round(statistics.fmean(samples_ms), 3),
    }


async def kv_end_to_end(
    url: str, *, updates: int, keys: int, value_size: int, batch: int, server_pid: int | None
) -> dict[str, object]:
    """A writer put_many()s ``updates`` values over ``keys`` keys; a watcher (own connection) gets all."""
    writer = await connect(url, name="bench-writer")
    watcher = await connect(url, name="bench-watcher")
    try:
        store = await writer.kv("bench-e2e")
        watched = await watcher.kv("bench-e2e", create=False)
        value = b"v" * value_size
        async with contextlib.aclosing(watched.watch()) as watch:
            first = await anext(watch)
            assert isinstance(first, InSync), first
            received = 0
            last_seen = 0

            async def consume(target: int) -> None:
                nonlocal received, last_seen
                async for item in watch:
                    if isinstance(item, KVEntry):
                        received += 1
                        last_seen = item.revision
                        if received >= target:
                            return

            consumer = asyncio.create_task(consume(updates))
            start = time.perf_counter()
            cpu_start, server_start = time.process_time(), _server_cpu_seconds(server_pid)
            write_done = start
            for offset in range(0, updates, batch):
                changes = {f"obj.{(offset + i) % keys}": value for i in range(min(batch, updates - offset))}
                # Distinct keys per batch: a mapping cannot hold the same key twice.
                await store.put_many(changes)
            write_done = time.perf_counter()
            await consumer
            end = time.perf_counter()
            cpu = time.process_time() - cpu_start
            server_cpu = _server_cpu_seconds(server_pid) - server_start
        return {
            "updates": updates,
            "keys": keys,
            "value_bytes": value_size,
            "put_many_batch": batch,
            "writer_updates_per_s": round(updates / (write_done - start)),
            "end_to_end_updates_per_s": round(updates / (end - start)),
            "seconds": round(end - start, 3),
            # CPU per update (client: writer + watcher in this process): the machine-independent cost.
            "client_cpu_us_per_update": round(cpu / updates * 1e6, 2),
            "server_cpu_us_per_update": round(server_cpu / updates * 1e6, 2) if server_pid else None,
            "last_revision_seen": last_seen,
        }
    finally:
        await watcher.drain()
        with contextlib.suppress(Exception):
            await writer.delete_kv("bench-e2e")
        await writer.drain()


async def _settle(server_pid: int | None, *, idle_fraction: float = 0.05, limit: float = 15.0) -> float:
    """Wait until the server is idle again (after the burst it persists and compacts); seconds waited.

    The latency runs measure a steady 1k/s, not the tail of the 200k-update burst before them.
    """
    if server_pid is None:
        return 0.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < limit:
        before = _server_cpu_seconds(server_pid)
        await asyncio.sleep(0.5)
        if _server_cpu_seconds(server_pid) - before <= idle_fraction * 0.5:
            break
    return round(loop.time() - start, 2)


async def _paced(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> int:
    """Call ``send(i)`` at a steady ``rate`` per second on an absolute schedule (no drift)."""
    interval = 1.0 / rate
    count = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(i)
    return count


async def core_latency(url: str, *, rate: float, seconds: float) -> dict[str, object]:
    pub = await connect(url, name="bench-pub")
    sub_bus = await connect(url, name="bench-sub")
    samples: list[float] = []
    try:
        sub = await sub_bus.subscribe("xpunet.bench.latency")
        await sub_bus.flush()

        async def receive(n: int) -> None:
            async for msg in sub:
                samples.append((time.perf_counter_ns() - int(msg.data)) / 1e6)
                if len(samples) >= n:
                    return

        async def send(_: int) -> None:
            await pub.publish("xpunet.bench.latency", str(time.perf_counter_ns()).encode())

        n = int(rate * seconds)
        receiver = asyncio.create_task(receive(n))
        await _paced(rate, seconds, send)
        await asyncio.wait_for(receiver, 30)
        await sub.unsubscribe()
    finally:
        await sub_bus.drain()
        await pub.drain()
    return {"rate_per_s": rate, "seconds": seconds, **_latency_summary(samples)}


async def kv_latency(url: str, *, rate: float, seconds: float) -> dict[str, object]:
    writer = await connect(url, name="bench-kv-writer")
    watcher = await connect(url, name="bench-kv-watcher")
    samples: list[float] = []
    try:
        store = await writer.kv("bench-latency")
        watched = await watcher.kv("bench-latency", create=False)
        async with contextlib.aclosing(watched.watch()) as watch:
            first = await anext(watch)
            assert isinstance(first, InSync), first

            async def receive(n: int) -> None:
                async for item in watch:
                    if isinstance(item, KVEntry) and item.value is not None:
                        samples.append((time.perf_counter_ns() - int(item.value)) / 1e6)
                        if len(samples) >= n:
                            return

            async def send(i: int) -> None:
                await store.put(f"k.{i % 100}", str(time.perf_counter_ns()).encode())

            n = int(rate * seconds)
            receiver = asyncio.create_task(receive(n))
            await _paced(rate, seconds, send)
            await asyncio.wait_for(receiver, 30)
    finally:
        await watcher.drain()
        await writer.drain()
    return {"rate_per_s": rate, "seconds": seconds, **_latency_summary(samples)}


async def run(args: argparse.Namespace, url: str, server_pid: int | None) -> dict[str, object]:
    result: dict[str, object] = {
        "bench": "bus",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0],
        "loop": args.loop,
        "quick": args.quick,
    }
    result["kv_end_to_end"] = await kv_end_to_end(
        url,
        updates=args.updates,
        keys=args.keys,
        value_size=args.value_size,
        batch=args.batch,
        server_pid=server_pid,
    )
    result["server_settle_seconds"] = await _settle(server_pid)
    result["core_publish_consume_latency"] = await core_latency(url, rate=args.rate, seconds=args.seconds)
    result["kv_put_watch_latency"] = await kv_latency(url, rate=args.rate, seconds=args.seconds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--url", help="use this NATS server instead of starting one")
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=10_000, help="keys per put_many call")
    parser.add_argument("--value-size", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second for the latency runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each latency run")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    if args.quick:
        args.updates, args.keys, args.batch, args.seconds = 20_000, 5_000, 5_000, 1.0

    def go(url: str, server_pid: int | None) -> dict[str, object]:
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(run(args, url, server_pid))
        return asyncio.run(run(args, url, server_pid))

    if args.url:
        result = go(args.url, None)
    else:
        with NatsServer(name="xpunet-bench") as server:
            result = go(server.url, server.pid)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
