"""Runs one service instance inside an event loop: health endpoint, bus, run(), heartbeat, stop.

Used by the process runner (``run_service``) and by ``xpunetctl up``, which
hosts every service in one process.  The stop is staged: ``stop`` is set →
``ctx.stopping`` is set and readiness drops → ``run`` gets
``runtime.shutdown_timeout`` seconds to flush and return → the health record is
removed → the NATS connection is drained → the health endpoint closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Generic, TypeVar

from xpunet.bus.api import BUCKET_STATUS
from xpunet.bus.backoff import Backoff
from xpunet.bus.nats import NatsBus
from xpunet.bus.nats import connect as bus_connect
from xpunet.runtime.context import RunFn, ServiceContext
from xpunet.runtime.health import HealthServer, Probes
from xpunet.runtime.logs import current_service
from xpunet.runtime.metrics_text import render_prometheus
from xpunet.runtime.records import HealthRecord, encode_health, health_key
from xpunet.runtime.settings import Settings
from xpunet.runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)

# Services that run once per node; their bus identity carries the node name.
PER_NODE_SERVICES = frozenset({"datapath"})
_DRAIN_TIMEOUT = 5.0
# How often a connect attempt that outlived its cancel is cancelled again (see ``_connect``).
_RECANCEL_INTERVAL = 0.5


async def _abandon_connect(connecting: asyncio.Task[NatsBus]) -> None:
    """Cancel a connect attempt and wait until it has ended; close the bus if it got through anyway."""
    # The cancelled connect closes its half-open connection itself
    # (``xpunet.bus.nats.connect``).  Python 3.11's ``wait_for`` (inside
    # nats-py) drops a cancel that arrives just as its inner step completes,
    # and the attempt then goes on: cancel again until it has ended.  Waited
    # for, not awaited, so that a cancellation of our own still reaches us.
    while not connecting.done():
        connecting.cancel()
        await asyncio.wait({connecting}, timeout=_RECANCEL_INTERVAL)
    if connecting.cancelled():
        return
    if (error := connecting.exception()) is not None:
        log.info("abandoned connect attempt ended: %s", error)
        return
    # It completed despite the cancel: the bus is up and only we hold it, so
    # close it rather than leave its socket to the garbage collector.
    await connecting.result().close()


class ServiceFailedError(Exception):
    """The service's ``run`` raised, returned before a stop, or had to be cancelled."""


