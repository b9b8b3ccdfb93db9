"""The datapath's counter poll: reads the target's counters every ``datapath.counter_interval`` seconds.

Each poll reads, through the :class:`~xpunet.datapath.target.Target`
Protocol, the direct counters of the ACL and frontend tables
(``read_counters(REPORTED_TABLES)``; P4Runtime: one Read of those tables only,
not the Maglev buckets) and the drop counters (``read_drop_counters()``;
P4Runtime: the ``drop_reasons`` indirect counter; kernel: the named
``drop_<reason>``/``deny_<direction>`` counters), folds them into
:class:`~xpunet.datapath.counters.CounterTotals` (per-origin running totals,
pure), publishes the totals in ``xpunet-status`` key
``counters.datapath.<node token>`` (what ``xpunetctl counters`` prints) and
exposes them as OpenTelemetry counters (observed at each metric export).

A failed read (target down, restarting, not primary yet) is logged and the
next period tries again; the totals keep their values meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from xpunet.bus.api import StateStore
from xpunet.bus.errors import BusError
from xpunet.datapath.counters import (
    REPORTED_TABLES,
    CounterReport,
    CounterTotals,
    status_key,
)
from xpunet.datapath.target import Target
from xpunet.ir.keys import node_token
from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.wire import encode_object

log = logging.getLogger(__name__)


class CounterPoller:
    """Polls one target's counters into running totals, a status record and metrics."""

    def __init__(
        self,
        *,
        node: str,
        target: Target,
        desired: Callable[[], Mapping[EntryKey, TableEntry]],
        status: StateStore | None = None,
        meter: Meter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.target = target
        self._desired = desired
        self._status = status
        self._clock = clock
        self.totals = CounterTotals()
        self.last_error = ""
        self.updated_at = 0.0
        self.drops_supported = True
        self.failures = 0
        if meter is not None:
            self._instruments(meter)

    # ---------------------------------------------------------------- poll

    async def poll(self) -> bool:
        """One read of the target folded into the totals, then published; False when the read failed."""
        try:
            counters = await self.target.read_counters(REPORTED_TABLES)
            drops = await self.target.read_drop_counters()
        except Exception as exc:  # any target failure: log, keep the totals, retry next period
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the gRPC client turns a cancelled read into an error: we are stopping
            self.failures += 1
            self.last_error = f"counter read from {self.target.description} failed: {exc}"
            log.warning("datapath %s: %s (retried next period)", self.node, self.last_error)
            await self.publish()
            return False
        desired = self._desired()

        def origin_of(key: EntryKey) -> tuple[str, str] | None:
            e = desired.get(key)
            return None if e is None else (e.alias, e.origin)

        self.totals.fold(counters, origin_of, drops)
        self.drops_supported = drops is not None
        self.last_error = ""
        self.updated_at = self._clock()
        await self.publish()
        return True

    def report(self) -> CounterReport:
        return self.totals.report(
            self.node,
            f"{self.target.kind} {self.target.description}",
            updated_at=self.updated_at,
            last_error=self.last_error,
            drops_supported=self.drops_supported,
        )

    async def publish(self) -> None:
        if self._status is None:
            return
        try:
            await self._status.put(status_key(node_token(self.node)), encode_object(self.report()))
        except BusError as exc:
            log.warning("datapath %s: counter report not written: %s", self.node, exc)

    async def run(self, interval: float) -> None:
        """Poll every ``interval`` seconds until cancelled (the first poll after one interval)."""
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(interval)
            await self.poll()
            if task is not None and task.cancelling():
                # A library below (gRPC, the bus) turned our cancellation into its own error.
                raise asyncio.CancelledError

    # ------------------------------------------------------------- metrics

    def _instruments(self, meter: Meter) -> None:
        t = self.totals

        def policy(i: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def cb(_: CallbackOptions) -> Iterable[Observation]:
                return [
                    Observation(c[i], {"namespace": k[0], "policy": k[1], "direction": k[2], "verdict": k[3]})
                    for k, c in sorted(t.policy_metric().items())
                ]

            return cb

        def service(i: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def cb(_: CallbackOptions) -> Iterable[Observation]:
                return [
                    Observation(c[i], {"namespace": k[0], "service": k[1], "port": k[2]})
                    for k, c in sorted(t.service_metric().items())
                ]

            return cb

        def drops(i: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def cb(_: CallbackOptions) -> Iterable[Observation]:
                return [
                    Observation(c[i], {"table": k[0], "reason": k[1]})
                    for k, c in sorted(t.drop_metric().items())
                ]

            return cb

        for name, what, cb in (
            (
                "xpunet_datapath_policy_packets_total",
                "packets by NetworkPolicy, direction, verdict",
                policy(0),
            ),
            ("xpunet_datapath_policy_bytes_total", "bytes by NetworkPolicy, direction, verdict", policy(1)),
            ("xpunet_datapath_service_packets_total", "new flows' packets at service frontends", service(0)),
            ("xpunet_datapath_service_bytes_total", "bytes at service frontends", service(1)),
            ("xpunet_datapath_default_drops_total", "packets dropped by default actions, by table", drops(0)),
            ("xpunet_datapath_default_drop_bytes_total", "bytes dropped by default actions", drops(1)),
        ):
            meter.create_observable_counter(name, callbacks=[cb], description=what)
