"""The policy service: watches ``xpunet-k8s``, runs the pure compiler, writes changed policy intents.

Flow: read the policy intents a previous run left in ``xpunet-intent`` (so
unchanged keys are not rewritten and stale ones are swept), watch Pods,
Namespaces and NetworkPolicies plus the watcher's ``sync.<kind>`` markers
(one watch, in revision order), and once it delivered its snapshot *and* the
three markers exist,
flush: the compiler returns only changed keys, which go out in one pipelined
``put_many`` (deletes explicit).  Nothing is swept before that point, so a
partial view never removes a node's rules.  Afterwards a change after a quiet
spell is flushed at once, and a burst is coalesced into at most one flush per
``policy.flush_interval`` seconds (``xpunet.runtime.pacing``).  A policy the compiler
rejects is logged, counted and reported in ``xpunet-status`` under
``policy.rejected.<ns>.<name>``, and ignored; the service carries on.

The watch / gate / pace / write loop, spans (docs/observability.md) and metrics are the shared
:mod:`xpunet.runtime.compiler_service`; this module is the policy compiler's
adapter to it (:class:`PolicyFeed`) and the service's entry point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from opentelemetry.trace import Tracer

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S, BUCKET_STATUS, StateStore, snapshot
from xpunet.ir.policy import (
    GLOBAL_IPSET_PREFIX,
    REJECTED_PREFIX,
    PolicyRejection,
    is_policy_intent_key,
    rejection_key,
)
from xpunet.model.errors import ModelError
from xpunet.model.objects import K8sObject, Kind, Namespace, NetworkPolicy, Pod
from xpunet.policy.compiler import DEFAULT_GLOBAL_SET_NODES, PolicyCompiler
from xpunet.runtime.compiler_service import CompilerMetrics, CompilerService, FlushResult, HeapFreezer
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.settings import Settings as BaseSettings
from xpunet.wire import WireError, encode_object

logger = logging.getLogger(__name__)

WATCHED = (Kind.POD, Kind.NAMESPACE, Kind.NETWORK_POLICY)


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


def policy_metrics(ctx: ServiceContext[Settings]) -> CompilerMetrics:
    return CompilerMetrics(ctx.meter, "policy", rejected="NetworkPolicies the compiler rejected")


async def load_existing(intents: StateStore, status: StateStore) -> tuple[dict[str, bytes], set[str]]:
    """Policy intent values and rejection reports a previous run left behind."""
    found: dict[str, bytes] = {}
    for prefix in ("node.", GLOBAL_IPSET_PREFIX):
        async for entry in snapshot(intents, prefix):
            if entry.value is not None and is_policy_intent_key(entry.key):
                found[entry.key] = entry.value
    reports = {e.key async for e in snapshot(status, REJECTED_PREFIX) if e.value is not None}
    return found, reports


class PolicyFeed:
    """The policy compiler as an :class:`~xpunet.runtime.compiler_service.IncrementalCompiler`.

    Besides feeding the compiler it owns what only policy has: the rejection
    reports in ``xpunet-status`` and the comparison of the first flush with
    what a previous run left in ``xpunet-intent``.
    """

    def __init__(
        self,
        compiler: PolicyCompiler,
        *,
        existing: Mapping[str, bytes] | None = None,
        existing_reports: set[str] | None = None,
    ) -> None:
        self.compiler = compiler
        # What the bucket holds that we have not yet confirmed: compared on the first flush.
        self._existing: dict[str, bytes] | None = dict(existing or {})
        self._status_pending: dict[str, bytes | None] = {}
        self._reported: set[str] = set(existing_reports or ())  # report keys present in xpunet-status
        self._rejected = 0  # reports made since the last flush (for the metric)
        self._first_flush = True

    def upsert(self, kind: Kind, obj: K8sObject) -> None:
        if isinstance(obj, Pod):
            self.compiler.upsert_pod(obj)
        elif isinstance(obj, Namespace):
            self.compiler.upsert_namespace(obj)
        elif isinstance(obj, NetworkPolicy):
            error = self.compiler.upsert_policy(obj)
            if error is not None:
                self._report(obj.namespace, obj.name, error)
            else:
                self._clear_report(obj.namespace, obj.name)

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        if kind is Kind.POD and namespace is not None:
            self.compiler.delete_pod(namespace, name)
        elif kind is Kind.NAMESPACE:
            self.compiler.delete_namespace(name)
        elif kind is Kind.NETWORK_POLICY and namespace is not None:
            self.compiler.delete_policy(namespace, name)
            self._clear_report(namespace, name)

    def undecodable(self, kind: Kind, namespace: str | None, name: str, error: WireError) -> None:
        if kind is Kind.NETWORK_POLICY and namespace is not None:
            # A policy we cannot read is not enforced; say so where operators look.
            self.compiler.delete_policy(namespace, name)
            where = f"{namespace}/{name}"
            self._report(namespace, name, ModelError("NetworkPolicy", where, "(value)", str(error)))

    def _clear_report(self, ns: str, name: str) -> None:
        key = rejection_key(ns, name)
        if key in self._reported:
            self._status_pending[key] = None

    def _report(self, ns: str, name: str, error: ModelError) -> None:
        logger.warning("policy: ignoring NetworkPolicy %s/%s: %s", ns, name, error)
        self._rejected += 1
        report = PolicyRejection(namespace=ns, policy=name, field=error.field, problem=error.problem)
        self._status_pending[rejection_key(ns, name)] = encode_object(report)

    def flush(self) -> FlushResult:
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
        status, self._status_pending = self._status_pending, {}
        for key, report in status.items():
            if report is None:
                self._reported.discard(key)
            else:
                self._reported.add(key)
        rejected, self._rejected = self._rejected, 0
        return FlushResult(intents=writes, status=status, rejected=rejected)

    def flushed(self) -> None:
        pass


class PolicyService(CompilerService):
    """The shared compiler-service loop over a :class:`PolicyFeed`."""

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
        metrics: CompilerMetrics | None = None,
        tracer: Tracer | None = None,
        clock: Callable[[], float] = time.time,
        heap: HeapFreezer | None = None,
    ) -> None:
        self.compiler = compiler
        self.feed = PolicyFeed(compiler, existing=existing, existing_reports=existing_reports)
        super().__init__(
            self.feed,
            name="policy",
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
        metrics=policy_metrics(ctx),
        tracer=ctx.tracer,
        heap=HeapFreezer(),
    )
    await service.run(ctx.stopping, on_synced=ctx.mark_ready)
