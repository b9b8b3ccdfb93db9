"""The lb service: watches ``xpunet-k8s``, runs the pure compiler, writes changed intents.

Flow: read the lb intents already in ``xpunet-intent`` (their service-port ids
are kept, and what nothing produces any more is swept), watch Services,
EndpointSlices and Nodes plus the watcher's ``sync.<kind>`` markers, and once
every watch has delivered its snapshot *and* the three markers exist, flush:
the compiler returns only changed keys, which go out in one pipelined
``put_many`` (deletes explicit).  After that, a change after a quiet spell is
flushed at once, and a burst is coalesced into at most one flush per
``lb.flush_interval`` seconds (``xpunet.runtime.pacing``).  Rejected input goes to
``xpunet-status`` as ``lb.rejected.<ns>.<svc>``, is logged and counted.

Tracing (docs/observability.md): each flush is one ``lb.compile`` span, a
child of the trace context of the first live ``xpunet-k8s`` change it
compiles and linked to the others', and its writes carry that span's context
plus ``xpunet-written-at`` (the earliest change's time) in their headers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S, BUCKET_STATUS, InSync, KVEntry, StateStore, snapshot
from xpunet.bus.tracing import CauseTracker, flush_span, source_attributes, written_at_headers
from xpunet.ir.lb import (
    GLOBAL_SERVICE_PREFIX,
    ConntrackTimeouts,
    LbIntent,
    LbNodeAddresses,
    LbNodeOverride,
    LbRejection,
    LbServicePort,
)
from xpunet.lb.coldstart import ColdStart
from xpunet.lb.state import Changes, LbCompiler
from xpunet.model.keys import parse_object_key as parse_k8s_key
from xpunet.model.objects import EndpointSlice, Kind, Node, Service
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.pacing import pace_flushes
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.wire import WireError, decode_k8s, decode_object, encode_object

logger = logging.getLogger(__name__)

WATCHED = (Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NODE)
SYNC_PREFIX = "sync."
REJECTED_PREFIX = "lb.rejected."
_LB_TYPES = (LbServicePort, LbNodeOverride, LbNodeAddresses, ConntrackTimeouts)


@dataclass(frozen=True, slots=True)
class LbOptions:
    flush_interval: float = 0.02  # in a burst, at most one flush per this many seconds
    conntrack_tcp_established: int = 86400
    conntrack_tcp_close_wait: int = 3600
    conntrack_udp: int = 30
    conntrack_udp_stream: int = 120
    # Worker processes building the cold start's Maglev tables; None: one per spare CPU (at most 3).
    table_workers: int | None = None

    def __post_init__(self) -> None:
        if self.flush_interval < 0:
            raise ValueError("lb.flush_interval must be >= 0")
        if self.table_workers is not None and self.table_workers < 0:
            raise ValueError("lb.table_workers must be >= 0")
        for name in ("tcp_established", "tcp_close_wait", "udp", "udp_stream"):
            if getattr(self, f"conntrack_{name}") <= 0:
                raise ValueError(f"lb.conntrack_{name} must be > 0")

    def conntrack(self) -> ConntrackTimeouts:
        return ConntrackTimeouts(
            tcp_established=self.conntrack_tcp_established,
            tcp_close_wait=self.conntrack_tcp_close_wait,
            udp=self.conntrack_udp,
            udp_stream=self.conntrack_udp_stream,
        )


@dataclass(frozen=True, slots=True)
class Settings(BaseSettings):
    lb: LbOptions = field(default_factory=LbOptions)


def is_lb_intent_key(key: str) -> bool:
    """Keys this service owns in ``xpunet-intent`` (node names may contain dots)."""
    if key.startswith("global.lb."):
        return True
    return key.startswith("node.") and (".lb.svc." in key or key.endswith(".lb.addresses"))


def parse_object_key(key: str) -> tuple[Kind, str | None, str] | None:
    """(kind, namespace, name) of a watched object's key; None for other keys."""
    parsed = parse_k8s_key(key)
    return parsed if parsed is not None and parsed[0] in WATCHED else None


