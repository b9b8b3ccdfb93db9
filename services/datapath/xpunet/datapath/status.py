"""What a datapath reports: the status record in ``xpunet-status`` and its OpenTelemetry metrics.

Key ``datapath.<node token>`` (``xpunet.ir.keys.node_token``) holds one
:class:`DatapathStatus` (wire schema ``status.datapath``): the intent revision
the target reflects, the target's generation, entries per table, the last
error, the last convergence latency and every rejected entry with the intent
it came from.  It is rewritten when it changes (at most every
``datapath.status_interval`` seconds) and kept on stop, so one can still see
what the node last programmed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from xpunet.ir.keys import node_token
from xpunet.wire import register

DATAPATH_STATUS_SCHEMA = "status.datapath"
MAX_REPORTED_REJECTIONS = 100  # the record stays small; the count says how many there are


def status_key(node: str) -> str:
    return f"datapath.{node_token(node)}"


@dataclass(frozen=True, slots=True)
class EntryRejection:
    """One entry the target refused (or that another writer's entry blocks)."""

    table: str
    origin: str  # the intent it came from, e.g. "endpoint shop/db", "service 1234 (...)"
    update: str  # INSERT / MODIFY / DELETE
    code: str  # gRPC code name, or "CONFLICT" for a key held by another writer
    message: str
    retrying: bool
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class DatapathStatus:
    node: str
    target: str  # "p4rt 127.0.0.1:9559 device 1"
    ready: bool
    reason: str = ""
    applied_revision: int = 0  # highest xpunet-intent revision reflected on the target
    generation: int = 0  # target generation last reconciled (changes on target restarts)
    entries: int = 0
    occupancy: Mapping[str, int] = field(default_factory=dict)  # table alias → xpunet entries
    pending: int = 0  # desired updates not yet acknowledged (rejected or waiting)
    rejected_count: int = 0
    rejected: tuple[EntryRejection, ...] = ()
    lowering_problems: tuple[str, ...] = ()
    last_error: str = ""
    last_error_at: float = 0.0
    convergence_ms: float = 0.0  # last intent write → target ack
    reconciles: int = 0
    updated_at: float = 0.0


register(DATAPATH_STATUS_SCHEMA, DatapathStatus)


class DatapathMetrics:
    """The datapath's instruments (one set per service instance, from its own meter)."""

    def __init__(self, meter: Meter, *, occupancy: Callable[[], Mapping[str, int]]) -> None:
        self._occupancy = occupancy
        self.convergence = meter.create_histogram(
            "xpunet_datapath_convergence_seconds",
            unit="s",
            description="intent KV write to target acknowledgement",
        )
        self.write_seconds = meter.create_histogram(
            "xpunet_datapath_write_seconds", unit="s", description="one apply pass: all phases written"
        )
        self.updates = meter.create_counter(
            "xpunet_datapath_updates_total", description="table updates acknowledged by the target"
        )
        self.write_errors = meter.create_counter(
            "xpunet_datapath_write_errors_total", description="updates rejected or writes failed, by code"
        )
        self.reconciles = meter.create_counter(
            "xpunet_datapath_reconciles_total", description="read-backs of the target (start, restarts)"
        )
        meter.create_observable_gauge(
            "xpunet_datapath_table_entries",
            callbacks=[self._observe_occupancy],
            description="xpunet entries per table on the target",
        )

    def _observe_occupancy(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"table": t}) for t, n in sorted(self._occupancy().items())]
