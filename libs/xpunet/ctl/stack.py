"""Every xpunet service in one process, optionally on an embedded nats-server.

The shape ``xpunetctl up``, ``xpunetctl demo`` and end-to-end tests share: one
``ServiceHost`` per service instance (``--nodes N`` datapaths named
node-1..node-N), each with its own settings, telemetry and health endpoint, all
tasks of one event loop.  A service that fails stops the whole stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from xpunet.embedded.nats import NatsServer
from xpunet.runtime.host import ServiceFailedError, ServiceHost
from xpunet.runtime.loader import read_config_file
from xpunet.runtime.plug import SERVICES, ServiceEntry, load_service
from xpunet.runtime.settings import Layer, Settings, build_settings, cli_layer, env_layer
from xpunet.runtime.telemetry import Telemetry, setup_telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StackOptions:
    nodes: int = 1  # datapath instances, named node-1..node-N
    nats_urls: tuple[str, ...] = ()  # empty: start an embedded nats-server
    configs: tuple[Path, ...] = ()  # shared settings files (each service reads its sections)
    assignments: tuple[str, ...] = ()  # --set section.key=value for every service
    services: tuple[str, ...] = SERVICES
    # The watcher's embedded source: a directory of manifests instead of an API server.
    # None: a fresh empty temporary directory (an empty cluster), removed on stop.
    manifests: Path | None = None
    environ: Mapping[str, str] | None = None  # None: os.environ
    # Per-datapath --set values (node name → assignments), after the shared ones: each node's
    # target, namespace and attach socket in the local cluster (xpunet.cluster).
    node_assignments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # The embedded nats-server's working directory (ports, log, store); None: a temporary one.
    # The local cluster puts it in its run directory, where `xpunetctl down` looks after a crash.
    nats_workdir: Path | None = None


@dataclass(slots=True)
class Member:
    """One running service instance of the stack."""

    entry: ServiceEntry
    host: ServiceHost[Any]
    telemetry: Telemetry
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class Stack:
    options: StackOptions
    nats: NatsServer | None = None
    nats_urls: tuple[str, ...] = ()
    members: list[Member] = field(default_factory=list)
    started_at: float = 0.0
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    failed: asyncio.Event = field(default_factory=asyncio.Event)  # a member failed
    manifests: Path | None = None  # the watcher's manifest directory, once started
    _own_manifests: tempfile.TemporaryDirectory[str] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.started_at = time.monotonic()
        if self.options.manifests is not None:
            self.manifests = self.options.manifests
        else:
            self._own_manifests = tempfile.TemporaryDirectory(prefix="xpunet-manifests-")
            self.manifests = Path(self._own_manifests.name)
        if self.options.nats_urls:
            self.nats_urls = self.options.nats_urls
        else:
            self.nats = NatsServer(name="xpunet-embedded", workdir=self.options.nats_workdir)
            await self.nats.astart()
            self.nats_urls = (self.nats.url,)
            log.info("embedded nats-server at %s", self.nats.url)
        try:
            self.members = self._build_members()
        except BaseException:
            await self._stop_nats()
            raise
        for member in self.members:
            member.task = asyncio.create_task(self._run_member(member), name=member.host.instance)

    def _build_members(self) -> list[Member]:
        environ = os.environ if self.options.environ is None else self.options.environ
        configs = list(self.options.configs)
        if not configs and environ.get("XPUNET_CONFIG"):
            configs = [Path(environ["XPUNET_CONFIG"])]  # as for the console scripts
        files = [read_config_file(path) for path in configs]
        # Defaults of the embedded stack, below anything the user configures.
        defaults = _named(cli_layer([f"watcher.source=dir:{self.manifests}"]), "xpunetctl stack defaults")
        members: list[Member] = []
        for name in self.options.services:
            entry = load_service(name)
            nodes = [f"node-{i}" for i in range(1, self.options.nodes + 1)] if name == "datapath" else [""]
            for node in nodes:
                # The stack's own values sit between the environment and explicit --set flags:
                # one bus for all, a free health port each (they share one address).
                stack_values = [f"bus.urls={','.join(self.nats_urls)}", "health.port=0"]
                if node:
                    stack_values.append(f"node.name={node}")
                layers: list[Layer] = [
                    defaults,
                    *files,
                    env_layer(environ, entry.settings_cls),
                    _named(cli_layer(stack_values), "xpunetctl stack"),
                    cli_layer(list(self.options.assignments)),
                    cli_layer(list(self.options.node_assignments.get(node, ()))),
                ]
                settings: Settings = build_settings(entry.settings_cls, layers)
                instance = f"{name}.{node}" if node else name
                telemetry = setup_telemetry(f"xpunet-{name}", settings.telemetry, environ)
                host: ServiceHost[Any] = ServiceHost(name, entry.run, settings, telemetry, instance=instance)
                members.append(Member(entry=entry, host=host, telemetry=telemetry))
        return members

    async def _run_member(self, member: Member) -> None:
        try:
            await member.host.run(self.stop_requested)
        except ServiceFailedError as exc:
            member.error = exc
            log.error("%s failed: %s; stopping the stack", member.host.instance, exc)
            self.failed.set()
            self.stop_requested.set()

    async def wait_ready(self) -> bool:
        """Wait until every member is ready (True) or a stop is requested first (False).

        Raises ``ServiceFailedError`` when a member fails first.
        """
        ready: asyncio.Future[list[None]] = asyncio.gather(*(self._member_ready(m) for m in self.members))
        stopped: asyncio.Future[bool] = asyncio.ensure_future(self.stop_requested.wait())
        try:
            either: list[asyncio.Future[Any]] = [ready, stopped]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not ready.done():
                ready.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ready
        if self.failed.is_set():
            errors = [f"{m.host.instance}: {m.error}" for m in self.members if m.error is not None]
            raise ServiceFailedError("; ".join(errors))
        return ready.done() and not ready.cancelled()

    async def _member_ready(self, member: Member) -> None:
        await member.host.context_built.wait()
        if member.host.ctx is None:
            await self.stop_requested.wait()  # the host ended before connecting: it failed or was stopped
        else:
            await member.host.ctx.ready.wait()

    async def health_urls_bound(self) -> None:
        await asyncio.gather(*(m.host.health_bound.wait() for m in self.members))

    async def stop(self) -> None:
        """Stop every member (each flushes and drains), then the embedded nats-server."""
        self.stop_requested.set()
        tasks = [m.task for m in self.members if m.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Flushing telemetry blocks (an OTLP export may wait on its timeout); keep the loop free.
        await asyncio.gather(*(asyncio.to_thread(m.telemetry.shutdown) for m in self.members))
        await self._stop_nats()

    async def _stop_nats(self) -> None:
        if self.nats is not None:
            await self.nats.astop()
            self.nats = None
        if self._own_manifests is not None:
            self._own_manifests.cleanup()
            self._own_manifests = None

    @property
    def ok(self) -> bool:
        return not self.failed.is_set()


def _named(layer: Layer, source: str) -> Layer:
    return Layer(source=source, values=layer.values, textual=True, origins={})


def summary_lines(stack: Stack) -> Sequence[str]:
    lines = [f"NATS      {','.join(stack.nats_urls)}" + ("  (embedded)" if stack.nats is not None else "")]
    if stack.manifests is not None and "watcher" in stack.options.services:
        lines.append(f"manifests {stack.manifests}  (the watcher's source unless watcher.source is set)")
    for member in stack.members:
        note = "  (idle: no service logic yet)" if member.entry.idle else ""
        lines.append(f"{member.host.instance:<18}{member.host.health_url or '-'}{note}")
    return lines
