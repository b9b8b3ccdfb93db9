"""The policy service: watches ``xpunet-k8s``, runs the pure compiler, writes changed policy intents.

Flow: read the policy intents a previous run left in ``xpunet-intent`` (so
unchanged keys are not rewritten and stale ones are swept), watch Pods,
Namespaces and NetworkPolicies plus the watcher's ``sync.<kind>`` markers,
and once every watch delivered its snapshot *and* the three markers exist,
flush: the compiler returns only changed keys, which go out in one pipelined
``put_many`` (deletes explicit).  Nothing is swept before that point, so a
partial view never removes a node's rules.  Afterwards a change after a quiet
spell is flushed at once, and a burst is coalesced into at most one flush per
``policy.flush_interval`` seconds (``xpunet.runtime.pacing``).  A policy the compiler
rejects is logged, counted and reported in ``xpunet-status`` under
``policy.rejected.<ns>.<name>``, and ignored; the service carries on.

Tracing (docs/observability.md): each flush is one ``policy.compile`` span, a
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
from xpunet.ir.policy import (
    GLOBAL_IPSET_PREFIX,
    REJECTED_PREFIX,
    PolicyRejection,
    is_policy_intent_key,
    rejection_key,
)
from xpunet.model.errors import ModelError
from xpunet.model.keys import parse_object_key as parse_k8s_key
from xpunet.model.objects import Kind, Namespace, NetworkPolicy, Pod
from xpunet.policy.compiler import DEFAULT_GLOBAL_SET_NODES, PolicyCompiler
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.pacing import pace_flushes
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.wire import WireError, decode_k8s, encode_object

logger = logging.getLogger(__name__)

WATCHED = (Kind.POD, Kind.NAMESPACE, Kind.NETWORK_POLICY)
SYNC_PREFIX = "sync."


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    flush_interval: float = 0.02  # in a burst, at most one flush per this many seconds
    # A set referenced from at least this many nodes is published once (global.policy.ipset.<id>).
    global_set_nodes: int = DEFAULT_GLOBAL_SET_NODES

    def __post_init__(self) -> None:
        if self.flush_interval < 0:
            raise ValueError("policy.flush_interval must be >= 0")
        if self.global_set_nodes < 1:
            raise ValueError("policy.global_set_nodes must be >= 1")


@dataclass(frozen=True, slots=True)
class Settings(BaseSettings):
    policy: PolicyOptions = field(default_factory=PolicyOptions)


def parse_object_key(key: str) -> tuple[Kind, str | None, str] | None:
    """(kind, namespace, name) of a watched object's key; None for other keys."""
    parsed = parse_k8s_key(key)
    return parsed if parsed is not None and parsed[0] in WATCHED else None


class _Metrics:
    def __init__(self, ctx: ServiceContext[Any]) -> None:
        meter = ctx.meter
        self.rejected = meter.create_counter(
            "xpunet_policy_rejected_total", description="NetworkPolicies the compiler rejected"
        )
        self.bad_messages = meter.create_counter(
            "xpunet_policy_bad_messages_total", description="xpunet-k8s values that could not be decoded"
        )
        self.writes = meter.create_counter(
            "xpunet_policy_intent_writes_total", description="Intent keys written"
        )
        self.deletes = meter.create_counter(
            "xpunet_policy_intent_deletes_total", description="Intent keys deleted"
        )
        self.flush_seconds = meter.create_histogram(
            "xpunet_policy_flush_seconds", unit="s", description="Compile, encode and write of one flush"
        )
        self.change_to_intent = meter.create_histogram(
            "xpunet_policy_change_to_intent_seconds",
            unit="s",
            description="Earliest change of a flush (its written-at, else arrival) to its intents written",
        )


async def load_existing(intents: StateStore, status: StateStore) -> tuple[dict[str, bytes], set[str]]:
    """Policy intent values and rejection reports a previous run left behind."""
    found: dict[str, bytes] = {}
    for prefix in ("node.", GLOBAL_IPSET_PREFIX):
        async for entry in snapshot(intents, prefix):
            if entry.value is not None and is_policy_intent_key(entry.key):
                found[entry.key] = entry.value
    reports = {e.key async for e in snapshot(status, REJECTED_PREFIX) if e.value is not None}
    return found, reports


