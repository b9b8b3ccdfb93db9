"""What a running service is handed: its settings, the bus, telemetry, and its lifecycle events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from opentelemetry.metrics import Meter
from opentelemetry.trace import Tracer

from xpunet.bus.api import Bus
from xpunet.runtime.settings import Settings

log = logging.getLogger(__name__)

S = TypeVar("S", bound=Settings)


@dataclass(slots=True, eq=False)
class ServiceContext(Generic[S]):
    """Everything a service's ``run`` needs; built by the runner, one per service instance.

    * ``ready``: set it (``mark_ready()``) once the service does its job (e.g. in sync
      with KV); ``/readyz`` and the health record on the bus report it.  Clear it with
      ``mark_not_ready()`` when the service cannot work (e.g. lost its target).
    * ``stopping``: set by the runner on SIGTERM/SIGINT (or ``xpunetctl`` shutdown).
      ``run`` must then stop taking new work, flush what it holds, and return.
    """

    name: str  # the service: "watcher", "policy", "lb", "routing", "datapath"
    instance: str  # unique on the bus: the name, or "datapath.<node>" for per-node services
    settings: S
    bus: Bus
    node: str  # the node this process serves (settings.node.name or the host name)
    tracer: Tracer
    meter: Meter
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Nudges the runner to write a health record now rather than at the next heartbeat.
    health_changed: asyncio.Event = field(default_factory=asyncio.Event)
    not_ready_reason: str = "starting"
    first_ready_at: float | None = None  # time.monotonic() of the first mark_ready (start-up timing)

    def mark_ready(self) -> None:
        if not self.ready.is_set():
            log.info("%s ready", self.instance)
        if self.first_ready_at is None:
            self.first_ready_at = time.monotonic()
        self.ready.set()
        self.not_ready_reason = ""
        self.health_changed.set()

    def mark_not_ready(self, reason: str) -> None:
        if self.ready.is_set():
            log.warning("%s not ready: %s", self.instance, reason)
        self.ready.clear()
        self.not_ready_reason = reason
        self.health_changed.set()


RunFn = Callable[[ServiceContext[S]], Awaitable[None]]


async def idle_run(ctx: ServiceContext[Settings]) -> None:
    """The stand-in ``run`` for a service whose logic does not exist yet.

    It only proves the plumbing: connected to the bus (the runner did that),
    reports ready, waits for the stop signal.
    """
    log.info(
        "%s: no service logic yet (xpunet.%s.service is absent); idling: bus connected, "
        "reporting ready, waiting for stop",
        ctx.instance,
        ctx.name,
    )
    ctx.mark_ready()
    await ctx.stopping.wait()
