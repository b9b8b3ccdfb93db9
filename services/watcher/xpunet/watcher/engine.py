"""The watcher's main loop: win the lease, reconcile the KV with the source, mirror it until losing the lease.

One leadership term: read what the bucket holds (the previous leader's work)
into a fresh ``MirrorState``, then run the source and the KV writer together.
The source's first full list of each kind rewrites only values that differ
from the bucket, deletes the keys it no longer has, and queues the kind's
in-sync marker.  Losing the lease ends the term at once (the writer also checks
before every batch); the loop then goes back to waiting for the lease, and a
later term starts from the bucket again, since another leader may have
written meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Protocol

from kubernetes_asyncio import client
from opentelemetry.trace import Tracer

from xpunet.bus.api import InSync, StateStore
from xpunet.bus.backoff import Backoff
from xpunet.bus.errors import BusUnavailable
from xpunet.model import Kind
from xpunet.watcher.feed import Feed
from xpunet.watcher.informer import Informer, InformerOptions
from xpunet.watcher.leader import LeaderElector
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.watcher.state import Encoder, ListPage, MirrorState, decode_list_page
from xpunet.watcher.writer import KVWriter, LeadershipLostError

log = logging.getLogger(__name__)


class Source(Protocol):
    async def run(self, feed: Feed) -> None:
        """Feed every object, mark each kind synced after its first full pass, then follow changes forever."""
        ...


class ApiSource:
    """One informer per kind against a Kubernetes API server.

    With ``parse_workers`` > 0, list pages are decoded, normalised and encoded in
    that many worker processes (spawned, not forked: the parent runs an event
    loop and client threads), so a large initial list or relist uses more than
    one core; watch events, few and latency-sensitive, stay in-process.
    """

    def __init__(
        self, api: client.ApiClient, options: InformerOptions | None = None, *, parse_workers: int = 0
    ) -> None:
        self._api = api
        self._options = options or InformerOptions()
        self._parse_workers = parse_workers
        self.informers: dict[Kind, Informer] = {}

    async def run(self, feed: Feed) -> None:
        pool: ProcessPoolExecutor | None = None
        decode = None
        if self._parse_workers > 0:
            pool = ProcessPoolExecutor(self._parse_workers, mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()

            async def decode_in_pool(kind: Kind, body: bytes) -> ListPage:
                return await loop.run_in_executor(pool, decode_list_page, kind, body)

            decode = decode_in_pool
        try:
            self.informers = {
                k: Informer(self._api, k, feed, options=self._options, decode=decode) for k in Kind
            }
            async with asyncio.TaskGroup() as tg:
                for kind, informer in self.informers.items():
                    tg.create_task(informer.run(), name=f"informer-{kind}")
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)


async def read_bucket(store: StateStore) -> dict[str, bytes]:
    """Every key's current value (the snapshot part of a watch)."""
    entries: dict[str, bytes] = {}
    watch = store.watch("")
    try:
        async for item in watch:
            if isinstance(item, InSync):
                break
            if item.value is not None:
                entries[item.key] = item.value
    finally:
        close = getattr(watch, "aclose", None)
        if close is not None:
            await close()
    return entries


class Watcher:
    def __init__(
        self,
        *,
        store: StateStore,
        source: Source,
        encode: Encoder,
        tracer: Tracer,
        metrics: WatcherMetrics,
        elector: LeaderElector | None = None,
        write_batch: int = 5000,
        on_synced: Callable[[], None] | None = None,
        on_standby: Callable[[], None] | None = None,
        freeze_gc_after_sync: bool = False,
    ) -> None:
        self._store = store
        self._source = source
        self._encode = encode
        self._tracer = tracer
        self.metrics = metrics
        self.elector = elector
        self._write_batch = write_batch
        self._on_synced = on_synced
        self._on_standby = on_standby
        self._freeze_gc = freeze_gc_after_sync  # process-wide: the service sets it, tests do not
        self.feed: Feed | None = None  # the current term's, for tests and status
        self.writer: KVWriter | None = None
        self.terms = 0
        self._bus_failures = 0
        self._backoff = Backoff(initial=0.2, factor=2.0, maximum=10.0)

    async def run(self) -> None:
        while True:
            if self.elector is not None:
                if self._on_standby is not None:
                    self._on_standby()
                await self.elector.acquire()
            try:
                async with asyncio.TaskGroup() as tg:
                    if self.elector is not None:
                        tg.create_task(self.elector.hold(), name="lease")
                    tg.create_task(self._term(), name="term")
            except* LeadershipLostError as group:
                log.warning("leadership lost (%s); back to standby", group.exceptions[0])
            except* BusUnavailable as group:
                # NATS is down (reading the bucket at the start of a term): the bus reconnects
                # by itself; start a fresh term from the bucket once it answers again.
                self._bus_failures += 1
                delay = self._backoff.delay(self._bus_failures)
                log.warning("term ended, bus unavailable (%s); retrying in %.2fs", group.exceptions[0], delay)
                await asyncio.sleep(delay)
            # (No cancellation check here: in 3.11 a TaskGroup whose child failed leaves a
            # stray cancel request on this task, so ``cancelling()`` would lie.)

    async def _term(self) -> None:
        self.terms += 1
        existing = await read_bucket(self._store)
        self._bus_failures = 0
        log.info(
            "leading (term %d): %d keys in %s to reconcile against",
            self.terms,
            len(existing),
            self._store.bucket,
        )
        state = MirrorState(self._encode)
        state.load(existing)
        feed = Feed(state, self.metrics)
        writer = KVWriter(
            self._store,
            feed,
            tracer=self._tracer,
            is_leader=self.elector.is_leader if self.elector is not None else _always,
            batch_size=self._write_batch,
        )
        self.feed, self.writer = feed, writer
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run(), name="kv-writer")
            tg.create_task(self._source.run(feed), name="source")
            tg.create_task(self._report_synced(feed, writer), name="synced")

    async def _report_synced(self, feed: Feed, writer: KVWriter) -> None:
        await feed.all_synced.wait()
        await writer.drained()
        log.info("all kinds in sync in %s", self._store.bucket)
        # The mirror of a large cluster is hundreds of thousands of long-lived objects; a full
        # cyclic-GC pass over them stalled event handling for tens of ms.  Nothing in it forms
        # cycles (refcounting frees it), so take it out of the collector's scans.
        if self._freeze_gc:
            gc.freeze()
        if self._on_synced is not None:
            self._on_synced()


def _always() -> bool:
    return True