class PolicyService:
    """Feeds the compiler from KV watches and writes its output."""

    def __init__(
        self,
        compiler: PolicyCompiler,
        *,
        k8s: StateStore,
        intents: StateStore,
        status: StateStore,
        flush_interval: float,
        existing: Mapping[str, bytes] | None = None,
        existing_reports: set[str] | None = None,
        metrics: _Metrics | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.compiler = compiler
        self._k8s = k8s
        self._intents = intents
        self._status = status
        self._flush_interval = flush_interval
        self._metrics = metrics
        self._tracer = tracer or trace.get_tracer(__name__)
        self._clock = clock  # wall clock: written-at headers are compared across processes
        self._causes = CauseTracker(clock=clock)
        # What the bucket holds that we have not yet confirmed: compared on the first flush.
        self._existing: dict[str, bytes] | None = dict(existing or {})
        self._status_pending: dict[str, bytes | None] = {}
        self._reported: set[str] = set(existing_reports or ())  # report keys present in xpunet-status
        self._first_flush = True
        self._dirty = asyncio.Event()
        self._dirty_flag = False
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
                self._mark_dirty()
                continue
            if prefix in self._in_sync_watches:
                # A live change (snapshot values describe state, not a change to trace or time).
                self._causes.note(item.key, item.headers)
            self.apply(item)

    def _mark_dirty(self) -> None:
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
        parsed = parse_object_key(entry.key)
        if parsed is None:
            return
        kind, ns, name = parsed
        self._mark_dirty()
        if entry.value is None:
            self._delete(kind, ns, name)
            return
        try:
            obj = decode_k8s(entry.value)
        except WireError as exc:
            logger.warning("policy: skipping undecodable %s: %s", entry.key, exc)
            if self._metrics:
                self._metrics.bad_messages.add(1)
            if kind is Kind.NETWORK_POLICY and ns is not None:
                # A policy we cannot read is not enforced; say so where operators look.
                self.compiler.delete_policy(ns, name)
                self._report(ns, name, ModelError("NetworkPolicy", f"{ns}/{name}", "(value)", str(exc)))
            return
        if isinstance(obj, Pod) and kind is Kind.POD:
            self.compiler.upsert_pod(obj)
        elif isinstance(obj, Namespace) and kind is Kind.NAMESPACE:
            self.compiler.upsert_namespace(obj)
        elif isinstance(obj, NetworkPolicy) and kind is Kind.NETWORK_POLICY:
            error = self.compiler.upsert_policy(obj)
            if error is not None:
                self._report(obj.namespace, obj.name, error)
            else:
                self._clear_report(obj.namespace, obj.name)
        else:
            logger.warning("policy: skipping %s: a %s under a %s key", entry.key, type(obj).__name__, kind)

    def _delete(self, kind: Kind, ns: str | None, name: str) -> None:
        if kind is Kind.POD and ns is not None:
            self.compiler.delete_pod(ns, name)
        elif kind is Kind.NAMESPACE:
            self.compiler.delete_namespace(name)
        elif kind is Kind.NETWORK_POLICY and ns is not None:
            self.compiler.delete_policy(ns, name)
            self._clear_report(ns, name)

    def _clear_report(self, ns: str, name: str) -> None:
        key = rejection_key(ns, name)
        if key in self._reported:
            self._status_pending[key] = None

    def _report(self, ns: str, name: str, error: ModelError) -> None:
        logger.warning("policy: ignoring NetworkPolicy %s/%s: %s", ns, name, error)
        if self._metrics:
            self._metrics.rejected.add(1)
        report = PolicyRejection(namespace=ns, policy=name, field=error.field, problem=error.problem)
        self._status_pending[rejection_key(ns, name)] = encode_object(report)

    async def flush_loop(self, stopping: asyncio.Event) -> None:
        """Flush at once after a quiet spell, at most once per flush interval in a burst."""
        await pace_flushes(
            self._dirty, self._flush_when_ready, interval=self._flush_interval, stopping=stopping
        )

    async def _flush_when_ready(self) -> None:
        if self._ready_to_flush:
            await self.flush()

    async def flush(self) -> dict[str, bytes | None]:
        """Compile what changed and write it; returns the writes made (None: deletes)."""
        causes = self._causes.take()
        attributes = source_attributes(causes, parse_object_key)
        with flush_span(self._tracer, "policy.compile", causes, attributes) as span:
            writes, status = await self._flush(written_at_headers(causes, self._clock()))
            deletes = sum(1 for v in writes.values() if v is None)
            span.set_attribute("xpunet.intent.keys", len(writes))
            span.set_attribute("xpunet.intent.deletes", deletes)
            span.set_attribute("xpunet.status.keys", len(status))
        if self._metrics and writes and causes.count:
            now = self._clock()
            self._metrics.change_to_intent.record(max(0.0, now - causes.written_at(now)))
        return writes

    async def _flush(
        self, headers: Mapping[str, str]
    ) -> tuple[dict[str, bytes | None], dict[str, bytes | None]]:
        """Compile, write status reports then intents with ``headers``; returns (intent, status) writes."""
        started = time.perf_counter()
        self._dirty_flag = False
        changes = self.compiler.flush()
        writes: dict[str, bytes | None] = {}
        existing, self._existing = self._existing, None
        encoded: dict[int, bytes] = {}  # one IPSet value is shared by every node holding the set
        for key, value in changes.items():
            data = None
            if value is not None:
                data = encoded.get(id(value))
                if data is None:
                    data = encoded[id(value)] = encode_object(value)
            if existing is not None and existing.get(key) == data:
                continue  # a previous run already wrote exactly this
            writes[key] = data
        if existing is not None:
            # First flush in sync: whatever a previous run wrote and nothing produces now is stale.
            for key in existing.keys() - self.compiler.intents.keys():
                writes[key] = None
        if self._first_flush:
            # Reports of a previous run about policies that are now fine or gone.
            self._first_flush = False
            current = {rejection_key(ns, name) for ns, name in self.compiler.rejected}
            for key in self._reported - current:
                self._status_pending.setdefault(key, None)
        # Reports first: whoever sees the new intents can already read why a policy is ignored.
        status, self._status_pending = self._status_pending, {}
        for key, report in status.items():
            if report is None:
                self._reported.discard(key)
            else:
                self._reported.add(key)
        if status:
            await self._status.put_many(status, headers=headers)
        if writes:
            await self._intents.put_many(writes, headers=headers)
        self.flushes += 1
        deletes = sum(1 for v in writes.values() if v is None)
        if self._metrics:
            self._metrics.writes.add(len(writes) - deletes)
            self._metrics.deletes.add(deletes)
            self._metrics.flush_seconds.record(time.perf_counter() - started)
        if writes:
            logger.info(
                "policy: wrote %s intent keys (%s deletes) in %.1f ms",
                len(writes),
                deletes,
                (time.perf_counter() - started) * 1000,
            )
        self.synced.set()
        return writes, status

    async def run(self, stopping: asyncio.Event, *, on_synced: Callable[[], None] | None = None) -> None:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.consume(p), name=f"watch {p}") for p in self._prefixes()]
            flusher = tg.create_task(self.flush_loop(stopping), name="flush")
            if on_synced is not None:
                tg.create_task(_call_when(self.synced, on_synced), name="ready")
            await stopping.wait()
            for task in tasks:
                task.cancel()
            flusher.cancel()
        # Final flush of what arrived before the stop (only once in sync: never sweep a partial view).
        if self._ready_to_flush and self._dirty_flag:
            await self.flush()

    @staticmethod
    def _prefixes() -> list[str]:
        return [f"{k.value}." for k in WATCHED] + [SYNC_PREFIX]


async def _call_when(event: asyncio.Event, callback: Callable[[], None]) -> None:
    await event.wait()
    callback()


async def run(ctx: ServiceContext[Settings]) -> None:
    """The policy service's entry point (docs/runtime.md)."""
    k8s = await ctx.bus.kv(BUCKET_K8S)
    intents = await ctx.bus.kv(BUCKET_INTENT)
    status = await ctx.bus.kv(BUCKET_STATUS)
    existing, reports = await load_existing(intents, status)
    logger.info("policy: starting with %s existing intent keys", len(existing))
    service = PolicyService(
        PolicyCompiler(global_set_nodes=ctx.settings.policy.global_set_nodes),
        k8s=k8s,
        intents=intents,
        status=status,
        flush_interval=ctx.settings.policy.flush_interval,
        existing=existing,
        existing_reports=reports,
        metrics=_Metrics(ctx),
        tracer=ctx.tracer,
    )
    await service.run(ctx.stopping, on_synced=ctx.mark_ready)