class _Metrics:
    def __init__(self, ctx: ServiceContext[Any]) -> None:
        meter = ctx.meter
        self.rejected = meter.create_counter(
            "xpunet_lb_rejected_total", description="Services with input the lb compiler skipped"
        )
        self.bad_messages = meter.create_counter(
            "xpunet_lb_bad_messages_total", description="xpunet-k8s values that could not be decoded"
        )
        self.writes = meter.create_counter("xpunet_lb_intent_writes_total", description="Intent keys written")
        self.deletes = meter.create_counter(
            "xpunet_lb_intent_deletes_total", description="Intent keys deleted"
        )
        self.flush_seconds = meter.create_histogram(
            "xpunet_lb_flush_seconds", unit="s", description="Compile, encode and write of one flush"
        )
        self.change_to_intent = meter.create_histogram(
            "xpunet_lb_change_to_intent_seconds",
            unit="s",
            description="Earliest change of a flush (its written-at, else arrival) to its intents written",
        )


async def load_existing(
    intents: StateStore, status: StateStore
) -> tuple[dict[str, LbIntent], dict[str, LbRejection]]:
    """What a previous run left in KV (undecodable values are swept like stale ones)."""
    found: dict[str, LbIntent] = {}
    undecodable: list[str] = []
    for prefix in ("global.lb.", "node."):
        async for entry in snapshot(intents, prefix):
            if entry.value is None or not is_lb_intent_key(entry.key):
                continue
            try:
                value = decode_object(entry.value)
            except WireError as exc:
                logger.warning(
                    "lb: undecodable intent %s (%s); it will be rewritten or removed", entry.key, exc
                )
                undecodable.append(entry.key)
                continue
            if isinstance(value, _LB_TYPES):
                found[entry.key] = value
    for key in undecodable:
        # A placeholder the first flush overwrites or deletes.
        found[key] = LbNodeAddresses(node="")
    rejections: dict[str, LbRejection] = {}
    async for entry in snapshot(status, REJECTED_PREFIX):
        if entry.value is None:
            continue
        try:
            value = decode_object(entry.value)
        except WireError:
            value = LbRejection("", "")
        if isinstance(value, LbRejection):
            rejections[entry.key] = value
    return found, rejections


def encode_changes(changes: Mapping[str, Any]) -> dict[str, bytes | None]:
    return {key: None if value is None else encode_object(value) for key, value in changes.items()}


