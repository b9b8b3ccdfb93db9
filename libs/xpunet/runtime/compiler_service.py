"""The loop every compiler service runs (policy, lb): ``xpunet-k8s`` watches in, changed intent keys out.

A compiler service watches some kinds of ``xpunet-k8s`` plus the watcher's
``sync.<kind>`` markers, feeds each decoded object to its pure compiler, and
writes what the compiler says changed.  Everything around the compiler is the
same for every one of them and lives here:

* **In-sync gating.**  Nothing is flushed until the watch has delivered its
  snapshot (``InSync``) *and* the ``sync.<kind>`` marker of every watched kind
  exists, so a partial view never sweeps a node's intents.  The kinds' prefixes
  and ``sync.`` are one watch (one consumer), so input comes in the bucket's
  revision order: a marker the watcher writes after a kind's objects arrives
  after them.  (With a watch per prefix, a marker could overtake objects still
  on their way in another watch, and a flush would sweep what they produce.)
* **Coalescing and pacing.**  Input only marks the service dirty; flushes run
  in :func:`xpunet.runtime.pacing.pace_flushes` (a change after a quiet spell
  at once, a burst at most once per ``flush_interval``).
* **Writes.**  A flush takes the compiler's encoded changes (only changed keys;
  ``None`` deletes) and writes status reports first, then intents, each in one
  pipelined ``put_many`` stamped with the trace context and ``xpunet-written-at``.
* **Telemetry.**  One ``<name>.compile`` span per flush (child of the first live
  change it compiles, linked to the others); the ``xpunet_<name>_*`` metrics.
* **The heap.**  A compiler holds a big, long-lived heap (50,000 pods: ~665k
  tracked objects, one full collection of the cyclic GC ~0.8 s), and a
  collection landing on a change stalls it.  With a :class:`HeapFreezer`
  (the services' ``run(ctx)`` pass one) the heap is frozen after the in-sync
  flush and after churn, and each flush's survivors go through one small
  young collection, so no collection's cost grows with the cluster.
* **Bad input.**  A value that does not decode, or an object under another
  kind's key, is logged, counted and handed to the compiler (which may report
  it); the service carries on.

A compiler plugs in through :class:`IncrementalCompiler`.  The services keep
their own classes (``PolicyService``, ``LbService``) as thin subclasses that
build their adapter.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import Tracer

from xpunet.bus.api import InSync, KVEntry, StateStore
from xpunet.bus.tracing import WRITTEN_AT_HEADER, CauseTracker, flush_span, source_attributes
from xpunet.model.keys import parse_object_key as parse_k8s_key
from xpunet.model.objects import EndpointSlice, K8sObject, Kind, Namespace, NetworkPolicy, Node, Pod, Service
from xpunet.runtime.pacing import pace_flushes
from xpunet.wire import WireError, decode_k8s

logger = logging.getLogger(__name__)

SYNC_PREFIX = "sync."

# The class each kind's key must hold: anything else under it is bad input.
_KIND_TYPES: dict[Kind, type[K8sObject]] = {
    Kind.POD: Pod,
    Kind.NAMESPACE: Namespace,
    Kind.NODE: Node,
    Kind.SERVICE: Service,
    Kind.ENDPOINT_SLICE: EndpointSlice,
    Kind.NETWORK_POLICY: NetworkPolicy,
}


@dataclass(frozen=True, slots=True)
class FlushResult:
    """One flush's encoded writes (``None``: delete) and how many new rejection reports it holds."""

    intents: dict[str, bytes | None] = field(default_factory=dict)
    status: dict[str, bytes | None] = field(default_factory=dict)
    rejected: int = 0  # counted in xpunet_<name>_rejected_total


# Input changes plus keys written since the last freeze after which the heap is frozen again.
REFREEZE_CHURN = 1_000


def freeze_heap() -> None:
    """Collect young cyclic garbage (cheap: young objects only), then freeze everything left."""
    gc.collect(1)
    gc.freeze()


