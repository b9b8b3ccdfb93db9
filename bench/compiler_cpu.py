"""Where a lone policy change's process CPU goes: the service loop, the bus, and the benchmark's own share.

Runs the policy service as ``bench/policy.py --nats`` does (uvloop, heap freezing;
its synthetic cluster, default 500 pods) against the bundled nats-server and drives it
with ``xpunet.runtime.change_probe.lone_changes``.  ``--gap 0`` (default) runs the
changes back to back with ``policy.flush_interval`` 0 ("warm": what the code costs);
``--gap 0.05`` is the bench's quiet gap (this VM then charges several times more CPU
for the same work, see docs/benchmarks.md "machine").

Pieces are timed with ``time.process_time`` by wrappers installed on the service
loop, the bus and the compiler for the run (a wrapper costs ~0.3 µs; coroutines are
timed only while they run).  Figures are inclusive: "service flush" contains the
compile, the encode and ``put_many``.  Prints JSON: µs per change by piece, and the
process CPU per sample (p50) of the probe.

    .venv/bin/python bench/compiler_cpu.py                      # 300 warm changes, ~10 s
    .venv/bin/python bench/compiler_cpu.py --changes 1000
    .venv/bin/python bench/compiler_cpu.py --gap 0.05 --changes 300
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.util
import json
import os
import sys
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import xpunet.policy.service as policy_service
import xpunet.runtime.compiler_service as compiler_service
from xpunet.bus.nats import NatsStateStore, connect
from xpunet.bus.nats import _kv as nats_kv
from xpunet.bus.nats._client import LeanParser
from xpunet.bus.nats._kv import AckRouter
from xpunet.bus.nats._watch import KVWatch
from xpunet.embedded.nats import NatsServer
from xpunet.policy.compiler import PolicyCompiler
from xpunet.policy.service import PolicyFeed, PolicyService, load_existing
from xpunet.runtime.change_probe import lone_changes, run_loop, until_in_sync
from xpunet.runtime.compiler_service import CompilerService, HeapFreezer
from xpunet.wire import encode_object

SPENT: defaultdict[str, float] = defaultdict(float)
CALLS: Counter[str] = Counter()


def _load_policy_bench() -> Any:
    """bench/policy.py (not a package) for its synthetic cluster."""
    spec = importlib.util.spec_from_file_location("bench_policy", Path(__file__).with_name("policy.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[label] += time.process_time() - started
            CALLS[label] += 1

    return wrapper


@types.coroutine
def _drive(label: str, coro: Coroutine[Any, Any, Any]) -> Generator[Any, Any, Any]:
    """Run ``coro`` step by step, charging only the time it runs to ``label``."""
    send: Any = None
    error: BaseException | None = None
    while True:
        started = time.process_time()
        try:
            step = coro.throw(error) if error is not None else coro.send(send)
        except StopIteration as done:
            return done.value
        finally:
            SPENT[label] += time.process_time() - started
        error = None
        try:
            send = yield step
        except BaseException as exc:  # handed on to the coroutine, as await does
            error, send = exc, None


def _timed_coro(label: str, fn: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        CALLS[label] += 1
        return await _drive(label, fn(*args, **kwargs))

    return wrapper


def instrument() -> None:
    """Install the wrappers (this process only, for the run)."""
    methods: list[tuple[Any, str, str]] = [
        (CompilerService, "apply", "service: apply (decode + compiler update)"),
        (PolicyFeed, "flush", "service: compile + encode (PolicyFeed.flush)"),
        (PolicyCompiler, "flush", "service:   compile (PolicyCompiler.flush)"),
        (HeapFreezer, "flushed", "service: gen0 collection after the flush"),
        (AckRouter, "_on_ack", "service: put_many acks"),
    ]
    for owner, name, label in methods:
        setattr(owner, name, _timed(label, getattr(owner, name)))
    original_on_msg = KVWatch._on_msg

    def on_msg(self: KVWatch, *args: Any) -> None:
        label = f"watch message: {'bench (intents)' if 'intent' in self._store.bucket else 'service (k8s)'}"
        _timed(label, original_on_msg)(self, *args)

    setattr(KVWatch, "_on_msg", on_msg)  # noqa: B010 - an accounting wrapper, for this run only
    coroutines: list[tuple[Any, str, str]] = [
        (CompilerService, "flush", "service: flush (span, compile, encode, put_many)"),
        (NatsStateStore, "put_many", "service: put_many (incl. ack wait)"),
        (NatsStateStore, "put", "bench: put (nats-py request)"),
        (LeanParser, "parse", "reader: parse + every handler (watches, acks)"),
    ]
    for owner, name, label in coroutines:
        setattr(owner, name, _timed_coro(label, getattr(owner, name)))
    for module, name, label in [
        (compiler_service, "decode_k8s", "service:   decode of the input"),
        (policy_service, "encode_object", "service:   encode of the intents"),
        (nats_kv, "inject_headers", "bus: inject_headers (put_many and the bench's put)"),
        (nats_kv, "validate_key", "bus: validate_key"),
    ]:
        setattr(module, name, _timed(label, getattr(module, name)))


async def measure(pods: int, changes: int, gap: float) -> dict[str, Any]:
    cluster = _load_policy_bench()
    size = next((s for s in cluster.SIZES.values() if s[0] == pods), None)
    if size is None:
        raise SystemExit(f"--pods must be one of {sorted(cluster.SIZES)}")
    nss, pod_objs, pols = cluster.build_cluster(*size)
    with NatsServer(name="xpunet-bench-compiler-cpu") as server:
        bus = await connect(server.url, name="bench-compiler-cpu", initial_timeout=10, request_timeout=30)
        k8s, intents, status = [await bus.kv(f"bench-cpu-{b}") for b in ("k8s", "intent", "status")]
        try:
            batch = {f"namespace.{n.name}": encode_object(n) for n in nss}
            batch.update({f"networkpolicy.{p.namespace}.{p.name}": encode_object(p) for p in pols})
            batch.update({f"pod.{p.namespace}.{p.name}": encode_object(p) for p in pod_objs})
            await k8s.put_many(batch)
            for kind in ("pod", "namespace", "networkpolicy"):
                await k8s.put(f"sync.{kind}", b"\x80")
            existing, reports = await load_existing(intents, status)
            service = PolicyService(
                PolicyCompiler(),
                k8s=k8s,
                intents=intents,
                status=status,
                flush_interval=0.0 if gap == 0 else 0.02,
                existing=existing,
                existing_reports=reports,
                heap=HeapFreezer(),
            )
            stopping = asyncio.Event()
            task = asyncio.create_task(service.run(stopping))
            await service.synced.wait()
            watch = intents.watch("")
            await until_in_sync(watch)
            change = cluster.set_movers(nss, pod_objs, pols)  # as bench/policy.py: every change writes

            await lone_changes(service, watch, k8s, change, count=50, warmup=50, gap=gap)
            instrument()
            SPENT.clear()
            CALLS.clear()
            run = await lone_changes(service, watch, k8s, change, count=changes, warmup=0, gap=gap, seed=9)
            await watch.aclose()
            stopping.set()
            await task
        finally:
            for b in ("k8s", "intent", "status"):
                await bus.delete_kv(f"bench-cpu-{b}")
            await bus.drain()
    cpu = sorted(s.cpu_ms for s in run.samples)
    return {
        "pods": pods,
        "changes": changes,
        "gap_s": gap,
        "sample_cpu_ms_p50": round(cpu[len(cpu) // 2], 3),
        "us_per_change": {
            label: f"{SPENT[label] / changes * 1e6:.1f} us in {CALLS[label] / changes:.2f} calls"
            for label in sorted(SPENT, key=lambda k: -SPENT[k])
        },
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=500, help="synthetic cluster size of bench/policy.py")
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--gap", type=float, default=0.0, help="quiet seconds before each change (0: warm)")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    result |= run_loop(measure(args.pods, args.changes, args.gap))
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["note"] = "us_per_change: process CPU per change by piece (inclusive), and calls per change"
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main(sys.argv[1:])