class LbService:
    """Feeds the compiler from KV watches and writes its output; one per process."""

    def __init__(
        self,
        compiler: LbCompiler,
        *,
        k8s: StateStore,
        intents: StateStore,
        status: StateStore,
        flush_interval: float,
        metrics: _Metrics | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
        cold: ColdStart | None = None,
    ) -> None:
        self.compiler = compiler
        self._cold = cold  # GC pause and table workers until the first flush (xpunet.lb.coldstart)
        self._k8s = k8s
        self._intents = intents
        self._status = status
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._tracer = tracer or trace.get_tracer(__name__)
        self._clock = clock  # wall clock: written-at headers are compared across processes
        self._causes = CauseTracker(clock=clock)
        self._dirty = asyncio.Event()
        self._in_sync_watches: set[str] = set()
        self._sync_markers: set[str] = set()
        self.synced = asyncio.Event()  # set after the first full flush
        self.flushes = 0

    @property
    def _ready_to_flush(self) -> bool:
        return len(self._in_sync_watches) == len(WATCHED) + 1 and self._sync_markers >= {
            k.value for k in WATCHED
        }

    async def consume(self, prefix: str) -> None:
        async for item in self._k8s.watch(prefix):
            if isinstance(item, InSync):
                self._in_sync_watches.add(prefix)
                self._dirty.set()
                continue
            if prefix in self._in_sync_watches:
                # A live change (snapshot values describe state, not a change to trace or time).
                self._causes.note(item.key, item.headers)
            self.apply(item)

    def apply(self, entry: KVEntry) -> None:
        if entry.key.startswith(SYNC_PREFIX):
            kind = entry.key[len(SYNC_PREFIX) :]
            if entry.value is None:
                self._sync_markers.discard(kind)
            else:
                self._sync_markers.add(kind)
            self._dirty.set()
            return
        parsed = parse_object_key(entry.key)
        if parsed is None:
            return
        kind, ns, name = parsed
        if entry.value is None:
            self.compiler.delete(kind, ns, name)
            self._dirty.set()
            return
        try:
            obj = decode_k8s(entry.value)
        except WireError as exc:
            logger.warning("lb: skipping undecodable %s: %s", entry.key, exc)
            if self._metrics:
                self._metrics.bad_messages.add(1)
            return
        if not isinstance(obj, Service | EndpointSlice | Node):
            logger.warning("lb: skipping %s: a %s under a %s key", entry.key, type(obj).__name__, kind.value)
            return
        self.compiler.update(obj)
        self._dirty.set()

    async def flush_loop(self, stopping: asyncio.Event) -> None:
        """Flush at once after a quiet spell, at most once per flush interval in a burst."""
        await pace_flushes(
            self._dirty, self._flush_when_ready, interval=self._flush_interval, stopping=stopping
        )

    async def _flush_when_ready(self) -> None:
        if self._ready_to_flush:
            await self.flush()

    async def flush(self) -> Changes:
        causes = self._causes.take()
        attributes = source_attributes(causes, parse_object_key)
        with flush_span(self._tracer, "lb.compile", causes, attributes) as span:
            changes = await self._flush(written_at_headers(causes, self._clock()))
            span.set_attribute("xpunet.intent.keys", len(changes.intents))
            span.set_attribute("xpunet.intent.deletes", sum(1 for v in changes.intents.values() if v is None))
            span.set_attribute("xpunet.status.keys", len(changes.status))
        if self._metrics and changes.intents and causes.count:
            now = self._clock()
            self._metrics.change_to_intent.record(max(0.0, now - causes.written_at(now)))
        return changes

    async def _flush(self, headers: Mapping[str, str]) -> Changes:
        """Compile, write status reports then intents with ``headers``."""
        started = time.perf_counter()
        changes = self.compiler.flush()
        # Reports first: whoever sees the new intents can already read why input was skipped.
        if changes.status:
            await self._status.put_many(encode_changes(changes.status), headers=headers)
        if changes.intents:
            await self._intents.put_many(encode_changes(changes.intents), headers=headers)
        self.flushes += 1
        if self._metrics:
            writes = sum(1 for v in changes.intents.values() if v is not None)
            self._metrics.writes.add(writes)
            self._metrics.deletes.add(len(changes.intents) - writes)
            self._metrics.rejected.add(sum(1 for v in changes.status.values() if v is not None))
            self._metrics.flush_seconds.record(time.perf_counter() - started)
        if changes.intents:
            logger.info(
                "lb: wrote %s intent keys (%s deletes) in %.1f ms",
                len(changes.intents),
                sum(1 for v in changes.intents.values() if v is None),
                (time.perf_counter() - started) * 1000,
            )
        self.synced.set()
        if self._cold is not None:
            self._cold.end()
        return changes

    async def run(self, stopping: asyncio.Event, *, on_synced: Callable[[], None] | None = None) -> None:
        if self._cold is not None:
            self._cold.begin()
        try:
            await self._run(stopping, on_synced)
        finally:
            if self._cold is not None:
                self._cold.end()

    async def _run(self, stopping: asyncio.Event, on_synced: Callable[[], None] | None) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self.consume(prefix), name=f"watch {prefix}") for prefix in self._prefixes()
            ]
            flusher = tg.create_task(self.flush_loop(stopping), name="flush")
            if on_synced is not None:
                tg.create_task(_call_when(self.synced, on_synced), name="ready")
            await stopping.wait()
            for task in tasks:
                task.cancel()
            flusher.cancel()
        # Final flush of what arrived before the stop (only once in sync: never sweep a partial view).
        if self._ready_to_flush and self.compiler.dirty:
            await self.flush()

    @staticmethod
    def _prefixes() -> list[str]:
        return [f"{k.value}." for k in WATCHED] + [SYNC_PREFIX]


async def _call_when(event: asyncio.Event, callback: Callable[[], None]) -> None:
    await event.wait()
    callback()


async def run(ctx: ServiceContext[Settings]) -> None:
    """The lb service's entry point (docs/runtime.md)."""
    opts = ctx.settings.lb
    k8s = await ctx.bus.kv(BUCKET_K8S)
    intents = await ctx.bus.kv(BUCKET_INTENT)
    status = await ctx.bus.kv(BUCKET_STATUS)
    cold = ColdStart(opts.table_workers)
    cold.begin()
    try:
        compiler = LbCompiler(
            conntrack=opts.conntrack(), table_builder=cold.tables, prefetch=cold.tables.prefetch
        )
        existing, rejections = await load_existing(intents, status)
        compiler.seed(existing, rejections)
        logger.info(
            "lb: starting with %s existing intents (%s service ports)",
            len(existing),
            sum(1 for k in existing if k.startswith(GLOBAL_SERVICE_PREFIX)),
        )
        service = LbService(
            compiler,
            k8s=k8s,
            intents=intents,
            status=status,
            flush_interval=opts.flush_interval,
            metrics=_Metrics(ctx),
            tracer=ctx.tracer,
            cold=cold,
        )
        await service.run(ctx.stopping, on_synced=ctx.mark_ready)
    finally:
        cold.end()