class HeapFreezer:
    """Keeps the cyclic GC's work per collection independent of the cluster size.

    Two costs grow with the cluster unless handled:

    * A full collection walks every tracked object: ~0.8 s at 50,000 pods.
      The heap is frozen (``gc.freeze()``: never walked again, nor collected;
      reference counting still frees) after the first flush, and again after
      ``refreeze_churn`` input changes and written keys, since objects that
      replace frozen ones are not frozen.
    * A young collection walks every young object, and they pile up: gen0's
      trigger counts allocations *minus deallocations*, and a change that
      replaces frozen objects frees as many as it makes, so collections come
      rarely while the survivors (one new Maglev table of 1,009 entries per lb
      change, each a tuple walked entry by entry) accumulate, up to one set
      per distinct object changed: 8-14 ms per collection at 10,000 services,
      2 ms at 100.  So a flush that does not freeze ends with a gen0 collection
      of just that flush's survivors (tuples of atoms are untracked by it:
      walked once), and every ``GEN1_EVERY``-th with a gen1 collection (manual
      collections never trigger the older generation's, so gen1 would pile up
      in turn until the next freeze).

    Gen0/gen1 thresholds stay at their defaults.
    """

    __slots__ = ("_churn", "_collect", "_first", "_flushes", "_freeze", "_refreeze_churn", "freezes")

    GEN1_EVERY = 10  # as CPython's own gen1 threshold: one gen1 collection per ten of gen0

    def __init__(
        self,
        *,
        refreeze_churn: int = REFREEZE_CHURN,
        freeze: Callable[[], None] | None = None,
        collect: Callable[[int], object] = gc.collect,
    ) -> None:
        self._freeze = freeze or freeze_heap
        self._collect = collect
        self._refreeze_churn = refreeze_churn
        self._churn = 0
        self._flushes = 0
        self._first = True
        self.freezes = 0

    def flushed(self, churn: int) -> None:
        """A flush is written that compiled and wrote ``churn`` input changes and keys."""
        self._churn += churn
        if self._first or self._churn >= self._refreeze_churn:
            self._first = False
            self._churn = 0
            self._freeze()
            self.freezes += 1
            return
        self._flushes += 1
        self._collect(1 if self._flushes % self.GEN1_EVERY == 0 else 0)


@dataclass(frozen=True, slots=True)
class FlushTiming:
    """Where one flush's time went, in ``time.perf_counter()`` seconds (benchmarks read these)."""

    first_change: float | None  # the first input since the previous flush arrived (None: none did)
    started: float  # the flush began (the pacing and the event loop decide the gap before)
    compiled: float  # the compiler returned its encoded changes
    written: float  # every put_many was acknowledged
    keys: int = 0  # intent keys written (deletes included)
    bytes: int = 0  # their encoded values' size


class IncrementalCompiler(Protocol):
    """What a compiler service plugs into :class:`CompilerService` (an adapter over its pure compiler)."""

    def upsert(self, kind: Kind, obj: K8sObject) -> None:
        """A watched object was created or changed (``obj`` is of ``kind``'s class)."""

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        """A watched object was deleted."""

    def undecodable(self, kind: Kind, namespace: str | None, name: str, error: WireError) -> None:
        """A watched key holds a value that does not decode (already logged and counted)."""

    def flush(self) -> FlushResult:
        """Compile what changed since the last flush; encoded changed keys only."""

    def flushed(self) -> None:
        """The flush's writes are done (e.g. end cold-start measures)."""


class CompilerMetrics:
    """The ``xpunet_<service>_*`` instruments every compiler service exports."""

    def __init__(self, meter: Meter, service: str, *, rejected: str) -> None:
        self.rejected = meter.create_counter(f"xpunet_{service}_rejected_total", description=rejected)
        self.bad_messages = meter.create_counter(
            f"xpunet_{service}_bad_messages_total", description="xpunet-k8s values that could not be decoded"
        )
        self.writes = meter.create_counter(
            f"xpunet_{service}_intent_writes_total", description="Intent keys written"
        )
        self.deletes = meter.create_counter(
            f"xpunet_{service}_intent_deletes_total", description="Intent keys deleted"
        )
        self.flush_seconds = meter.create_histogram(
            f"xpunet_{service}_flush_seconds", unit="s", description="Compile, encode and write of one flush"
        )
        self.change_to_intent = meter.create_histogram(
            f"xpunet_{service}_change_to_intent_seconds",
            unit="s",
            description="Earliest change of a flush (its written-at, else arrival) to its intents written",
        )


