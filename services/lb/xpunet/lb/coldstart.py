"""What makes the lb service's cold start fast: Maglev tables over several processes, no GC stalls.

A cold start compiles every Service at once, and the Maglev fill (pure Python,
~0.25 ms per 10-backend table) is most of that.  Tables are pure functions of
their backend identities, so :class:`TablePool` spreads a big batch over worker
processes *and* this one (bit-identical results whatever the split; small
batches, i.e. every later flush and small clusters, stay in-process).  While
the snapshot is still being read, the compiler names the tables new
EndpointSlices will likely need (:meth:`TablePool.prefetch`), so the workers
fill them on the other CPUs before the first flush asks.  Workers are spawned
(not forked: the service has threads) once enough work shows up and are shut
down after the first flush.

:class:`ColdGc` keeps the cyclic garbage collector out of the cold start: its
full collections walk the whole growing heap (hundreds of thousands of
objects, ~1 s in total at 10,000 Services) although nearly everything the
cold start allocates lives on.  Afterwards the heap is frozen (moved out of the
collector's view) so later full collections, which would otherwise stall a
single endpoint change for as long, only walk what was allocated since.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor

from xpunet.lb.compiler import Identities
from xpunet.lb.maglev import build_table, table_size

logger = logging.getLogger(__name__)

# Work is counted in table buckets (a 10-backend table has 1,009, ~0.25 ms to fill).
MIN_PARALLEL_WORK = 1_000_000  # below this (~0.25 s) workers are not started: spawning costs more
CHUNK_WORK = 65_000  # buckets per task: small enough to balance, big enough to amortise the pickling
MAX_GC_PAUSE = 60.0  # seconds: the GC comes back even if the first flush never does


def default_workers() -> int:
    """One worker per CPU this process may use, beside this one (at most 3); 0 on a single CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(3, cpus - 1))


def _build_chunk(idents: list[Identities]) -> list[bytes | tuple[int, ...]]:
    """Worker side: tables of up to 255 backends travel as bytes (cheaper to pickle than int tuples)."""
    out: list[bytes | tuple[int, ...]] = []
    for ident in idents:
        table = build_table(ident)
        out.append(bytes(table) if len(ident) < 256 else table)
    return out


