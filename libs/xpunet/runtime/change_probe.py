"""Lone changes through a compiler service, timed and taken apart (bench/policy.py and bench/lb.py use it).

A sample is one isolated change: a quiet gap (longer than the service's flush
interval, jittered so samples do not beat against periodic work), then one
``xpunet-k8s`` write stamped with ``xpunet-written-at``, made as the watcher
makes its writes (``put_many``; the value is encoded before the clock starts,
as the watcher's own encode is part of its event→KV lag, not of the
compiler's latency), and the clock stops when
an ``xpunet-intent`` write carrying that stamp arrives on the benchmark's watch
(the shared compiler loop stamps its writes with the earliest change's
written-at).  The first ``warmup`` samples are dropped.

Each sample is taken apart with the service's :class:`FlushTiming` (the flush
whose first change arrived inside the sample): *deliver* (put → the service's
watch hands it the change), *queue* (→ the flush starts), *compile* (→ encoded
changes), *write* (→ ``put_many`` acked), *observe* (→ the benchmark's watch
has it; overlaps *write*: the watch may see it before the ack).  Also per
sample: cyclic-GC pause time inside it (``gc.callbacks``), this process's CPU
time, and its involuntary context switches (preempted by another process);
from ``/proc/.../schedstat``, how long this thread was runnable but waiting for
a CPU, and the nats-server's CPU and run-queue time (all its threads).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import resource
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from xpunet.bus.api import InSync, KVEntry, StateStore
from xpunet.bus.tracing import WRITTEN_AT_HEADER
from xpunet.runtime.compiler_service import CompilerService, FlushTiming

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], loop: Literal["uvloop", "asyncio"] = "uvloop") -> T:
    """Run a benchmark on the event loop the services run on (``xpunet.runtime.service``: uvloop)."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


@dataclass(frozen=True, slots=True)
class Sample:
    put: float  # perf_counter before the put
    seen: float  # the intent arrived on the watch
    cpu_ms: float
    preempted: int  # involuntary context switches of this process meanwhile
    gc_ms: float
    gc_gen2: int  # full collections meanwhile
    timing: FlushTiming | None
    waited_ms: float  # this thread runnable but not running (run-queue wait, /proc schedstat)
    server_cpu_ms: float  # nats-server's threads on a CPU meanwhile (0 without its pid)
    server_waited_ms: float  # nats-server's threads runnable but not running

    @property
    def ms(self) -> float:
        return (self.seen - self.put) * 1000

    def phases(self) -> dict[str, float]:
        t = self.timing
        if t is None or t.first_change is None:
            return {}
        return {
            "deliver": (t.first_change - self.put) * 1000,
            "queue": (t.started - t.first_change) * 1000,
            "compile": (t.compiled - t.started) * 1000,
            "write": (t.written - t.compiled) * 1000,
            "observe": (self.seen - t.compiled) * 1000,
        }


@dataclass(frozen=True, slots=True)
class ProbeRun:
    samples: list[Sample]
    gc_pauses: list[tuple[float, float, int]]  # every collection over the run, gaps included
    gap: float
    warmup: int
    full_gc_ms: float  # one full collection right after the run: what it would cost a change


def _schedstat(path: str) -> tuple[int, int]:
    """(ns on a CPU, ns runnable on a run queue) of one task; zeros where /proc has no schedstat."""
    try:
        with open(path, "rb") as f:
            on_cpu, waiting, _ = f.read().split()
    except (OSError, ValueError):
        return 0, 0
    return int(on_cpu), int(waiting)


def _process_schedstat(pid: int | None) -> tuple[int, int]:
    if pid is None:
        return 0, 0
    on_cpu = waiting = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tasks:
        c, w = _schedstat(f"/proc/{pid}/task/{tid}/schedstat")
        on_cpu += c
        waiting += w
    return on_cpu, waiting