class ServiceHost(Generic[S]):
    def __init__(
        self,
        name: str,
        run_fn: RunFn[S],
        settings: S,
        telemetry: Telemetry,
        *,
        instance: str | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.node = settings.node.name or socket.gethostname()
        self.instance = instance or (f"{name}.{self.node}" if name in PER_NODE_SERVICES else name)
        self._run_fn = run_fn
        self._telemetry = telemetry
        self._bus: NatsBus | None = None
        self._health: HealthServer | None = None
        self.ctx: ServiceContext[S] | None = None
        self.started_at = time.monotonic()
        self.health_bound = asyncio.Event()  # set once ``health_url`` is known (or health is off)
        self.context_built = asyncio.Event()  # set once ``ctx`` exists (bus connected), or the host ended

    @property
    def ready_at(self) -> float | None:
        """``time.monotonic()`` when the service first reported ready."""
        return self.ctx.first_ready_at if self.ctx is not None else None

    @property
    def health_url(self) -> str | None:
        return self._health.url if self._health is not None else None

    def readiness(self) -> tuple[bool, str]:
        if self._bus is None or not self._bus.connected:
            return False, "bus not connected"
        if self.ctx is None:
            return False, "starting"
        if self.ctx.stopping.is_set():
            return False, "stopping"
        if not self.ctx.ready.is_set():
            return False, self.ctx.not_ready_reason or "service not ready"
        return True, ""

    def _metrics(self) -> str:
        return render_prometheus(self._telemetry.metric_reader.get_metrics_data())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set and the service returned; else raise ``ServiceFailedError``."""
        current_service.set(self.instance)
        hs = self.settings.health
        try:
            if hs.enabled:
                self._health = HealthServer(hs.host, hs.port, Probes(self.readiness, self._metrics))
                await self._health.start()
                log.info("health endpoint at %s (/healthz /readyz /metrics)", self._health.url)
            self.health_bound.set()
            self._bus = await self._connect(stop)
            if self._bus is None:
                return  # stopped before the bus was reachable
            self.ctx = ServiceContext(
                name=self.name,
                instance=self.instance,
                settings=self.settings,
                bus=self._bus,
                node=self.node,
                tracer=self._telemetry.tracer(f"xpunet.{self.name}"),
                meter=self._telemetry.meter(f"xpunet.{self.name}"),
            )
            self.context_built.set()
            self._register_metrics(self.ctx)
            await self._supervise(self.ctx, stop)
        finally:
            self.health_bound.set()
            self.context_built.set()
            await self._close()

    async def _connect(self, stop: asyncio.Event) -> NatsBus | None:
        bs = self.settings.bus
        name = bs.name or f"xpunet-{self.instance}"
        log.info("connecting to NATS %s as %s", ",".join(bs.urls), name)
        connecting = asyncio.create_task(
            bus_connect(
                bs.urls,
                name=name,
                connect_timeout=bs.connect_timeout,
                backoff=Backoff(initial=min(0.05, bs.reconnect_max), maximum=bs.reconnect_max),
            )
        )
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if connecting.done():
                return connecting.result()
            log.info("stop requested before NATS was reachable")
            return None
        finally:
            stopped.cancel()
            if not connecting.done():  # stopped, or we were cancelled ourselves
                await _abandon_connect(connecting)

    def _register_metrics(self, ctx: ServiceContext[S]) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        def observe_ready(_options: CallbackOptions) -> list[Observation]:
            ready, _reason = self.readiness()
            return [Observation(1 if ready else 0, {"instance": self.instance})]

        ctx.meter.create_observable_gauge(
            "xpunet.service.ready", callbacks=[observe_ready], description="1 when the service is ready"
        )

    async def _supervise(self, ctx: ServiceContext[S], stop: asyncio.Event) -> None:
        failure: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                service = tg.create_task(self._run_service(ctx), name=f"{self.instance}.run")
                tg.create_task(self._heartbeat(ctx), name=f"{self.instance}.heartbeat")
                tg.create_task(self._stop_when(stop, ctx, service), name=f"{self.instance}.stop")
        except* Exception as group:
            failure = group.exceptions[0]
        if failure is not None:
            raise ServiceFailedError(f"{self.instance}: {failure}") from failure

    async def _run_service(self, ctx: ServiceContext[S]) -> None:
        try:
            await self._run_fn(ctx)
        except asyncio.CancelledError:
            if ctx.stopping.is_set():
                raise ServiceFailedError(
                    f"did not stop within {self.settings.runtime.shutdown_timeout}s"
                ) from None
            raise
        except Exception:
            log.exception("%s: service failed", self.instance)
            raise
        if not ctx.stopping.is_set():
            log.error("%s: run() returned before a stop was requested", self.instance)
            raise ServiceFailedError("run() returned before a stop was requested")
        # Readiness is over: a stopped service no longer serves.
        ctx.ready.clear()

    async def _stop_when(
        self, stop: asyncio.Event, ctx: ServiceContext[S], service: asyncio.Task[None]
    ) -> None:
        await stop.wait()
        log.info("%s: stopping (intake stops, flushing)", self.instance)
        ctx.stopping.set()
        ctx.health_changed.set()
        done, _ = await asyncio.wait({service}, timeout=self.settings.runtime.shutdown_timeout)
        if not done:
            log.error(
                "%s: run() did not return within %ss of the stop; cancelling it",
                self.instance,
                self.settings.runtime.shutdown_timeout,
            )
            service.cancel()

    def _health_record(self) -> bytes:
        ready, reason = self.readiness()
        return encode_health(
            HealthRecord(
                service=self.name,
                instance=self.instance,
                node=self.node,
                ready=ready,
                reason=reason,
                pid=os.getpid(),
                health=self.health_url or "",
                at=time.time(),
                interval=self.settings.runtime.heartbeat_interval,
            )
        )

    async def _heartbeat(self, ctx: ServiceContext[S]) -> None:
        """Keep ``health.<instance>`` in ``xpunet-status`` current; a failed write is logged, never fatal."""
        store = None
        key = health_key(self.instance)
        interval = self.settings.runtime.heartbeat_interval
        while not ctx.stopping.is_set():
            ctx.health_changed.clear()
            try:
                if store is None:
                    store = await ctx.bus.kv(BUCKET_STATUS)
                await store.put(key, self._health_record())
            except Exception as exc:
                log.warning("%s: cannot write health record: %s", self.instance, exc)
            # Wake on a readiness change or stop, or at the next heartbeat.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await ctx.health_changed.wait()
        if store is not None:
            try:
                await store.delete(key)
            except Exception as exc:
                log.warning("%s: cannot remove health record: %s", self.instance, exc)

    async def _close(self) -> None:
        if self._bus is not None:
            try:
                async with asyncio.timeout(_DRAIN_TIMEOUT):
                    await self._bus.drain()
            except TimeoutError:
                log.warning("%s: NATS drain took over %ss; closing", self.instance, _DRAIN_TIMEOUT)
                with contextlib.suppress(Exception):
                    await self._bus.close()
        if self._health is not None:
            await self._health.close()
        log.info("%s: stopped", self.instance)
