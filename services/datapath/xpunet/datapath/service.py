"""The datapath service: keeps one node's target equal to the lowering of its intents.

Flow (docs/datapath.md):

1. Watch ``xpunet-intent`` under ``node.<token>.`` and ``global.``, and
   ``xpunet-k8s`` ``node.*`` + ``sync.node`` (routes derived from Nodes while
   no routing service publishes them).  Values are decoded into an
   :class:`~xpunet.datapath.intents.IntentView`; every change marks the state
   dirty and is remembered with its start time and trace context.
2. Once every watch delivered its snapshot, the apply loop runs: wait until
   the target is writable; if its generation is new (start, target restart,
   role change) read it back (**reconcile**); re-lower only the intents that
   changed (:class:`~xpunet.pipeline.incremental.NodeLowering`); let the
   :class:`~xpunet.datapath.reconcile.Reconciler` plan the difference of the
   entries that changed (every entry after a read-back); write the phases in
   order; fold the acknowledgements and rejections back.  Changes that arrive
   meanwhile are coalesced into the next pass.
3. Stale xpunet entries are deleted only when every source is in sync (the
   intent watches, and the watcher's ``sync.node`` marker when routes come
   from Nodes).
4. Status (``xpunet-status`` ``datapath.<token>``) and metrics after each pass.

Pods attached through the infra API (``xpunet.datapath.attach``) reach the
lowering through :meth:`DatapathService.endpoint_attached` (the attach
server's ``EndpointSink``): their vNIC port is what the lowering needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import Link, Tracer

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S, BUCKET_STATUS, InSync, StateStore
from xpunet.bus.backoff import Backoff
from xpunet.bus.errors import BusError
from xpunet.bus.tracing import context_from_headers
from xpunet.datapath import attachment
from xpunet.datapath.attachment import AttachOptions
from xpunet.datapath.counter_poll import CounterPoller
from xpunet.datapath.intents import SYNC_NODE_KEY, Change, IntentView, started_at
from xpunet.datapath.reconcile import Reconciler
from xpunet.datapath.status import (
    MAX_REPORTED_REJECTIONS,
    DatapathMetrics,
    DatapathStatus,
    EntryRejection,
    status_key,
)
from xpunet.datapath.target import ApplyResult, Target
from xpunet.ir.keys import node_prefix
from xpunet.ir.policy import PolicyEndpoint, endpoint_key
from xpunet.ir.routes import NodeRoute
from xpunet.p4rt.client import ClientSettings, TlsOptions
from xpunet.p4rt.errors import TargetError
from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import EntryKey
from xpunet.pipeline.incremental import NodeLowering
from xpunet.pipeline.lowering import Lowered, NodePorts, lower
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.wire import encode_object

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DatapathOptions:
    """``datapath:`` section (``XPUNET_DATAPATH_<KEY>``)."""

    # softipu: an in-process software xPU (development, xpunetctl up); p4rt: a P4Runtime server;
    # kernel: the Linux kernel of a network namespace
    target: Literal["softipu", "p4rt", "kernel"] = "softipu"
    softipu_listen: str = "127.0.0.1:0"  # where the in-process softipu serves P4Runtime
    # p4rt: a P4Runtime server (infrap4d, bmv2, xpunet-softipu)
    p4rt_address: str = "127.0.0.1:9559"
    p4rt_device_id: int = 1
    p4rt_election_id: int = 1
    p4rt_role: str = ""
    p4rt_max_batch: int = 1000
    p4rt_take_over: bool = False  # a backup claims the role when the primary leaves
    tls_ca: str = ""  # PEM file; any tls_* set turns TLS on
    tls_cert: str = ""  # client certificate (mutual TLS), with tls_key
    tls_key: str = ""
    tls_server_name: str = ""
    # kernel: the Linux kernel of a network namespace ("" = the datapath's own)
    kernel_netns: str = ""
    # kernel: the interface of each uplink_ports entry, in order (traffic from other nodes enters there)
    kernel_uplinks: tuple[str, ...] = ()
    # node ports as the lowering numbers them
    host_port: int = 1
    uplink_ports: tuple[int, ...] = (2,)
    # routes derived from Node objects while no routing service publishes global.routes.*
    routes_from_nodes: bool = True
    route_next_hop: Literal["direct", "vxlan"] = "direct"
    vni: int = 4096
    coalesce: float = 0.002  # seconds to gather a burst of intent changes into one pass
    status_interval: float = 1.0  # seconds between status record rewrites (when changed)
    # seconds between reads of the target's counters (metrics, xpunetctl counters); 0: no poll
    counter_interval: float = 10.0
    # Once this many desired entries changed since the last time (the first programming, then
    # churn), move the heap out of the cyclic GC's reach (gc.collect(1); gc.freeze()): entries are
    # acyclic and freed by reference counting, and a full collection over millions of them stalls
    # the loop for 0.3 s at 300k entries, seconds at 10M.  0 turns it off.  Process-wide.
    gc_freeze_after: int = 50_000

    def __post_init__(self) -> None:
        if self.p4rt_max_batch <= 0:
            raise ValueError("datapath.p4rt_max_batch must be > 0")
        if self.p4rt_election_id <= 0:
            raise ValueError("datapath.p4rt_election_id must be > 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("datapath.tls_cert and datapath.tls_key go together")
        if self.coalesce < 0 or self.status_interval < 0:
            raise ValueError("datapath.coalesce and datapath.status_interval must be >= 0")
        if self.counter_interval < 0:
            raise ValueError(f"datapath.counter_interval {self.counter_interval} must be >= 0 (0: off)")
        if not 0 < self.vni < 1 << 24:
            raise ValueError(f"datapath.vni {self.vni} is outside 1..16777215")

    def client_settings(self) -> ClientSettings:
        tls = None
        if self.tls_ca or self.tls_cert:

            def read(path: str) -> bytes | None:
                return Path(path).read_bytes() if path else None

            tls = TlsOptions(
                ca_cert=read(self.tls_ca),
                client_cert=read(self.tls_cert),
                client_key=read(self.tls_key),
                server_name=self.tls_server_name or None,
            )
        return ClientSettings(
            address=self.p4rt_address,
            device_id=self.p4rt_device_id,
            election_id=self.p4rt_election_id,
            role=self.p4rt_role,
            tls=tls,
            max_batch=self.p4rt_max_batch,
            take_over_when_vacant=self.p4rt_take_over,
        )


@dataclass(frozen=True, slots=True)
class Settings(BaseSettings):
    datapath: DatapathOptions = field(default_factory=DatapathOptions)
    attach: AttachOptions = field(default_factory=AttachOptions)  # the infra API (xpunet.datapath.attachment)


def build_target(options: DatapathOptions) -> Target:
    if options.target == "p4rt":
        from xpunet.datapath.p4rt_target import P4RuntimeTarget

        return P4RuntimeTarget(options.client_settings())
    if options.target == "softipu":
        from xpunet.datapath.p4rt_target import EmbeddedSoftIpuTarget

        return EmbeddedSoftIpuTarget(options.client_settings(), listen=options.softipu_listen)
    from xpunet.datapath.kernel_adapter import KernelTargetAdapter

    return KernelTargetAdapter(netns=options.kernel_netns)


class DatapathService:
    """One node's intents → one target.  ``run`` until ``stopping`` is set."""

    def __init__(
        self,
        *,
        node: str,
        options: DatapathOptions,
        target: Target,
        intents: StateStore,
        k8s: StateStore,
        status: StateStore,
        tracer: Tracer | None = None,
        meter: Meter | None = None,
        clock: Callable[[], float] = time.time,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.node = node
        self.options = options
        self.target = target
        self._intents = intents
        self._k8s = k8s
        self._status = status
        self._tracer = tracer or trace.get_tracer(__name__)
        self._clock = clock
        self.view = IntentView(node, options.routes_from_nodes, options.route_next_hop, options.vni)
        self.reconciler = Reconciler()
        # "namespace/pod" → vNIC port: from the attach server (its restored records, then each Attach).
        self.ports: dict[str, int] = dict(ports or {})
        self._provisional: dict[str, PolicyEndpoint] = {}  # attached pods without a policy intent yet
        self.lowering = NodeLowering(node, self._node_ports())
        self._derived_routes: dict[str, NodeRoute] = {}  # routes from Nodes, as last given to the lowering
        self._routes_dirty = True
        self._unplanned: set[EntryKey] = set()  # desired entries changed since the last plan
        self._changed_since_freeze = 0
        self.metrics = DatapathMetrics(meter, occupancy=self.reconciler.occupancy) if meter else None
        # Per-policy / per-service / default-drop totals from the target's counters (docs/observability.md).
        self.counters = CounterPoller(
            node=node,
            target=target,
            desired=lambda: self.lowering.desired,
            status=status,
            meter=meter,
            clock=clock,
        )
        self._watches_pending = {"intent:" + p for p in self.view.prefixes} | {"k8s:node.", "k8s:sync."}
        self._wake = asyncio.Event()
        self._pending: list[Change] = []
        self._generation: int | None = None
        self._applied_revision = 0
        self._passes = 0
        self._passed = asyncio.Condition()
        self._last_error = ""
        self._last_error_at = 0.0
        self._convergence_ms = 0.0
        self._reconciles = 0
        self._ready = False
        self._reason = "starting"
        self._status_dirty = asyncio.Event()
        self._on_ready: Callable[[bool, str], None] | None = None
        self.writes = 0  # updates sent (tests and benchmarks read it)
        self.last_pass_cpu: dict[str, float] = {}  # process CPU seconds per stage of the last pass

    # ----------------------------------------------------------------- inputs

    @property
    def in_sync(self) -> bool:
        """Every watch delivered its snapshot (nothing is applied before)."""
        return not self._watches_pending

    @property
    def may_sweep(self) -> bool:
        if not self.in_sync:
            return False
        return self.view.node_list_synced or not self.view.uses_node_routes()

    async def _watch(self, store: StateStore, prefix: str, name: str) -> None:
        backoff = Backoff(initial=0.1, maximum=5.0)
        attempt = 0
        while True:
            try:
                async with contextlib.aclosing(store.watch(prefix)) as watch:
                    async for item in watch:
                        attempt = 0
                        if isinstance(item, InSync):
                            if name in self._watches_pending:
                                self._watches_pending.discard(name)
                                log.info(
                                    "datapath %s: %s in sync (revision %d)", self.node, name, item.revision
                                )
                            self._wake.set()
                            continue
                        self._take(name, item.key, item.value, item.revision, item.headers)
                return
            except BusError as exc:
                attempt += 1
                delay = backoff.delay(attempt)
                log.warning("datapath %s: watch %s failed (%s); again in %.2fs", self.node, name, exc, delay)
                await asyncio.sleep(delay)

    def _take(
        self, name: str, key: str, value: bytes | None, revision: int, headers: Mapping[str, str]
    ) -> None:
        hdrs = dict(headers)
        if name.startswith("intent:"):
            before = self.view.values.get(key)
            changed = self.view.apply_intent(key, value, revision)
            if changed:
                now = self.view.values.get(key)
                self.lowering.set_intent(key, now)
                if isinstance(before, NodeRoute) or isinstance(now, NodeRoute):
                    self._routes_dirty = True  # routes from Nodes apply only while no route intent exists
                for ep in (before, now):
                    if isinstance(ep, PolicyEndpoint) and f"{ep.namespace}/{ep.pod}" in self._provisional:
                        self._sync_provisional(f"{ep.namespace}/{ep.pod}")
        else:
            changed = self.view.apply_k8s(key, value)
            if changed:
                self._routes_dirty = True
            if key == SYNC_NODE_KEY:
                changed = True  # may allow the sweep
        if changed:
            self._pending.append(Change(key, revision, started_at(hdrs, self._clock()), hdrs))
            self._wake.set()

    # ------------------------------------------------------------- the sink

    async def endpoint_attached(self, endpoint: object) -> None:
        """EndpointSink: a pod got a vNIC; program its entries and wait for the target's ack."""
        ns, name, port = _endpoint_fields(endpoint)
        ref = f"{ns}/{name}"
        self.ports[ref] = port
        addresses = tuple(str(a) for a in getattr(endpoint, "addresses", ()))
        if addresses:
            # Until its policy intent arrives the pod is isolated both ways: routed, but denied (fail closed).
            self._provisional[ref] = PolicyEndpoint(
                ns, name, str(getattr(endpoint, "uid", "")), self.node, addresses, True, True
            )
        self.lowering.set_ports(self._node_ports())
        self._sync_provisional(ref)
        await self._apply_now()

    async def endpoint_detached(self, endpoint: object) -> None:
        ns, name, _ = _endpoint_fields(endpoint)
        ref = f"{ns}/{name}"
        self.ports.pop(ref, None)
        self._provisional.pop(ref, None)
        self.lowering.set_ports(self._node_ports())
        self._sync_provisional(ref)
        await self._apply_now()

    async def _apply_now(self, within: float = 10.0) -> None:
        async with self._passed:
            target = self._passes + 1
            self._wake.set()
            async with asyncio.timeout(within):
                await self._passed.wait_for(lambda: self._passes >= target)

    # ------------------------------------------------------------- lowering

    def _node_ports(self) -> NodePorts:
        return NodePorts(dict(self.ports), host=self.options.host_port, uplinks=self.options.uplink_ports)

    def _provisional_key(self, ref: str) -> str:
        return f"{node_prefix(self.node)}provisional.{ref}"

    def _sync_provisional(self, ref: str) -> None:
        """An attached pod without a policy intent is lowered as an isolated endpoint until it arrives."""
        ep = self._provisional.get(ref)
        if ep is not None:
            real = self.view.values.get(endpoint_key(self.node, ep.namespace, ep.pod))
            if isinstance(real, PolicyEndpoint) and real.node == self.node:
                ep = None
        self.lowering.set_intent(self._provisional_key(ref), ep)

    def _sync_routes(self) -> None:
        """Routes derived from Node objects, given to the lowering as the intents they stand for."""
        if not self._routes_dirty:
            return
        self._routes_dirty = False
        derived = self.view.derived_routes()
        for key in self._derived_routes.keys() - derived.keys():
            self.lowering.set_intent(key, self.view.values.get(key))  # a route intent, or nothing
        for key, route in derived.items():
            self.lowering.set_intent(key, route)
        self._derived_routes = derived

    def lower_changes(self, *, track: bool = True) -> set[EntryKey]:
        """Re-lower what changed; returns the keys of the desired entries that changed
        (``track=False``: the next plan compares every key, the set may be incomplete)."""
        self._sync_routes()
        changed = self.lowering.flush(track=track)
        if self._unplanned:
            self._unplanned |= changed
        else:
            self._unplanned = changed  # the common case: no copy
        return changed

    def desired(self) -> Lowered:
        """The reference lowering of the current intents, numbered like the incremental one (tests, tools)."""
        self.lower_changes()
        lowering = self.lowering
        return lower(lowering.node_intents(), lowering.ports, allocation=lowering.allocation())

    # ---------------------------------------------------------------- apply

    async def apply_loop(self) -> None:
        backoff = Backoff(initial=0.1, factor=2.0, maximum=10.0)
        failures = 0
        while True:
            await self._wait_for_work()
            if not self.in_sync:
                continue
            if self.options.coalesce:
                await asyncio.sleep(self.options.coalesce)
            try:
                await self.apply_once()
                failures = 0
            except TargetError as exc:
                failures += 1
                self._error(f"target {self.target.description}: {exc}")
                self.reconciler.forget()
                self._set_ready(False, f"target: {exc.code}")
                await asyncio.sleep(backoff.delay(failures))
                self._wake.set()

    async def _wait_for_work(self) -> None:
        """Until something changed: an input, the target's generation, a retry falling due."""
        if self._wake.is_set():
            self._wake.clear()
            return
        waits: list[asyncio.Task[object]] = [asyncio.create_task(self._wake.wait())]
        if self._generation is not None:
            waits.append(asyncio.create_task(self.target.wait_changed(self._generation)))
        due = self.reconciler.next_retry()
        timeout = None if due is None else max(0.0, due - self._clock())
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        self._wake.clear()

    async def apply_once(self) -> None:
        """One pass: reconcile if needed, lower, write the difference, record, report."""
        if self._generation is None or not self.target.is_ready(self._generation):
            self._set_ready(False, "waiting for the target")
        generation = await self.target.wait_ready()
        changes, self._pending = self._pending, []
        parent = context_from_headers(changes[0].headers) if changes else None
        links = [
            Link(span_ctx)
            for c in changes[1:16]
            if (
                span_ctx := trace.get_current_span(context_from_headers(c.headers)).get_span_context()
            ).is_valid
        ]
        cpu: dict[str, float] = {}  # process CPU seconds per stage of this pass
        clock = _StageClock(cpu)
        try:
            with self._tracer.start_as_current_span(
                "datapath.apply", context=parent, links=links, attributes={"xpunet.node": self.node}
            ) as span:
                # A new generation (or a stale view) is read back and every key compared.
                full = generation != self._generation or self.reconciler.needs_resync
                # No cyclic GC from the lowering to the freeze: a first pass allocates millions of
                # (acyclic) entries, and collections in between (also while the read-back is
                # awaited: other tasks run with the GC off then) would only walk them to find
                # them alive.  The freeze then moves them out of the GC's reach in one go.
                if full and self.options.gc_freeze_after:
                    with clock("gc_freeze"):
                        gc.collect(1)  # while the young generations are small: see _maybe_freeze
                with self._gc_paused():
                    with self._tracer.start_as_current_span("datapath.lower") as lspan:
                        with clock("lower"):
                            changed_entries = len(self.lower_changes(track=not full))
                        desired = self.lowering.desired
                        lspan.set_attribute(
                            "xpunet.changed_entries", len(desired) if full else changed_entries
                        )
                    if full:
                        with self._tracer.start_as_current_span("datapath.reconcile"), clock("read_back"):
                            actual = await self.target.read_entries(list(desired.values()))
                            self.reconciler.reset(actual)
                        self._generation = generation
                        self._reconciles += 1
                        if self.metrics:
                            self.metrics.reconciles.add(1)
                        log.info(
                            "datapath %s: reconciled with %s (generation %d): %d xpunet entries, %d foreign",
                            self.node,
                            self.target.description,
                            generation,
                            len(actual.owned),
                            len(actual.foreign),
                        )
                    now = self._clock()
                    with clock("plan"):
                        batch = self.reconciler.plan(
                            desired, sweep=self.may_sweep, now=now, changed=None if full else self._unplanned
                        )
                    planned = len(desired) if full else len(self._unplanned)
                    self._unplanned = set()
                    with clock("gc_freeze"):
                        froze = self._maybe_freeze(planned, collected=full)
                span.set_attribute("xpunet.updates", len(batch))
                started = time.perf_counter()
                if len(batch):
                    with self._tracer.start_as_current_span("datapath.target_write") as wspan, clock("write"):
                        wspan.set_attribute("xpunet.phases", len(batch.phases))
                        result = await self.target.apply(batch.phases)
                    self.writes += result.sent
                    with clock("record"), self._gc_paused():
                        fresh = self.reconciler.record(batch, result, now=self._clock())
                    if self.counters.totals.tracking:
                        self._forget_deleted_counters(batch.phases, result)
                    if froze:
                        # The reconciler's index of applied entries became a GC-tracked container
                        # during the write (or grew by millions): out of reach too, or the next
                        # young collections walk all of it (~0.5 s at 10M entries, on a change).
                        with clock("gc_freeze"):
                            gc.collect(1)
                            gc.freeze()
                    for r in fresh:
                        log.warning("datapath %s: rejected: %s", self.node, r.describe())
                        if self.metrics:
                            self.metrics.write_errors.add(1, {"code": r.code})
                    for note in result.notes:
                        self._error(f"target {self.target.description}: {note}")
                    if fresh:
                        self._error(f"{len(fresh)} update(s) rejected; first: {fresh[0].describe()}")
                    if self.metrics:
                        self.metrics.updates.add(result.sent - len(result.rejected))
                        self.metrics.write_seconds.record(time.perf_counter() - started)
                    if self.reconciler.needs_resync:
                        self._wake.set()  # our view was stale: read the target back and go again
        except BaseException:
            self._pending = changes + self._pending  # not acknowledged: measure them on the next pass
            raise
        acked = self._clock()
        self.last_pass_cpu = cpu
        if sum(cpu.values()) >= 1.0:
            log.info(
                "datapath %s: pass of %d update(s), CPU s: %s",
                self.node,
                len(batch),
                ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()),
            )
        self._applied_revision = max(self._applied_revision, self.view.revision)
        for c in changes:
            latency = max(0.0, acked - c.started)
            self._convergence_ms = latency * 1000
            if self.metrics:
                self.metrics.convergence.record(latency)
        self._set_ready(True, "")
        self._status_dirty.set()
        async with self._passed:
            self._passes += 1
            self._passed.notify_all()

    def _forget_deleted_counters(self, phases: Sequence[Sequence[Update]], result: ApplyResult) -> None:
        """Deleted entries' counters are gone with them: a re-added entry counts from zero."""
        refused = {r.update.entry.key for r in result.rejected}
        self.counters.totals.forget(
            u.entry.key
            for phase in phases
            for u in phase
            if u.kind == "DELETE" and u.entry.key not in refused
        )

    def _gc_paused(self) -> contextlib.AbstractContextManager[None]:
        """No cyclic GC inside a synchronous stage of a pass (see ``DatapathOptions.gc_freeze_after``)."""
        return _gc_paused() if self.options.gc_freeze_after else contextlib.nullcontext()

    def _maybe_freeze(self, planned: int, *, collected: bool) -> bool:
        """Once enough desired entries changed, move the heap out of the cyclic GC's reach.

        Done right after planning, before the write: a node's first pass allocates
        millions of acyclic entries with the GC paused, and a collection over them
        during the (long) write would only find them alive.  ``collected``: the young
        generations were collected just before this pass lowered (a full pass), so
        what they hold now is the pass's own (acyclic) allocations: frozen without
        walking them (~4 s at 10M entries)."""
        self._changed_since_freeze += planned
        if self.options.gc_freeze_after and self._changed_since_freeze >= self.options.gc_freeze_after:
            if not collected:
                gc.collect(1)  # young cyclic garbage first (cheap), so little is frozen with the live heap
            gc.freeze()
            log.info(
                "datapath %s: %d entries changed; heap frozen out of the cyclic GC",
                self.node,
                self._changed_since_freeze,
            )
            self._changed_since_freeze = 0
            return True
        return False

    async def wait_converged(self, revision: int = 0, *, generation: int = 0) -> None:
        """Until a pass acknowledged every change seen so far, the intents up to ``revision``,
        in target generation ``generation`` or later."""
        await self.wait_pass(
            lambda s: (
                s._ready
                and not s._pending
                and not s._wake.is_set()
                and s._applied_revision >= revision
                and (s._generation or 0) >= generation
            )
        )

    async def wait_pass(self, predicate: Callable[[DatapathService], bool]) -> None:
        """Until ``predicate`` holds after a completed pass (checked after every pass)."""
        async with self._passed:
            await self._passed.wait_for(lambda: self._passes > 0 and predicate(self))

    # ------------------------------------------------------------- reporting

    def _error(self, message: str) -> None:
        self._last_error = message
        self._last_error_at = self._clock()
        self._status_dirty.set()

    def _set_ready(self, ready: bool, reason: str) -> None:
        if (ready, reason) != (self._ready, self._reason):
            self._ready, self._reason = ready, reason
            self._status_dirty.set()
            if self._on_ready is not None:
                self._on_ready(ready, reason)

    def status(self) -> DatapathStatus:
        rec = self.reconciler
        rejected = [
            EntryRejection(r.entry.alias, r.origin, r.kind, r.code, r.message, r.retryable, r.attempts)
            for r in rec.rejected.values()
        ] + [
            EntryRejection(
                e.alias, e.origin, "INSERT", "CONFLICT", "key held by an entry xpunet did not write", True
            )
            for e in rec.conflicts.values()
        ]
        rejected.sort(key=lambda r: (r.origin, r.table))
        problems = self.lowering.problems() + tuple(str(o) for o in self.lowering.overflow())
        problems += tuple(f"{k}: {v}" for k, v in sorted(self.view.problems.items()))
        return DatapathStatus(
            node=self.node,
            target=f"{self.target.kind} {self.target.description}",
            ready=self._ready,
            reason=self._reason,
            applied_revision=self._applied_revision,
            generation=self._generation or 0,
            entries=len(rec.applied),
            occupancy=rec.occupancy(),
            pending=len(rec.rejected) + len(rec.conflicts),
            rejected_count=len(rejected),
            rejected=tuple(rejected[:MAX_REPORTED_REJECTIONS]),
            lowering_problems=problems[:MAX_REPORTED_REJECTIONS],
            last_error=self._last_error,
            last_error_at=self._last_error_at,
            convergence_ms=self._convergence_ms,
            reconciles=self._reconciles,
            updated_at=self._clock(),
        )

    async def status_loop(self) -> None:
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            await self.publish_status()
            await asyncio.sleep(self.options.status_interval)

    async def publish_status(self) -> None:
        try:
            await self._status.put(status_key(self.node), encode_object(self.status()))
        except BusError as exc:
            log.warning("datapath %s: status not written: %s", self.node, exc)
            self._status_dirty.set()

    # ------------------------------------------------------------------ run

    async def run(
        self, stopping: asyncio.Event, *, on_ready: Callable[[bool, str], None] | None = None
    ) -> None:
        self._on_ready = on_ready
        await self.target.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._watch(self._intents, p, "intent:" + p), name=f"watch {p}")
                    for p in self.view.prefixes
                ]
                tasks += [
                    tg.create_task(self._watch(self._k8s, "node.", "k8s:node."), name="watch nodes"),
                    tg.create_task(self._watch(self._k8s, "sync.", "k8s:sync."), name="watch sync"),
                    tg.create_task(self.apply_loop(), name="apply"),
                    tg.create_task(self.status_loop(), name="status"),
                ]
                if self.options.counter_interval > 0:
                    tasks.append(
                        tg.create_task(self.counters.run(self.options.counter_interval), name="counters")
                    )
                await stopping.wait()
                for task in tasks:
                    task.cancel()
            await self.publish_status()
        finally:
            await self.target.close()