class _GcClock:
    """Every cyclic-GC pause of this process: (start, seconds, generation)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        else:
            self.pauses.append((self._started, now - self._started, info["generation"]))

    def between(self, start: float, end: float) -> tuple[float, int]:
        inside = [(d, g) for s, d, g in self.pauses if start <= s <= end]
        return sum(d for d, _ in inside) * 1000, sum(1 for _, g in inside if g == 2)


async def until_in_sync(watch: AsyncIterator[KVEntry | InSync]) -> None:
    async for item in watch:
        if isinstance(item, InSync):
            return


async def lone_changes(
    service: CompilerService,
    watch: AsyncIterator[KVEntry | InSync],
    k8s: StateStore,
    change: Callable[[int], tuple[str, bytes]],
    *,
    count: int,
    warmup: int,
    gap: float,
    server_pid: int | None = None,
    seed: int = 5,
) -> ProbeRun:
    """``warmup + count`` isolated changes (``change(i)``: the key and encoded value of change i).

    Returns the last ``count`` samples and every GC pause after the warm-up (gaps included).
    ``server_pid``: the nats-server, whose CPU and run-queue time per sample are recorded too.
    """
    me = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    timings: list[FlushTiming] = []
    flushed = asyncio.Event()

    def observe(timing: FlushTiming) -> None:
        timings.append(timing)
        flushed.set()

    service.flush_observer = observe
    clock = _GcClock()
    gc.callbacks.append(clock)
    rnd = random.Random(seed)
    samples: list[Sample] = []
    try:
        for i in range(warmup + count):
            key, value = change(i)
            await asyncio.sleep(gap * rnd.uniform(1.0, 1.5))
            stamp = f"{time.time():.6f}"
            timings.clear()
            flushed.clear()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            server0 = _process_schedstat(server_pid)
            _, waited0 = _schedstat(me)
            cpu = time.process_time()
            put = time.perf_counter()
            await k8s.put_many({key: value}, headers={WRITTEN_AT_HEADER: stamp})
            async with asyncio.timeout(10):
                async for item in watch:
                    if isinstance(item, KVEntry) and item.headers.get(WRITTEN_AT_HEADER) == stamp:
                        break
            seen = time.perf_counter()
            cpu_ms = (time.process_time() - cpu) * 1000
            waited_ms = (_schedstat(me)[1] - waited0) / 1e6
            server1 = _process_schedstat(server_pid)
            preempted = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - usage.ru_nivcsw
            # The watch may see the write before put_many has its ack: wait for the flush to finish.
            async with asyncio.timeout(10):
                await flushed.wait()
            if i < warmup:
                clock.pauses.clear()
                continue
            gc_ms, gen2 = clock.between(put, seen)
            mine = [t for t in timings if t.first_change is not None and put <= t.first_change <= seen]
            samples.append(
                Sample(
                    put,
                    seen,
                    cpu_ms,
                    preempted,
                    gc_ms,
                    gen2,
                    mine[0] if mine else None,
                    waited_ms,
                    (server1[0] - server0[0]) / 1e6,
                    (server1[1] - server0[1]) / 1e6,
                )
            )
    finally:
        gc.callbacks.remove(clock)
        service.flush_observer = None
    started = time.perf_counter()
    gc.collect()
    full_gc_ms = (time.perf_counter() - started) * 1000
    return ProbeRun(samples, clock.pauses, gap, warmup, full_gc_ms)


def _pct(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)


def _p50_max(values: list[float]) -> list[float]:
    ordered = sorted(values)
    return [_pct(ordered, 0.5), ordered[-1]] if ordered else []


def summary(run: ProbeRun) -> dict[str, Any]:
    """p50/p99/max of the change → intent time, and where the slowest 1 % (at least 3) spent it."""
    samples = run.samples
    by_time = sorted(samples, key=lambda s: s.ms)
    ms = [s.ms for s in by_time]
    cpu = sorted(s.cpu_ms for s in samples)
    tail = by_time[-max(3, len(samples) // 100) :]
    middle = by_time[len(by_time) // 4 : 3 * len(by_time) // 4]

    def mean_phases(group: list[Sample]) -> dict[str, float]:
        rows = [s.phases() for s in group if s.phases()]
        keys = ("deliver", "queue", "compile", "write", "observe")
        out = {k: round(statistics.fmean(r[k] for r in rows), 3) for k in keys} if rows else {}
        out["gc_ms"] = round(statistics.fmean(s.gc_ms for s in group), 3)
        out["preempted"] = round(statistics.fmean(s.preempted for s in group), 2)
        out["cpu_ms"] = round(statistics.fmean(s.cpu_ms for s in group), 3)
        out["waited_ms"] = round(statistics.fmean(s.waited_ms for s in group), 3)
        out["server_cpu_ms"] = round(statistics.fmean(s.server_cpu_ms for s in group), 3)
        out["server_waited_ms"] = round(statistics.fmean(s.server_waited_ms for s in group), 3)
        return out

    return {
        "gap_s": run.gap,
        "warmup": run.warmup,
        "full_gc_ms": round(run.full_gc_ms, 3),
        "samples": len(samples),
        "change_to_intent_ms_p50": _pct(ms, 0.5),
        "change_to_intent_ms_p90": _pct(ms, 0.9),
        "change_to_intent_ms_p95": _pct(ms, 0.95),
        "change_to_intent_ms_p99": _pct(ms, 0.99),
        "change_to_intent_ms_max": round(ms[-1], 3),
        # What a change wrote (its flush's intent keys and encoded bytes): size-independent or not.
        "intent_keys_per_change_p50_max": _p50_max([float(s.timing.keys) for s in samples if s.timing]),
        "intent_bytes_per_change_p50_max": _p50_max([float(s.timing.bytes) for s in samples if s.timing]),
        "change_cpu_ms_p50": _pct(cpu, 0.5),
        "change_cpu_ms_p99": _pct(cpu, 0.99),
        # Every collection over the measured run, gaps included: what a busier stream would meet.
        "gc_run_collections": [sum(1 for *_, g in run.gc_pauses if g == gen) for gen in (0, 1, 2)],
        "gc_run_ms_total": round(sum(d for _, d, _ in run.gc_pauses) * 1000, 3),
        "gc_run_ms_longest": round(max((d for _, d, _ in run.gc_pauses), default=0.0) * 1000, 3),
        "gc_ms_in_samples": round(sum(s.gc_ms for s in samples), 3),
        "gc_gen2_in_samples": sum(s.gc_gen2 for s in samples),
        "samples_with_gc": sum(1 for s in samples if s.gc_ms > 0),
        "samples_preempted": sum(1 for s in samples if s.preempted),
        # Mean phases of the middle half vs the slowest 1 %: what the tail adds, and where.
        "phases_ms_middle": mean_phases(middle),
        # Each phase's own p99 and max over all samples (a phase's tail need not be the total's).
        "phase_ms_p99_max": {
            k: [_pct(sorted(vals), 0.99), round(max(vals), 3)]
            for k in ("deliver", "queue", "compile", "write", "observe")
            if (vals := [s.phases()[k] for s in samples if s.phases()])
        },
        "phases_ms_slowest": mean_phases(tail),
        "slowest": [
            {
                "ms": round(s.ms, 3),
                **{k: round(v, 3) for k, v in s.phases().items()},
                "gc_ms": round(s.gc_ms, 3),
            }
            | {"preempted": s.preempted, "cpu_ms": round(s.cpu_ms, 3), "waited_ms": round(s.waited_ms, 3)}
            | {"server_cpu_ms": round(s.server_cpu_ms, 3), "server_waited_ms": round(s.server_waited_ms, 3)}
            for s in tail
        ],
    }


def headline(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """p50/p90/p95/p99 per size from :func:`summary` results (largest first); each percentile's
    ratio of the first size over the last (the p99 of a few hundred samples rests on a handful of
    them: the lower percentiles show whether the sizes differ or the tail is noise)."""
    names = ("p50", "p90", "p95", "p99")
    out: dict[str, Any] = {name: [r[f"change_to_intent_ms_{q}"] for q in names] for name, r in runs.items()}
    sizes = list(runs.values())
    if len(sizes) >= 2:
        first, last = sizes[0], sizes[-1]
        for q in names:
            if last[f"change_to_intent_ms_{q}"] > 0:
                out[f"{q}_ratio"] = round(
                    first[f"change_to_intent_ms_{q}"] / last[f"change_to_intent_ms_{q}"], 3
                )
    return out
