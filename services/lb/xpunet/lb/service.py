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

The watch / gate / pace / write loop, spans (docs/observability.md) and metrics are the shared
:mod:`xpunet.runtime.compiler_service`; this module is the lb compiler's
adapter to it (:class:`LbFeed`), the cold start around it and the entry point.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Tracer

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S, BUCKET_STATUS, StateStore, snapshot
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
from xpunet.lb.state import LbCompiler
from xpunet.model.objects import EndpointSlice, K8sObject, Kind, Node, Service
from xpunet.runtime.compiler_service import CompilerMetrics, CompilerService, FlushResult, HeapFreezer
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.wire import WireError, decode_object, encode_object

logger = logging.getLogger(__name__)

WATCHED = (Kind.SERVICE, Kind.ENDPOINT_SLICE, Kind.NODE)
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


def lb_metrics(ctx: ServiceContext[Settings]) -> CompilerMetrics:
    return CompilerMetrics(ctx.meter, "lb", rejected="Services with input the lb compiler skipped")


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


class LbFeed:
    """The lb compiler as an :class:`~xpunet.runtime.compiler_service.IncrementalCompiler`."""

    def __init__(self, compiler: LbCompiler, *, cold: ColdStart | None = None) -> None:
        self.compiler = compiler
        self._cold = cold  # GC pause and table workers until the first flush (xpunet.lb.coldstart)

    def upsert(self, kind: Kind, obj: K8sObject) -> None:
        if isinstance(obj, Service | EndpointSlice | Node):
            self.compiler.update(obj)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        self.compiler.delete(kind, namespace, name)

    def undecodable(self, kind: Kind, namespace: str | None, name: str, error: WireError) -> None:
        pass  # logged and counted by the loop; the last good version stays compiled

    def flush(self) -> FlushResult:
        changes = self.compiler.flush()
        return FlushResult(
            intents=encode_changes(changes.intents),
            status=encode_changes(changes.status),
            rejected=sum(1 for v in changes.status.values() if v is not None),
        )

    def flushed(self) -> None:
        if self._cold is not None:
            self._cold.end()


class LbService(CompilerService):
    """The shared compiler-service loop over an :class:`LbFeed`; one per process (cold-start GC)."""

    def __init__(
        self,
        compiler: LbCompiler,
        *,
        k8s: StateStore,
        intents: StateStore,
        status: StateStore,
        flush_interval: float,
        metrics: CompilerMetrics | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
        heap: HeapFreezer | None = None,
        cold: ColdStart | None = None,
    ) -> None:
        self.compiler = compiler
        self._cold = cold
        super().__init__(
            LbFeed(compiler, cold=cold),
            name="lb",
            watched=WATCHED,
            k8s=k8s,
            intents=intents,
            status=status,
            flush_interval=flush_interval,
            metrics=metrics,
            tracer=tracer,
            clock=clock,
            heap=heap,
        )

    async def run(self, stopping: asyncio.Event, *, on_synced: Callable[[], None] | None = None) -> None:
        if self._cold is not None:
            self._cold.begin()
        try:
            await super().run(stopping, on_synced=on_synced)
        finally:
            if self._cold is not None:
                self._cold.end()


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
            metrics=lb_metrics(ctx),
            tracer=ctx.tracer,
            cold=cold,
            heap=HeapFreezer(),
        )
        await service.run(ctx.stopping, on_synced=ctx.mark_ready)
    finally:
        cold.end()
