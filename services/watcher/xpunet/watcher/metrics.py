"""The watcher's OpenTelemetry instruments, created once from the service's meter."""

from __future__ import annotations

from opentelemetry.metrics import Meter

from xpunet.model import Kind


class WatcherMetrics:
    """Events per kind (rate it for events/s), relists, watch restarts, malformed objects, event→KV lag."""

    def __init__(self, meter: Meter) -> None:
        self._events = meter.create_counter(
            "xpunet.watcher.events", unit="{event}", description="Source events received, by kind and type"
        )
        self._relists = meter.create_counter(
            "xpunet.watcher.relists", unit="{list}", description="Full lists, by kind and reason"
        )
        self._restarts = meter.create_counter(
            "xpunet.watcher.watch_restarts", unit="{restart}", description="List/watch failures retried"
        )
        self._malformed = meter.create_counter(
            "xpunet.watcher.malformed_objects", unit="{object}", description="Objects skipped as malformed"
        )
        self._writes = meter.create_counter(
            "xpunet.watcher.kv_writes", unit="{write}", description="KV puts and deletes, by operation"
        )
        self._lag = meter.create_histogram(
            "xpunet.watcher.event_to_kv_lag",
            unit="s",
            description="From the source event to the KV write being acknowledged",
        )

    def event(self, kind: Kind, etype: str, n: int = 1) -> None:
        self._events.add(n, {"kind": kind.value, "type": etype})

    def relist(self, kind: Kind, reason: str) -> None:
        self._relists.add(1, {"kind": kind.value, "reason": reason})

    def watch_restart(self, kind: Kind, reason: str) -> None:
        self._restarts.add(1, {"kind": kind.value, "reason": reason})

    def malformed(self, kind: Kind) -> None:
        self._malformed.add(1, {"kind": kind.value})

    def malformed_file(self, n: int = 1) -> None:
        self._malformed.add(n, {"kind": "manifest"})

    def written(self, puts: int, deletes: int) -> None:
        if puts:
            self._writes.add(puts, {"op": "put"})
        if deletes:
            self._writes.add(deletes, {"op": "delete"})

    def lag(self, seconds: float) -> None:
        self._lag.record(seconds)
