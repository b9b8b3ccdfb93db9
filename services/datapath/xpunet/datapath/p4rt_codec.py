"""Pipeline table entries ↔ P4Runtime ``TableEntry`` messages (the xpunet P4Info's ids).

Encoding is the Write hot path (a node from empty is hundreds of thousands of
entries), so each table's and action's ids are looked up once into small plans
and values are encoded directly into the message fields.

**Ownership.**  Every entry xpunet writes carries ``controller_metadata =
XPUNET_COOKIE`` (P4Runtime: an opaque 64-bit value the server stores and
returns on Read).  A read-back entry without it was written by someone else:
the datapath reports a conflict when it wants that key and never modifies or
deletes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p4.v1 import p4runtime_pb2

from xpunet.p4rt.schema import decode_uint
from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import Exact, FieldMatch, Lpm, Optional, Range, TableEntry, Ternary
from xpunet.pipeline.schema import SCHEMA, Schema

# "xpunet" in ASCII: the controller_metadata of every entry the datapath writes.
XPUNET_COOKIE = int.from_bytes(b"xpunet", "big")

_TYPE = {
    "INSERT": p4runtime_pb2.Update.INSERT,
    "MODIFY": p4runtime_pb2.Update.MODIFY,
    "DELETE": p4runtime_pb2.Update.DELETE,
}


def _bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


class CodecError(ValueError):
    """A message does not fit the xpunet pipeline (names the table, field or action id)."""


@dataclass(frozen=True, slots=True)
class _TablePlan:
    id: int
    name: str
    field_ids: dict[str, int]
    field_by_id: dict[int, tuple[str, str, int]]  # id → (name, match kind, key order)
    learned: bool
    direct_counter: bool


@dataclass(frozen=True, slots=True)
class _ActionPlan:
    id: int
    name: str
    param_ids: dict[str, int]
    param_by_id: dict[int, tuple[str, int]]  # id → (name, order)


class EntryCodec:
    """Converts between :class:`TableEntry` and ``p4.v1.TableEntry`` for one pipeline schema."""

    def __init__(self, schema: Schema = SCHEMA) -> None:
        self.schema = schema
        self._tables: dict[str, _TablePlan] = {}
        self._tables_by_id: dict[int, _TablePlan] = {}
        for t in schema.tables:
            plan = _TablePlan(
                t.id,
                t.name,
                {f.name: f.id for f in t.key},
                {f.id: (f.name, f.match_kind, i) for i, f in enumerate(t.key)},
                t.learned,
                t.direct_counter is not None,
            )
            self._tables[t.name] = plan
            self._tables_by_id[t.id] = plan
        self._actions: dict[str, _ActionPlan] = {}
        self._actions_by_id: dict[int, _ActionPlan] = {}
        for a in schema.actions:
            aplan = _ActionPlan(
                a.id,
                a.name,
                {p.name: p.id for p in a.params},
                {p.id: (p.name, i) for i, p in enumerate(a.params)},
            )
            self._actions[a.name] = aplan
            self._actions_by_id[a.id] = aplan

    # ----------------------------------------------------------------- encode

    def written_table_ids(self) -> list[int]:
        """Ids of the tables xpunet writes (learned tables belong to the target)."""
        return [p.id for p in self._tables.values() if not p.learned]

    def counted_table_ids(self) -> list[int]:
        return [p.id for p in self._tables.values() if p.direct_counter and not p.learned]

    def table_entry(self, entry: TableEntry, out: p4runtime_pb2.TableEntry, *, with_action: bool) -> None:
        """Fill ``out`` with ``entry`` (the match always; the action unless deleting)."""
        plan = self._tables[entry.table]
        out.table_id = plan.id
        ids = plan.field_ids
        for name, m in entry.match:
            fm = out.match.add()
            fm.field_id = ids[name]
            if isinstance(m, Exact):
                fm.exact.value = _bytes(m.value)
            elif isinstance(m, Lpm):
                fm.lpm.value = _bytes(m.value)
                fm.lpm.prefix_len = m.prefix_len
            elif isinstance(m, Ternary):
                fm.ternary.value = _bytes(m.value)
                fm.ternary.mask = _bytes(m.mask)
            elif isinstance(m, Range):
                fm.range.low = _bytes(m.low)
                fm.range.high = _bytes(m.high)
            else:
                fm.optional.value = _bytes(m.value)
        if entry.priority:
            out.priority = entry.priority
        out.controller_metadata = XPUNET_COOKIE
        if with_action:
            aplan = self._actions[entry.action]
            action = out.action.action
            action.action_id = aplan.id
            pids = aplan.param_ids
            for name, value in entry.params:
                p = action.params.add()
                p.param_id = pids[name]
                p.value = _bytes(value)

    def update(self, update: Update) -> p4runtime_pb2.Update:
        out = p4runtime_pb2.Update(type=_TYPE[update.kind])
        self.table_entry(update.entry, out.entity.table_entry, with_action=update.kind != "DELETE")
        return out

    def updates(self, updates: Iterable[Update]) -> list[p4runtime_pb2.Update]:
        return [self.update(u) for u in updates]

    # ----------------------------------------------------------------- decode

    def decode(self, msg: p4runtime_pb2.TableEntry) -> TableEntry:
        """A read-back entry as a pipeline entry (``origin`` empty); raises CodecError if it does not fit."""
        plan = self._tables_by_id.get(msg.table_id)
        if plan is None:
            raise CodecError(f"table id {msg.table_id:#x} is not in the xpunet pipeline")
        fields: list[tuple[int, str, FieldMatch]] = []
        for fm in msg.match:
            spec = plan.field_by_id.get(fm.field_id)
            if spec is None:
                raise CodecError(f"{plan.name}: no match field id {fm.field_id}")
            name, kind, order = spec
            which = fm.WhichOneof("field_match_type")
            m: FieldMatch
            if which == "exact":
                m = Exact(decode_uint(fm.exact.value))
            elif which == "lpm":
                m = Lpm(decode_uint(fm.lpm.value), fm.lpm.prefix_len)
            elif which == "ternary":
                m = Ternary(decode_uint(fm.ternary.value), decode_uint(fm.ternary.mask))
            elif which == "range":
                m = Range(decode_uint(fm.range.low), decode_uint(fm.range.high))
            elif which == "optional":
                m = Optional(decode_uint(fm.optional.value))
            else:
                raise CodecError(f"{plan.name}.{name}: unsupported match {which}")
            if which != kind:
                raise CodecError(f"{plan.name}.{name}: {which} match on a {kind} field")
            fields.append((order, name, m))
        fields.sort(key=lambda f: f[0])
        which_action = msg.action.WhichOneof("type")
        if which_action != "action":
            raise CodecError(f"{plan.name}: entry has no direct action ({which_action})")
        aplan = self._actions_by_id.get(msg.action.action.action_id)
        if aplan is None:
            raise CodecError(f"{plan.name}: action id {msg.action.action.action_id:#x} is unknown")
        params: list[tuple[int, str, int]] = []
        for p in msg.action.action.params:
            pspec = aplan.param_by_id.get(p.param_id)
            if pspec is None:
                raise CodecError(f"{aplan.name}: no parameter id {p.param_id}")
            params.append((pspec[1], pspec[0], decode_uint(p.value)))
        params.sort(key=lambda p: p[0])
        return TableEntry(
            plan.name,
            tuple((n, m) for _, n, m in fields),
            aplan.name,
            tuple((n, v) for _, n, v in params),
            msg.priority,
        )

    def decode_key(
        self, msg: p4runtime_pb2.TableEntry
    ) -> tuple[str, tuple[tuple[str, FieldMatch], ...], int]:
        """Only the key of a read-back entry (for foreign entries and counters, whatever their action)."""
        plan = self._tables_by_id.get(msg.table_id)
        if plan is None:
            raise CodecError(f"table id {msg.table_id:#x} is not in the xpunet pipeline")
        stripped = p4runtime_pb2.TableEntry()
        stripped.table_id = msg.table_id
        stripped.match.extend(msg.match)
        stripped.priority = msg.priority
        # Reuse decode's match handling with a placeholder action of the table.
        first_action = self.schema.table(plan.name).actions[0].action
        stripped.action.action.action_id = self._actions[first_action].id
        return self.decode(stripped).key

    @staticmethod
    def is_owned(msg: p4runtime_pb2.TableEntry) -> bool:
        return msg.controller_metadata == XPUNET_COOKIE