class CompilerService:
    """Feeds an :class:`IncrementalCompiler` from KV watches and writes its output."""

    def __init__(
        self,
        compiler: IncrementalCompiler,
        *,
        name: str,
        watched: Sequence[Kind],
        k8s: StateStore,
        intents: StateStore,
        status: StateStore,
        flush_interval: float,
        metrics: CompilerMetrics | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
        heap: HeapFreezer | None = None,
    ) -> None:
        self._target = compiler
        self._heap = heap
        self.name = name
        self.watched = tuple(watched)
        self._k8s = k8s
        self._intents = intents
        self._status = status
        self._flush_interval = flush_interval
        self.metrics = metrics
        self._tracer = tracer or trace.get_tracer(__name__)
        self._clock = clock  # wall clock: written-at headers are compared across processes
        self._causes = CauseTracker(clock=clock)
        self._dirty = asyncio.Event()
        self._dirty_flag = False  # something arrived since the last flush (for the final flush)
        self._in_sync = False  # the watch delivered its snapshot
        self._sync_markers: set[str] = set()
        self.synced = asyncio.Event()  # set after the first full flush
        self.flushes = 0
        self._first_change: float | None = None
        self._inputs = 0  # object changes applied since the last flush (heap churn)
        # Called with each flush's timing (a benchmark's probe; None in the services).
        self.flush_observer: Callable[[FlushTiming], None] | None = None

    @property
    def ready_to_flush(self) -> bool:
        """The watch delivered its snapshot and every watched kind's sync marker exists."""
        return self._in_sync and self._sync_markers >= {k.value for k in self.watched}

    def parse_object_key(self, key: str) -> tuple[Kind, str | None, str] | None:
        """(kind, namespace, name) of a watched object's key; None for other keys."""
        parsed = parse_k8s_key(key)
        return parsed if parsed is not None and parsed[0] in self.watched else None

    def prefixes(self) -> tuple[str, ...]:
        return (*(f"{k.value}." for k in self.watched), SYNC_PREFIX)

    async def consume(self) -> None:
        """One watch over every watched kind and the sync markers: input in revision order."""
        async for item in self._k8s.watch(self.prefixes()):
            if isinstance(item, InSync):
                self._in_sync = True
                self._mark_dirty()
                continue
            if self._in_sync:
                # A live change (snapshot values describe state, not a change to trace or time).
                self._causes.note(item.key, item.headers)
            self.apply(item)

    def _mark_dirty(self) -> None:
        if not self._dirty_flag:
            self._first_change = time.perf_counter()
        self._dirty_flag = True
        self._dirty.set()

    def apply(self, entry: KVEntry) -> None:
        """One ``xpunet-k8s`` change into the compiler (bad values are reported, never raised)."""
        if entry.key.startswith(SYNC_PREFIX):
            kind = entry.key[len(SYNC_PREFIX) :]
            if entry.value is None:
                self._sync_markers.discard(kind)
            else:
                self._sync_markers.add(kind)
            self._mark_dirty()
            return
        parsed = self.parse_object_key(entry.key)
        if parsed is None:
            return
        kind, ns, name = parsed
        self._inputs += 1
        self._mark_dirty()
        if entry.value is None:
            self._target.delete(kind, ns, name)
            return
        try:
            obj = decode_k8s(entry.value)
        except WireError as exc:
            logger.warning("%s: skipping undecodable %s: %s", self.name, entry.key, exc)
            if self.metrics:
                self.metrics.bad_messages.add(1)
            self._target.undecodable(kind, ns, name, exc)
            return
        if not isinstance(obj, _KIND_TYPES[kind]):
            logger.warning(
                "%s: skipping %s: a %s under a %s key", self.name, entry.key, type(obj).__name__, kind.value
            )
            return
        self._target.upsert(kind, obj)

    async def flush_loop(self, stopping: asyncio.Event) -> None:
        """Flush at once after a quiet spell, at most once per flush interval in a burst."""
        await pace_flushes(
            self._dirty, self._flush_when_ready, interval=self._flush_interval, stopping=stopping
        )

    async def _flush_when_ready(self) -> None:
        if self.ready_to_flush:
            await self.flush()

    async def flush(self) -> FlushResult:
        """Compile what changed and write it (status reports first); returns what was written."""
        causes = self._causes.take()
        attributes = source_attributes(causes, self.parse_object_key)
        with flush_span(self._tracer, f"{self.name}.compile", causes, attributes) as span:
            # Only the written-at: put_many adds the trace context (this span is current), and
            # injecting it here too would do that work twice per flush.
            headers = {WRITTEN_AT_HEADER: f"{causes.written_at(self._clock()):.6f}"}
            result, deletes = await self._write(headers)
            span.set_attribute("xpunet.intent.keys", len(result.intents))
            span.set_attribute("xpunet.intent.deletes", deletes)
            span.set_attribute("xpunet.status.keys", len(result.status))
        if self.metrics and result.intents and causes.count:
            now = self._clock()
            self.metrics.change_to_intent.record(max(0.0, now - causes.written_at(now)))
        return result

    async def _write(self, headers: Mapping[str, str]) -> tuple[FlushResult, int]:
        """Compile and write; returns what was written and how many intent keys it deletes."""
        started = time.perf_counter()
        first_change, self._first_change = self._first_change, None
        inputs, self._inputs = self._inputs, 0
        self._dirty_flag = False
        result = self._target.flush()
        compiled = time.perf_counter()
        # Reports first: whoever sees the new intents can already read why input was skipped.
        if result.status:
            await self._status.put_many(result.status, headers=headers)
        if result.intents:
            await self._intents.put_many(result.intents, headers=headers)
        written = time.perf_counter()
        self.flushes += 1
        if self.flush_observer is not None:
            size = sum(len(v) for v in result.intents.values() if v is not None)
            self.flush_observer(
                FlushTiming(first_change, started, compiled, written, len(result.intents), size)
            )
        deletes = sum(1 for v in result.intents.values() if v is None)
        if self.metrics:
            self.metrics.writes.add(len(result.intents) - deletes)
            self.metrics.deletes.add(deletes)
            if result.rejected:
                self.metrics.rejected.add(result.rejected)
            self.metrics.flush_seconds.record(written - started)
        if result.intents:
            logger.info(
                "%s: wrote %s intent keys (%s deletes) in %.1f ms",
                self.name,
                len(result.intents),
                deletes,
                (written - started) * 1000,
            )
        self.synced.set()
        self._target.flushed()
        if self._heap is not None:
            self._heap.flushed(inputs + len(result.intents) + len(result.status))
        return result, deletes

    async def run(self, stopping: asyncio.Event, *, on_synced: Callable[[], None] | None = None) -> None:
        """Watch, compile and write until ``stopping``; then a last flush of what already arrived."""
        async with asyncio.TaskGroup() as tg:
            watch = tg.create_task(self.consume(), name="watch")
            flusher = tg.create_task(self.flush_loop(stopping), name="flush")
            if on_synced is not None:
                tg.create_task(_call_when(self.synced, on_synced), name="ready")
            await stopping.wait()
            watch.cancel()
            flusher.cancel()
        # Only once in sync: never sweep a partial view.
        if self.ready_to_flush and self._dirty_flag:
            await self.flush()


async def _call_when(event: asyncio.Event, callback: Callable[[], None]) -> None:
    await event.wait()
    callback()
