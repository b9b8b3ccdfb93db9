"""The P4Runtime target: the xpunet pipeline on any P4Runtime server (infrap4d, bmv2, softipu).

Implements :class:`xpunet.datapath.target.Target` over
:class:`xpunet.p4rt.client.P4RuntimeClient`:

* **generation** — increases whenever the datapath must read the target back:
  a new stream (the target or the connection restarted), becoming primary
  after being backup, a pipeline that had to be installed (its tables are
  empty), a Write that finds no pipeline;
* **pipeline** — pushed only when the installed cookie differs from ours
  (RECONCILE_AND_COMMIT keeps the entries; a target without a pipeline gets
  VERIFY_AND_COMMIT), so a datapath restart leaves forwarding alone;
* **apply** — one Write call sequence per phase, CONTINUE_ON_ERROR, so the
  per-update rejections come back and the rest of the phase still applies;
  a phase is encoded straight to wire bytes (:meth:`EntryCodec.encode_update`)
  a batch at a time while the previous batch is in flight, and the next phase
  starts only once every batch of the previous one is acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection, Mapping, Sequence

from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from xpunet.datapath.p4rt_codec import CodecError, EntryCodec
from xpunet.datapath.target import ApplyResult, Rejected, TargetEntries
from xpunet.p4rt.client import Arbitration, ClientSettings, P4RuntimeClient, Role, pipeline_cookie
from xpunet.p4rt.errors import RetryableTargetError, TargetError
from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.pipeline.p4info import load_p4info
from xpunet.pipeline.schema import DROP_REASONS, SCHEMA

log = logging.getLogger(__name__)

# The pipeline's indirect counter of drops, one cell per drop reason.
_DROP_COUNTER_ID = next(c.id for c in SCHEMA.counters if c.name.endswith(".drop_reasons"))
_REASON_BY_INDEX = {i: r for r, i in DROP_REASONS.items()}


class P4RuntimeTarget:
    """The datapath's view of one P4Runtime device."""

    kind = "p4rt"

    def __init__(
        self,
        settings: ClientSettings,
        *,
        p4info: p4info_pb2.P4Info | None = None,
        codec: EntryCodec | None = None,
    ) -> None:
        self.settings = settings
        self.p4info = p4info if p4info is not None else load_p4info()
        self.cookie = pipeline_cookie(self.p4info)
        self.codec = codec or EntryCodec()
        self.client = P4RuntimeClient(settings, on_arbitration=self._on_arbitration)
        self._generation = 0
        self._primary_terms = 0  # times this client became primary
        self._ready_key: tuple[int, int] | None = (
            None  # (stream epoch, primary term) the pipeline was checked in
        )
        self._last_role = Role.DISCONNECTED

    @property
    def description(self) -> str:
        return f"{self.settings.address} device {self.settings.device_id}"

    @property
    def arbitration(self) -> Arbitration:
        return self.client.arbitration

    def _on_arbitration(self, arbitration: Arbitration) -> None:
        if arbitration.role is Role.PRIMARY and self._last_role is not Role.PRIMARY:
            self._primary_terms += 1
        self._last_role = arbitration.role

    def _key(self) -> tuple[int, int]:
        return (self.client.arbitration.epoch, self._primary_terms)

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    # ------------------------------------------------------------- readiness

    def is_ready(self, generation: int) -> bool:
        return (
            generation == self._generation
            and self.client.arbitration.role is Role.PRIMARY
            and self._ready_key == self._key()
        )

    async def wait_changed(self, generation: int) -> None:
        await self.client.wait_for(lambda _: not self.is_ready(generation))

    async def wait_ready(self) -> int:
        while True:
            await self.client.wait_primary()
            key = self._key()
            if self._ready_key == key:
                return self._generation
            try:
                installed = await self.client.get_pipeline_cookie()
                if installed != self.cookie:
                    action = await self.client.set_pipeline(self.p4info, cookie=self.cookie)
                    log.info("p4rt %s: pipeline %s", self.description, action.value)
            except RetryableTargetError as exc:
                # Lost the primary role or the stream meanwhile: wait for the next arbitration.
                log.warning("p4rt %s: pipeline check failed: %s", self.description, exc)
                await asyncio.sleep(self.settings.reconnect_min)
                continue
            if self._key() != key:
                continue  # the stream or role changed while we checked: check again
            self._ready_key = key
            self._generation += 1
            return self._generation

    def _lost_pipeline(self) -> None:
        # The target answered "no pipeline" (e.g. it restarted and the stream reconnected quickly).
        self._ready_key = None

    # ------------------------------------------------------------------ read

    async def read_entries(self, desired: Sequence[TableEntry] = ()) -> TargetEntries:
        queries = []
        for table_id in self.codec.written_table_ids():
            query = p4runtime_pb2.Entity()
            query.table_entry.table_id = table_id
            queries.append(query)
        owned: list[TableEntry] = []
        foreign: set[EntryKey] = set()
        try:
            async for entity in self.client.read(queries):
                msg = entity.table_entry
                try:
                    if self.codec.is_owned(msg):
                        owned.append(self.codec.decode(msg))
                    else:
                        foreign.add(self.codec.decode_key(msg))
                except CodecError as exc:
                    log.warning("p4rt %s: read-back entry left alone: %s", self.description, exc)
        except TargetError as exc:
            if exc.code == "FAILED_PRECONDITION":
                self._lost_pipeline()
            raise
        return TargetEntries(tuple(owned), frozenset(foreign))

    async def read_counters(
        self, tables: Collection[str] | None = None
    ) -> Mapping[EntryKey, tuple[int, int]]:
        """One Read: every direct counter, or (``tables``) only those tables' (not the Maglev buckets)."""
        if tables is None:
            found = await self.client.read_direct_counters(0)
        else:
            queries = []
            for table in SCHEMA.tables:
                if table.direct_counter and table.alias in tables:
                    q = p4runtime_pb2.Entity()
                    q.direct_counter_entry.table_entry.table_id = table.id
                    queries.append(q)
            found = [entity.direct_counter_entry async for entity in self.client.read(queries)]
        out: dict[EntryKey, tuple[int, int]] = {}
        for dce in found:
            try:
                key = self.codec.decode_key(dce.table_entry)
            except CodecError:
                continue
            out[key] = (dce.data.packet_count, dce.data.byte_count)
        return out

    async def read_drop_counters(self) -> Mapping[str, tuple[int, int]]:
        """The pipeline's ``drop_reasons`` counter, indexed by reason."""
        out: dict[str, tuple[int, int]] = {}
        for ce in await self.client.read_counters(_DROP_COUNTER_ID):
            reason = _REASON_BY_INDEX.get(ce.index.index)
            if reason is not None:
                out[reason] = (ce.data.packet_count, ce.data.byte_count)
        return out

    # ----------------------------------------------------------------- write

    async def apply(self, phases: Sequence[Sequence[Update]]) -> ApplyResult:
        sent = 0
        rejected: list[Rejected] = []
        for phase in phases:
            if not phase:
                continue
            try:
                # Encoded lazily, a batch at a time, while the previous batch is in flight: memory stays
                # bounded by two batches however big the phase (a node from empty is one huge phase).
                await self.client.write_encoded(map(self.codec.encode_update, phase))
            except TargetError as exc:
                if not exc.updates:
                    if exc.code == "FAILED_PRECONDITION":
                        self._lost_pipeline()
                    raise
                for u in exc.updates:
                    rejected.append(Rejected(phase[u.index], u.code, u.message, u.retryable))
            sent += len(phase)
        return ApplyResult(sent, tuple(rejected))


class EmbeddedSoftIpuTarget(P4RuntimeTarget):
    """A softipu started in this process, driven over real gRPC on loopback (``target: softipu``).

    The node's software xPU for development, ``xpunetctl up`` and nodes without
    hardware: same client, same P4Runtime path as a remote device.
    """

    kind = "softipu"

    def __init__(self, settings: ClientSettings, *, listen: str = "127.0.0.1:0") -> None:
        super().__init__(settings)
        self.listen = listen
        from xpunet.datapath.softipu.server import SoftIpu

        # The datapath in this process already freezes the (shared) heap after big passes.
        self.softipu = SoftIpu(device_id=settings.device_id, gc_freeze_after=0)

    async def start(self) -> None:
        port = await self.softipu.start(self.listen)
        host = self.listen.rsplit(":", 1)[0]
        self.settings = dataclasses.replace(self.settings, address=f"{host}:{port}", tls=None)
        self.client = P4RuntimeClient(self.settings, on_arbitration=self._on_arbitration)
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.softipu.stop()
