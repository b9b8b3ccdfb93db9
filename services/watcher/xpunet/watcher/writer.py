"""The only place the watcher writes to KV: drains coalesced changes from the mirror state in batches.

Small batches (live watch events, usually one object) get one trace span per
object, carrying kind, namespace/name and resourceVersion, and each object is
written with its own trace context in the KV headers, so a Kubernetes change
is one trace downstream.  Large batches (an initial list or a relist) are one
``put_many`` under one span describing the batch: a span per object would
cost more than the write during a 270,000-object sync.

Writes are in queue order, one batch at a time, so a kind's in-sync marker
lands after every object queued before it.  Before each batch the leadership
check runs: a writer that is no longer leader raises ``LeadershipLostError``
and writes nothing more.  A failed batch is requeued (unless superseded) and
retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from opentelemetry.trace import SpanKind, Tracer

from xpunet.bus.api import StateStore
from xpunet.bus.backoff import Backoff
from xpunet.bus.errors import BusError
from xpunet.bus.tracing import inject_headers
from xpunet.watcher._aio import raise_if_cancelling
from xpunet.watcher.feed import Feed
from xpunet.watcher.state import Change

log = logging.getLogger(__name__)


class LeadershipLostError(Exception):
    """This watcher may no longer write: another instance holds (or may hold) the lease."""


def _always() -> bool:
    return True


class KVWriter:
    def __init__(
        self,
        store: StateStore,
        feed: Feed,
        *,
        tracer: Tracer,
        is_leader: Callable[[], bool] = _always,
        batch_size: int = 5000,
        span_per_object_upto: int = 16,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._feed = feed
        self._tracer = tracer
        self._is_leader = is_leader
        self._batch_size = batch_size
        self._span_per_object_upto = span_per_object_upto
        self._backoff = backoff or Backoff(initial=0.1, factor=2.0, maximum=5.0)
        self._sleep = sleep
        self.idle = asyncio.Event()  # set whenever everything queued is written
        self._progress = asyncio.Condition()
        self.written = 0  # changes written, for tests and logs

    async def run(self) -> None:
        state = self._feed.state
        attempt = 0
        while True:
            if not state.pending:
                self.idle.set()
                await self._notify()
                # asyncio.wait_for in 3.11 (used under put_many) can swallow a cancellation
                # that races with its result; do not go back to sleep if we were cancelled.
                raise_if_cancelling()
                await self._feed.wake.wait()
            self._feed.wake.clear()
            self.idle.clear()
            while state.pending:
                batch = state.take(self._batch_size)
                if not self._is_leader():
                    state.failed(batch)
                    raise LeadershipLostError("lease lost: stopping writes")
                try:
                    await self._write(batch)
                except BusError as exc:
                    state.failed(batch)
                    raise_if_cancelling()
                    attempt += 1
                    delay = self._backoff.delay(attempt)
                    log.warning(
                        "KV write of %d changes to %s failed (%s); retry %d in %.2fs",
                        len(batch),
                        self._store.bucket,
                        exc,
                        attempt,
                        delay,
                    )
                    await self._sleep(delay)
                    continue
                attempt = 0
                state.committed(batch)
                raise_if_cancelling()
                self.written += len(batch)
                now = self._feed.clock()
                deletes = sum(1 for c in batch if c.value is None)
                self._feed.metrics.written(len(batch) - deletes, deletes)
                for c in batch:
                    self._feed.metrics.lag(now - c.observed)
                await self._notify()

    async def drained(self) -> None:
        """Return once everything queued so far (and anything queued meanwhile) is written."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.idle.is_set() and not self._feed.state.pending)

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: list[Change]) -> None:
        if len(batch) <= self._span_per_object_upto:
            for c in batch:
                with self._tracer.start_as_current_span(
                    "watcher.kv_write", kind=SpanKind.PRODUCER, attributes=_attributes(c)
                ):
                    await self._store.put_many({c.key: c.value}, headers=inject_headers())
            return
        kinds = sorted({c.kind.value for c in batch if c.kind is not None})
        attributes: dict[str, str | int] = {
            "xpunet.kv.bucket": self._store.bucket,
            "xpunet.kv.count": len(batch),
            "k8s.kinds": ",".join(kinds),
            "xpunet.kv.first_key": batch[0].key,
            "xpunet.kv.last_key": batch[-1].key,
            "k8s.resource_version": max((c.resource_version for c in batch), key=_rv_order),
        }
        with self._tracer.start_as_current_span(
            "watcher.kv_write_batch", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            await self._store.put_many({c.key: c.value for c in batch}, headers=inject_headers())


def _rv_order(rv: str) -> tuple[int, str]:
    # resourceVersions are opaque strings; etcd's are integers, compare those numerically.
    return (int(rv), rv) if rv.isdigit() else (-1, rv)


def _attributes(c: Change) -> dict[str, str]:
    namespace, _, name = c.ref.rpartition("/")
    attrs = {
        "xpunet.kv.key": c.key,
        "xpunet.kv.op": "delete" if c.value is None else "put",
        "k8s.kind": c.kind.value if c.kind is not None else "sync",
        "k8s.name": name,
        "k8s.resource_version": c.resource_version,
    }
    if namespace:
        attrs["k8s.namespace"] = namespace
    return attrs
