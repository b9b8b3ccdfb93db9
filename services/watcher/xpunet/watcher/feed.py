"""Where sources deliver: the mirror state plus the clock, the writer's wake-up, logs and metrics.

Sources (the API informers, the manifest directory) call these methods; each
call updates ``MirrorState`` synchronously and wakes the KV writer.  Malformed
objects are logged here, once, with their name and the reason, and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xpunet.model import Kind
from xpunet.watcher.metrics import WatcherMetrics
from xpunet.watcher.state import MirrorState, Normalised

log = logging.getLogger(__name__)


class Feed:
    def __init__(
        self, state: MirrorState, metrics: WatcherMetrics, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.clock = clock
        self.wake = asyncio.Event()  # set when there is something to write
        self.synced: set[Kind] = set()  # kinds whose initial list is queued (marker included)
        self.all_synced = asyncio.Event()

    def upsert(self, kind: Kind, raw: Mapping[str, Any]) -> None:
        self.metrics.event(kind, "upsert")
        self.state.upsert(kind, raw, now=self.clock())
        self._after()

    def apply_many(self, kind: Kind, items: Iterable[Normalised]) -> None:
        """Objects of a list page normalised elsewhere (``decode_list_page``)."""
        now = self.clock()
        n = 0
        for item in items:
            self.state.apply(kind, item, now=now)
            n += 1
        self.metrics.event(kind, "list", n)
        self._after()

    def delete(self, kind: Kind, raw: Mapping[str, Any]) -> None:
        self.metrics.event(kind, "delete")
        self.state.delete(kind, raw, now=self.clock())
        self._after()

    def forget(self, kind: Kind, keys: Iterable[str]) -> None:
        self.state.forget(kind, keys, now=self.clock())
        self._after()

    def begin_relist(self, kind: Kind) -> None:
        self.state.begin_relist(kind)

    def end_relist(self, kind: Kind, *, resource_version: str) -> None:
        """The full list of ``kind`` is fed: delete what vanished, queue the in-sync marker."""
        now = self.clock()
        stale = self.state.end_relist(kind, resource_version=resource_version, now=now)
        if stale:
            log.info("%s: relist at resourceVersion %s removes %d stale keys", kind, resource_version, stale)
        self.mark_synced(kind, resource_version=resource_version)

    def mark_synced(self, kind: Kind, *, resource_version: str = "") -> None:
        self.state.mark_synced(kind, resource_version=resource_version, now=self.clock())
        self.synced.add(kind)
        if len(self.synced) == len(Kind):
            self.all_synced.set()
        self._after()

    def _after(self) -> None:
        if self.state.rejections:
            for r in self.state.rejections:
                log.warning("skipping malformed %s %s: %s", r.kind, r.ref, r.reason)
                self.metrics.malformed(r.kind)
            self.state.rejections.clear()
        if self.state.pending:
            self.wake.set()