class TablePool:
    """A :data:`xpunet.lb.state.TableBuilder` over worker processes plus the calling one.

    A batch is cut into chunks, all submitted; the caller then works through
    them from the end, taking every chunk it can still cancel (no worker has
    started it), while workers take them from the front, so both finish at
    about the same time whatever their relative speed.

    :meth:`prefetch` lets the compiler name likely tables while the snapshot
    is still being read: once ``min_work`` worth is named, workers build them
    meanwhile, and the batch takes every one it asks for from there.  A wrong
    guess costs a worker's time, never a wrong table (a table is a function of
    its identities alone).
    """

    def __init__(
        self, workers: int, *, min_work: int = MIN_PARALLEL_WORK, chunk_work: int = CHUNK_WORK
    ) -> None:
        if workers < 0 or chunk_work < 1:
            raise ValueError("TablePool needs workers >= 0 and chunk_work >= 1")
        self._workers = workers
        self._min_work = min_work
        self._chunk_work = chunk_work
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False
        self._named: list[Identities] = []  # prefetches not submitted yet
        self._named_work = 0
        self._named_total = 0  # work named since the start, to decide on starting workers
        self._early: list[tuple[list[Identities], Future[list[bytes | tuple[int, ...]]]]] = []
        self.parallel_batches = 0  # batches that went to the workers (for tests and logs)
        self.prefetched = 0  # tables a batch took from the prefetch (for tests and logs)

    def close(self) -> None:
        """Stop the workers; later batches are built in-process, prefetches ignored."""
        self._closed = True
        self._named.clear()
        self._early.clear()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _pool(self) -> ProcessPoolExecutor | None:
        if self._executor is None and not self._closed and self._workers:
            # spawn: the service has threads (telemetry, the loop's executor); fork with threads is unsafe.
            self._executor = ProcessPoolExecutor(
                max_workers=self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    def prefetch(self, ident: Identities) -> None:
        """Start building this table in a worker if the cold start looks big enough to need them."""
        if self._closed or not self._workers:
            return
        self._named.append(ident)
        work = table_size(len(ident))
        self._named_work += work
        self._named_total += work
        if self._named_work < self._chunk_work or (
            self._executor is None and self._named_total < self._min_work
        ):
            return
        executor = self._pool()
        named, self._named, self._named_work = self._named, [], 0
        if executor is None:
            return
        try:
            for chunk in self._chunks(named):
                self._early.append((chunk, executor.submit(_build_chunk, chunk)))
        except RuntimeError as exc:  # the pool broke: the batch will find out and build in-process
            logger.warning("lb: table workers unavailable for prefetching (%s)", exc)

    def _chunks(self, idents: Sequence[Identities]) -> list[list[Identities]]:
        chunks: list[list[Identities]] = []
        chunk: list[Identities] = []
        work = 0
        for ident in idents:
            chunk.append(ident)
            work += table_size(len(ident))
            if work >= self._chunk_work:
                chunks.append(chunk)
                chunk, work = [], 0
        if chunk:
            chunks.append(chunk)
        return chunks

    def _take_early(self) -> dict[Identities, tuple[int, ...]]:
        """Tables prefetched so far: finished or running chunks are waited for, queued ones dropped."""
        found: dict[Identities, tuple[int, ...]] = {}
        early, self._early = self._early, []
        self._named, self._named_work = [], 0
        for chunk, future in early:
            if future.cancel():
                continue
            try:
                tables = future.result()
            except (CancelledError, OSError, RuntimeError):
                continue  # built again below if needed
            for ident, table in zip(chunk, tables, strict=True):
                found[ident] = tuple(table) if isinstance(table, bytes) else table
        return found

    def __call__(self, idents: Sequence[Identities]) -> list[tuple[int, ...]]:
        early = self._take_early() if self._early or self._named else {}
        if early:
            todo = [ident for ident in idents if ident not in early]
            self.prefetched += len(idents) - len(todo)
            built = dict(zip(todo, self._build(todo), strict=True))
            return [early[ident] if ident in early else built[ident] for ident in idents]
        return self._build(idents)

    def _build(self, idents: Sequence[Identities]) -> list[tuple[int, ...]]:
        chunks = self._chunks(idents)
        executor = self._executor
        if executor is None and sum(table_size(len(i)) for i in idents) >= self._min_work:
            executor = self._pool()
        if executor is None or len(chunks) < 2:
            return [build_table(ident) for ident in idents]
        try:
            futures = [executor.submit(_build_chunk, chunk) for chunk in chunks]
        except RuntimeError as exc:  # the pool broke or shut down: build here
            logger.warning(
                "lb: table workers unavailable (%s); building %s tables in-process", exc, len(idents)
            )
            self.close()
            return [build_table(ident) for ident in idents]
        self.parallel_batches += 1
        results: list[list[tuple[int, ...]] | None] = [None] * len(chunks)
        for i in range(len(chunks) - 1, -1, -1):
            if futures[i].cancel():
                results[i] = [build_table(ident) for ident in chunks[i]]
        out: list[tuple[int, ...]] = []
        for i, chunk in enumerate(chunks):
            done = results[i]
            if done is None:
                done = self._collect(futures[i], chunk)
            out.extend(done)
        return out

    def _collect(
        self, future: Future[list[bytes | tuple[int, ...]]], chunk: list[Identities]
    ) -> list[tuple[int, ...]]:
        try:
            return [tuple(t) if isinstance(t, bytes) else t for t in future.result()]
        except (CancelledError, OSError, RuntimeError) as exc:
            # A dead worker (BrokenProcessPool is a RuntimeError) costs time, never a table.
            logger.warning("lb: a table worker failed (%s); building its chunk in-process", exc)
            return [build_table(ident) for ident in chunk]


class ColdGc:
    """Pauses the cyclic GC from :meth:`pause` until :meth:`resume`, then freezes what survived.

    Garbage cycles made meanwhile are kept (frozen objects are never
    collected); they are few next to the cold start's live data.
    """

    def __init__(self) -> None:
        self._paused = False

    def pause(self) -> None:
        if gc.isenabled():
            gc.disable()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            gc.freeze()
            gc.enable()


class ColdStart:
    """The two together, for the lb service: :meth:`begin` at start, :meth:`end` after the first flush.

    ``tables`` is the compiler's table builder (in-process only after
    :meth:`end`).  The GC pause ends after ``max_gc_pause`` seconds at the
    latest (when :meth:`begin` runs in an event loop), so a service that never
    gets in sync, or a process hosting other services too, is not left
    without it.
    """

    def __init__(self, workers: int | None = None, *, max_gc_pause: float = MAX_GC_PAUSE) -> None:
        self.tables = TablePool(default_workers() if workers is None else workers)
        self._gc = ColdGc()
        self._max_gc_pause = max_gc_pause
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    def begin(self) -> None:
        if self._ended:
            return
        self._gc.pause()
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: the caller ends it
                return
            self._timer = loop.call_later(self._max_gc_pause, self._gc.resume)

    def end(self) -> None:
        """Idempotent; later calls of :meth:`begin` do nothing."""
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        self.tables.close()
        self._gc.resume()
