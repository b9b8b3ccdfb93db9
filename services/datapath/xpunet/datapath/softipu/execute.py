"""softipu executes packets: the reference interpreter over the entries installed through P4Runtime.

:class:`PacketExecutor` keeps one :class:`xpunet.pipeline.interpreter.Pipeline`
per device, mirrored from softipu's tables: after any Write (softipu counts
them in ``SoftIpu.write_generation``) or a pipeline change, the next packet
first brings the interpreter's entries up to date with the difference (its
learned conntrack and affinity state survives, as on a real target).  Every
entry a packet hits feeds that entry's direct counter in softipu, so a
P4Runtime Read with ``counter_data`` (or of DirectCounterEntry) returns what
the packets did, per ACL rule, per route, per frontend; a dropped packet feeds
the ``drop_reasons`` counter at its reason's index.

In-process API: ``executor.process(Packet(...), now=...)`` returns the
interpreter's :class:`~xpunet.pipeline.interpreter.Result` (verdict and
hits).  Only the xpunet pipeline is executed; a device running another P4Info
raises :class:`ExecutionError`.  PacketOut over the stream is not parsed (raw
frames are not modelled); see docs/datapath.md.
"""

from __future__ import annotations

import logging

from xpunet.datapath.p4rt_codec import CodecError, EntryCodec
from xpunet.datapath.softipu.entries import MatchKey
from xpunet.datapath.softipu.server import SoftIpu
from xpunet.datapath.softipu.state import DeviceState
from xpunet.pipeline.entries import EntryKey, TableEntry
from xpunet.pipeline.interpreter import Drop, Packet, Pipeline, Result
from xpunet.pipeline.schema import DROP_REASONS, SCHEMA

log = logging.getLogger(__name__)

# The indirect counter a drop feeds, indexed by reason (the P4 program counts every drop there).
_DROP_COUNTER_ID = next(c.id for c in SCHEMA.counters if c.name.endswith(".drop_reasons"))


class ExecutionError(RuntimeError):
    """The device cannot execute packets (no pipeline, or not the xpunet pipeline)."""


class PacketExecutor:
    def __init__(self, softipu: SoftIpu, codec: EntryCodec | None = None) -> None:
        self.softipu = softipu
        self.codec = codec or EntryCodec()
        self.pipeline = Pipeline()
        self._state: DeviceState | None = None
        self._generation = -1
        # Pipeline entry key → (table id, softipu match key, the entry), to feed counters.
        self._index: dict[EntryKey, tuple[int, MatchKey, TableEntry]] = {}

    def sync(self) -> None:
        """Bring the interpreter's entries to softipu's (only the difference is written)."""
        state = self.softipu.state
        if state is None:
            raise ExecutionError("softipu has no forwarding pipeline: nothing to execute")
        if state is self._state and self.softipu.write_generation == self._generation:
            return
        if state is not self._state:
            self.pipeline = Pipeline()  # a new pipeline commit: learned state goes too
            self._index = {}
        index: dict[EntryKey, tuple[int, MatchKey, TableEntry]] = {}
        for table_id, table in state.tables.items():
            for mkey, msg in table.entries.items():
                try:
                    entry = self.codec.decode(msg)
                except CodecError as exc:
                    raise ExecutionError(
                        f"softipu runs a pipeline the interpreter does not know: {exc}"
                    ) from exc
                index[entry.key] = (table_id, mkey, entry)
        for key, (_, _, old) in self._index.items():
            if key not in index:
                self.pipeline.write("DELETE", old)
        for key, (_, _, new) in index.items():
            before = self._index.get(key)
            if before is None:
                self.pipeline.write("INSERT", new)
            elif (before[2].action, before[2].params) != (new.action, new.params):
                self.pipeline.write("MODIFY", new)
        self._index = index
        self._state = state
        self._generation = self.softipu.write_generation

    def process(self, packet: Packet, *, now: float) -> Result:
        """Walk ``packet`` through the installed entries; count every entry hit."""
        self.sync()
        state = self._state
        assert state is not None  # sync() set it
        result = self.pipeline.process(packet, now=now)
        for hit in result.hits:
            if hit.entry is None:
                continue
            found = self._index.get(hit.entry.key)
            if found is not None:
                state.count_hit(found[0], found[1], packet.length)
        if isinstance(result.verdict, Drop):
            cells = state.counter_cells.get(_DROP_COUNTER_ID)
            if cells is not None:  # the xpunet pipeline's drop_reasons: [bytes, packets] per reason
                cell = cells.setdefault(DROP_REASONS[result.verdict.reason], [0, 0])
                cell[0] += packet.length
                cell[1] += 1
        return result