class _StageClock:
    """``with clock("stage"):`` adds the process CPU time spent inside to ``cpu["stage"]``.

    Process-wide CPU: an ``await`` inside (the write) also counts whatever else
    the loop ran meanwhile."""

    def __init__(self, cpu: dict[str, float]) -> None:
        self.cpu = cpu

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.cpu[stage] = self.cpu.get(stage, 0.0) + time.process_time() - start


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off for a synchronous stage: lowering a node from empty allocates millions of
    (acyclic) entries, and the collections they trigger would walk them over and over, only to find
    them alive (a third of the lowering's CPU at 500 services, measured)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _endpoint_fields(endpoint: object) -> tuple[str, str, int]:
    ns = getattr(endpoint, "namespace", None)
    name = getattr(endpoint, "name", None)
    port = getattr(endpoint, "p4_port", None)
    if not isinstance(ns, str) or not isinstance(name, str) or not isinstance(port, int):
        raise ValueError(f"endpoint {endpoint!r} lacks namespace, name or p4_port")
    return ns, name, port


async def run(ctx: ServiceContext[Settings]) -> None:
    """The datapath's entry point (docs/runtime.md, docs/datapath.md)."""
    options = ctx.settings.datapath
    k8s = await ctx.bus.kv(BUCKET_K8S)
    uplinks = dict(zip(options.uplink_ports, options.kernel_uplinks, strict=False))
    # The attach server first: its restored attachments are the pods' ports at start.
    attached = await attachment.start_attachment(
        ctx.settings.attach,
        node=ctx.node,
        k8s=k8s,
        stopping=ctx.stopping,
        kernel_netns=options.kernel_netns,
        kernel_routes=options.target == "kernel",
        uplinks=uplinks,
    )
    target = build_target(options)
    service = DatapathService(
        node=ctx.node,
        options=options,
        target=target,
        intents=await ctx.bus.kv(BUCKET_INTENT),
        k8s=k8s,
        status=await ctx.bus.kv(BUCKET_STATUS),
        tracer=ctx.tracer,
        meter=ctx.meter,
        ports=attached.ports if attached else None,
    )

    def on_ready(ready: bool, reason: str) -> None:
        if ready:
            ctx.mark_ready()
        else:
            ctx.mark_not_ready(reason)

    async with attachment.wired(attached, service, target, uplinks=uplinks):
        await service.run(ctx.stopping, on_ready=on_ready)
