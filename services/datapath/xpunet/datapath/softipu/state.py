"""softipu's forwarding state: the installed pipeline and its tables, profiles, counters.

Tables are dicts keyed by canonical match keys (see :mod:`.entries`), holding
each entry as its serialised ``p4.v1.TableEntry`` (compact, and out of the
cyclic GC's way); direct counters sit beside them in a dict with the same keys,
a cell made only once an entry counts something.  :meth:`DeviceState.write` applies a WriteRequest's
updates with the spec's semantics and returns one ``google.rpc`` code and
message per update; :meth:`DeviceState.read` yields the entities a ReadRequest
selects (wildcards included).  Single-threaded by design: the asyncio server
calls it between awaits, so a batch is applied atomically with respect to reads
and packet execution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from xpunet.datapath.softipu.entries import (
    Canonicaliser,
    EntityError,
    KeyPlan,
    MatchKey,
    canonicalise_match,
    check_action,
    check_params,
    fast_action_ok,
    fast_key,
    invalid,
    match_key,
    table_of,
)
from xpunet.datapath.softipu.wirekey import TYPE_OFFSET, UPDATE_HEAD, WirePlan
from xpunet.p4rt.schema import PipelineSchema, TableSpec
from xpunet.p4rt.wire import LENGTH_DELIMITED, tag, varint

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

_INSERT = p4runtime_pb2.Update.INSERT
_MODIFY = p4runtime_pb2.Update.MODIFY
_DELETE = p4runtime_pb2.Update.DELETE
OK = code_pb2.OK

UpdateResult = tuple[int, str]  # (google.rpc code, message)
_ZERO_CELL = (0, 0)
_TABLE_ENTRY_TAG = tag(p4runtime_pb2.Entity, "table_entry", LENGTH_DELIMITED)
_parse_entity = p4runtime_pb2.Entity.FromString
_OK_RESULT: UpdateResult = (OK, "")


@dataclass(slots=True)
class TableState:
    spec: TableSpec
    plan: KeyPlan
    wire: WirePlan | None  # the regex fast path, for exact-match direct tables
    # Each entry as its serialised p4.v1.TableEntry (canonical values, no counter data): a few dozen
    # bytes instead of a parsed message (~1 KB with its arena), and invisible to the cyclic GC, which
    # would otherwise walk every entry in each full collection.
    stored: dict[MatchKey, bytes] = field(default_factory=dict)
    # Direct counter cells, [bytes, packets], made on the first count: an entry without one reads 0/0.
    counters: dict[MatchKey, list[int]] = field(default_factory=dict)
    # None: the P4Info's initial default action is in force.
    default_action: p4runtime_pb2.TableAction | None = None

    @property
    def entries(self) -> Mapping[MatchKey, p4runtime_pb2.TableEntry]:
        """The entries as messages, parsed on access (for readers off the Write path)."""
        return ParsedEntries(self.stored)


class ParsedEntries(Mapping[MatchKey, p4runtime_pb2.TableEntry]):
    """A read-only view of a table's stored entries that parses each one when it is looked at."""

    __slots__ = ("_stored",)

    def __init__(self, stored: dict[MatchKey, bytes]) -> None:
        self._stored = stored

    def __getitem__(self, key: MatchKey) -> p4runtime_pb2.TableEntry:
        return _parse(self._stored[key])

    def __iter__(self) -> Iterator[MatchKey]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)


_parse = p4runtime_pb2.TableEntry.FromString


@dataclass(slots=True)
class ProfileState:
    members: dict[int, p4runtime_pb2.ActionProfileMember] = field(default_factory=dict)
    groups: dict[int, p4runtime_pb2.ActionProfileGroup] = field(default_factory=dict)
    member_refs: dict[int, int] = field(default_factory=dict)  # member id -> groups/entries using it
    group_refs: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class Pipeline:
    p4info: p4info_pb2.P4Info
    schema: PipelineSchema
    device_config: bytes
    cookie: int


class DeviceState:
    """The tables of one device under one pipeline."""

    def __init__(
        self, pipeline: Pipeline, *, strict_bytestrings: bool = False, wire_path: bool = True
    ) -> None:
        self.pipeline = pipeline
        self.schema = pipeline.schema
        self.strict = strict_bytestrings
        self.tables: dict[int, TableState] = {
            t.id: TableState(
                t, KeyPlan(self.schema, t), WirePlan(self.schema, t) if WirePlan.applies_to(t) else None
            )
            for t in self.schema.tables
        }
        # Tables on the wire fast path, by the varint of their id (as it appears in a serialised entry).
        # (``wire_path=False`` sends everything the full way: tests compare the two.)
        self._wire_tables = {
            varint(t.spec.id): t for t in self.tables.values() if t.wire is not None and wire_path
        }
        self.profiles: dict[int, ProfileState] = {p.id: ProfileState() for p in self.schema.action_profiles}
        self.counter_cells: dict[int, dict[int, list[int]]] = {c.id: {} for c in self.schema.counters}
        # Every table whose entries point at an action profile, by profile.
        self._profile_of_table = {
            t.id: t.implementation_id for t in self.schema.tables if t.implementation_id
        }

    # ------------------------------------------------------------------ write

    def write(self, updates: Iterable[p4runtime_pb2.Update], *, rollback: bool) -> list[UpdateResult]:
        """Apply ``updates`` in order; one result per update.

        With ``rollback`` (ROLLBACK_ON_ERROR / DATAPLANE_ATOMIC) a failure undoes
        every update of the batch, and the updates that had succeeded report
        ABORTED.
        """
        undo: list[Callable[[], None]] | None = [] if rollback else None
        results: list[UpdateResult] = []
        failed = False
        wire = self._write_wire
        for update in updates:
            try:
                if not wire(update, undo):
                    self._apply(update, undo)
            except EntityError as exc:
                results.append((exc.code, exc.message))
                failed = True
            else:
                results.append(_OK_RESULT)
        if failed and undo is not None:
            for step in reversed(undo):
                step()
            results = [(code_pb2.ABORTED, "rolled back") if r[0] == OK else r for r in results]
        return results

    def _write_wire(self, update: p4runtime_pb2.Update, undo: list[Callable[[], None]] | None) -> bool:
        """Apply a plain exact-match table update from its serialised form; False: not that kind."""
        data = update.SerializeToString()
        head = UPDATE_HEAD.match(data)
        if head is None:
            return False
        state = self._wire_tables.get(head.group("table"))
        if state is None:
            return False
        wire = state.wire
        assert wire is not None  # only such tables are in _wire_tables
        found = wire.pattern.fullmatch(data, head.end())
        if found is None:
            return False
        utype = data[TYPE_OFFSET]
        key = found.group("match")
        stored = state.stored
        old = stored.get(key)
        spec = state.spec
        if utype == _DELETE:
            if old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"table {spec.name}: no such entry")
            del stored[key]
            cell = state.counters.pop(key, None)
            if undo is not None:
                undo.append(lambda: self._restore(state, key, old, cell))
            return True
        if found.start("action") < 0:
            return False  # no action: the full path says what is wrong
        if old is None:
            if utype == _MODIFY:
                raise EntityError(code_pb2.NOT_FOUND, f"table {spec.name}: no such entry")
            if spec.size and len(stored) >= spec.size:
                raise EntityError(
                    code_pb2.RESOURCE_EXHAUSTED, f"table {spec.name} is full ({spec.size} entries)"
                )
        elif utype == _INSERT:
            raise EntityError(code_pb2.ALREADY_EXISTS, f"table {spec.name}: entry already exists")
        stored[key] = data[head.start("entry") :]
        if undo is not None:
            if old is None:
                undo.append(lambda: self._remove(state, key))
            else:
                cell = state.counters.get(key)  # a MODIFY here leaves the counter alone
                undo.append(lambda: self._restore(state, key, old, cell))
        return True

    def _apply(self, update: p4runtime_pb2.Update, undo: list[Callable[[], None]] | None) -> None:
        utype = update.type
        if utype not in (_INSERT, _MODIFY, _DELETE):
            raise invalid("update type must be INSERT, MODIFY or DELETE")
        entity = update.entity
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            self._write_table_entry(utype, entity.table_entry, undo)
        elif which == "action_profile_member":
            self._write_member(utype, entity.action_profile_member, undo)
        elif which == "action_profile_group":
            self._write_group(utype, entity.action_profile_group, undo)
        elif which == "direct_counter_entry":
            if utype != _MODIFY:
                raise invalid("direct counter entries can only be modified")
            self._write_direct_counter(entity.direct_counter_entry, undo)
        elif which == "counter_entry":
            if utype != _MODIFY:
                raise invalid("counter entries can only be modified")
            self._write_counter(entity.counter_entry, undo)
        elif which is None:
            raise invalid("update has no entity")
        else:
            raise EntityError(code_pb2.UNIMPLEMENTED, f"softipu does not support writing {which}")

    def _write_table_entry(
        self, utype: int, entry: p4runtime_pb2.TableEntry, undo: list[Callable[[], None]] | None
    ) -> None:
        state = self.tables.get(entry.table_id)
        if state is None:
            raise invalid(f"table id {entry.table_id:#x} is not in the pipeline")
        spec = state.spec
        if entry.is_default_action:
            self._write_default(utype, state, entry, undo)
            return
        if spec.is_const_table:
            raise EntityError(code_pb2.PERMISSION_DENIED, f"table {spec.name} is const")
        plan = state.plan
        canon: Canonicaliser | None = None
        slots = fast_key(plan, entry)
        if slots is None:
            canon = Canonicaliser(self.strict)
            slots = match_key(spec, entry, canon)
        key: MatchKey = slots if state.wire is None else state.wire.key_of(slots)
        stored = state.stored
        old = stored.get(key)
        indirect = spec.implementation_id
        if utype == _DELETE:
            if old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"table {spec.name}: no such entry")
            del stored[key]
            cell = state.counters.pop(key, None)
            if indirect:
                self._release_action(spec, _parse(old).action)
            if undo is not None:
                undo.append(lambda: self._restore(state, key, old, cell))
            return
        if old is None:
            if utype == _MODIFY:
                raise EntityError(code_pb2.NOT_FOUND, f"table {spec.name}: no such entry")
        elif utype == _INSERT:
            raise EntityError(code_pb2.ALREADY_EXISTS, f"table {spec.name}: entry already exists")
        if indirect or canon is not None or not fast_action_ok(plan, entry.action.action):
            canon = canon or Canonicaliser(self.strict)
            self._check_table_action(spec, entry, canon)
        if old is None and spec.size and len(stored) >= spec.size:
            raise EntityError(code_pb2.RESOURCE_EXHAUSTED, f"table {spec.name} is full ({spec.size} entries)")
        if canon is not None and canon.rewrote:
            canonicalise_match(entry)
        if indirect:
            self._hold_action(spec, entry.action)
            if old is not None:
                self._release_action(spec, _parse(old).action)
        counters = state.counters
        previous_cell = counters.get(key) if old is not None else None
        # Counter values live in the cells, not in the stored entry.
        if entry.HasField("counter_data"):
            data = entry.counter_data
            if spec.direct_counter_id and (data.byte_count or data.packet_count):
                counters[key] = [data.byte_count, data.packet_count]
            else:
                counters.pop(key, None)
            entry.ClearField("counter_data")
        stored[key] = entry.SerializeToString()
        if undo is not None:
            if old is None:
                undo.append(lambda: self._remove(state, key))
            else:
                undo.append(lambda: self._restore(state, key, old, previous_cell))

    @staticmethod
    def _match_key(state: TableState, entry: p4runtime_pb2.TableEntry, canon: Canonicaliser) -> MatchKey:
        slots = match_key(state.spec, entry, canon)
        return slots if state.wire is None else state.wire.key_of(slots)

    def _restore(self, state: TableState, key: MatchKey, entry: bytes, cell: list[int] | None) -> None:
        current = state.stored.get(key)
        indirect = state.spec.implementation_id
        if current is not None and indirect:
            self._release_action(state.spec, _parse(current).action)
        state.stored[key] = entry
        if indirect:
            self._hold_action(state.spec, _parse(entry).action)
        _put_or_pop(state.counters, key, cell)

    def _remove(self, state: TableState, key: MatchKey) -> None:
        entry = state.stored.pop(key)
        state.counters.pop(key, None)
        if state.spec.implementation_id:
            self._release_action(state.spec, _parse(entry).action)

    def _write_default(
        self,
        utype: int,
        state: TableState,
        entry: p4runtime_pb2.TableEntry,
        undo: list[Callable[[], None]] | None,
    ) -> None:
        spec = state.spec
        if utype != _MODIFY:
            raise invalid(f"table {spec.name}: the default entry can only be modified")
        if len(entry.match) or entry.priority:
            raise invalid(f"table {spec.name}: the default entry has no match fields and no priority")
        if spec.const_default_action_id:
            raise EntityError(code_pb2.PERMISSION_DENIED, f"table {spec.name}: the default action is const")
        previous = state.default_action
        if entry.HasField("action"):
            if entry.action.WhichOneof("type") != "action":
                raise invalid(f"table {spec.name}: the default action must be a direct action")
            check_action(self.schema, spec, entry.action.action, Canonicaliser(self.strict), default=True)
            state.default_action = entry.action
        else:
            # MODIFY without an action resets the default to the P4Info's initial one.
            state.default_action = None
        if undo is not None:
            undo.append(lambda: setattr(state, "default_action", previous))

    def _check_table_action(
        self, spec: TableSpec, entry: p4runtime_pb2.TableEntry, canon: Canonicaliser
    ) -> None:
        if not entry.HasField("action"):
            raise invalid(f"table {spec.name}: INSERT/MODIFY needs an action")
        action = entry.action
        kind = action.WhichOneof("type")
        if kind == "action":
            if spec.implementation_id:
                raise invalid(f"table {spec.name} is indirect: use an action profile member or group")
            check_action(self.schema, spec, action.action, canon, default=False)
            return
        if kind in ("action_profile_member_id", "action_profile_group_id"):
            if not spec.implementation_id:
                raise invalid(f"table {spec.name} is direct: it takes an action, not a profile reference")
            profile = self.profiles[spec.implementation_id]
            if kind == "action_profile_member_id":
                if action.action_profile_member_id not in profile.members:
                    raise EntityError(
                        code_pb2.NOT_FOUND,
                        f"table {spec.name}: member {action.action_profile_member_id} does not exist",
                    )
            elif action.action_profile_group_id not in profile.groups:
                raise EntityError(
                    code_pb2.NOT_FOUND,
                    f"table {spec.name}: group {action.action_profile_group_id} does not exist",
                )
            return
        if kind == "action_profile_action_set":
            raise EntityError(code_pb2.UNIMPLEMENTED, "one-shot action selector programming is not supported")
        raise invalid(f"table {spec.name}: the entry has no action")

    def _hold_action(self, spec: TableSpec, action: p4runtime_pb2.TableAction) -> None:
        if spec.implementation_id:
            self._ref(spec.implementation_id, action, +1)

    def _release_action(self, spec: TableSpec, action: p4runtime_pb2.TableAction) -> None:
        if spec.implementation_id:
            self._ref(spec.implementation_id, action, -1)

    def _ref(self, profile_id: int, action: p4runtime_pb2.TableAction, delta: int) -> None:
        profile = self.profiles[profile_id]
        kind = action.WhichOneof("type")
        if kind == "action_profile_member_id":
            refs, ident = profile.member_refs, action.action_profile_member_id
        elif kind == "action_profile_group_id":
            refs, ident = profile.group_refs, action.action_profile_group_id
        else:
            return
        refs[ident] = refs.get(ident, 0) + delta

    # ---------------------------------------------------------- action profiles

    def _profile(self, profile_id: int) -> ProfileState:
        profile = self.profiles.get(profile_id)
        if profile is None:
            raise invalid(f"action profile id {profile_id:#x} is not in the pipeline")
        return profile

    def _write_member(
        self, utype: int, member: p4runtime_pb2.ActionProfileMember, undo: list[Callable[[], None]] | None
    ) -> None:
        profile = self._profile(member.action_profile_id)
        spec = self.schema.profiles_by_id[member.action_profile_id]
        mid = member.member_id
        old = profile.members.get(mid)
        if utype == _DELETE:
            if old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"action profile {spec.name}: no member {mid}")
            if profile.member_refs.get(mid, 0) > 0:
                raise EntityError(
                    code_pb2.FAILED_PRECONDITION, f"action profile {spec.name}: member {mid} in use"
                )
            del profile.members[mid]
        else:
            if utype == _INSERT and old is not None:
                raise EntityError(code_pb2.ALREADY_EXISTS, f"action profile {spec.name}: member {mid} exists")
            if utype == _MODIFY and old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"action profile {spec.name}: no member {mid}")
            action_id = member.action.action_id
            if not any(action_id in self.tables[t].spec.actions_by_id for t in spec.table_ids):
                raise invalid(f"action profile {spec.name}: action {action_id:#x} is not used by its tables")
            if spec.size and utype == _INSERT and len(profile.members) >= spec.size:
                raise EntityError(code_pb2.RESOURCE_EXHAUSTED, f"action profile {spec.name} is full")
            check_params(self.schema.actions_by_id[action_id], member.action, Canonicaliser(self.strict))
            profile.members[mid] = member
        if undo is not None:
            undo.append(lambda: _put_or_pop(profile.members, mid, old))

    def _write_group(
        self, utype: int, group: p4runtime_pb2.ActionProfileGroup, undo: list[Callable[[], None]] | None
    ) -> None:
        profile = self._profile(group.action_profile_id)
        spec = self.schema.profiles_by_id[group.action_profile_id]
        if not spec.with_selector:
            raise invalid(f"action profile {spec.name} has no selector: it takes no groups")
        gid = group.group_id
        old = profile.groups.get(gid)
        if utype == _DELETE:
            if old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"action profile {spec.name}: no group {gid}")
            if profile.group_refs.get(gid, 0) > 0:
                raise EntityError(
                    code_pb2.FAILED_PRECONDITION, f"action profile {spec.name}: group {gid} in use"
                )
            self._group_member_refs(profile, old, -1)
            del profile.groups[gid]
        else:
            if utype == _INSERT and old is not None:
                raise EntityError(code_pb2.ALREADY_EXISTS, f"action profile {spec.name}: group {gid} exists")
            if utype == _MODIFY and old is None:
                raise EntityError(code_pb2.NOT_FOUND, f"action profile {spec.name}: no group {gid}")
            limit = group.max_size or spec.max_group_size
            if limit and len(group.members) > limit:
                raise EntityError(
                    code_pb2.RESOURCE_EXHAUSTED, f"action profile {spec.name}: group {gid} too big"
                )
            for m in group.members:
                if m.member_id not in profile.members:
                    raise EntityError(
                        code_pb2.NOT_FOUND, f"action profile {spec.name}: no member {m.member_id}"
                    )
                if m.weight < 0:
                    raise invalid(f"action profile {spec.name}: negative weight for member {m.member_id}")
            if old is not None:
                self._group_member_refs(profile, old, -1)
            self._group_member_refs(profile, group, +1)
            profile.groups[gid] = group
        if undo is not None:

            def revert() -> None:
                current = profile.groups.get(gid)
                if current is not None:
                    self._group_member_refs(profile, current, -1)
                _put_or_pop(profile.groups, gid, old)
                if old is not None:
                    self._group_member_refs(profile, old, +1)

            undo.append(revert)

    @staticmethod
    def _group_member_refs(
        profile: ProfileState, group: p4runtime_pb2.ActionProfileGroup, delta: int
    ) -> None:
        for m in group.members:
            profile.member_refs[m.member_id] = profile.member_refs.get(m.member_id, 0) + delta

    # --------------------------------------------------------------- counters

    def _write_direct_counter(
        self, dce: p4runtime_pb2.DirectCounterEntry, undo: list[Callable[[], None]] | None
    ) -> None:
        state = self.tables.get(dce.table_entry.table_id)
        if state is None:
            raise invalid(f"table id {dce.table_entry.table_id:#x} is not in the pipeline")
        if not state.spec.direct_counter_id:
            raise invalid(f"table {state.spec.name} has no direct counter")
        key = self._match_key(state, dce.table_entry, Canonicaliser(self.strict))
        if key not in state.stored:
            raise EntityError(code_pb2.NOT_FOUND, f"table {state.spec.name}: no such entry")
        counters = state.counters
        previous = counters.get(key)
        counters[key] = [dce.data.byte_count, dce.data.packet_count]
        if undo is not None:
            undo.append(lambda: _put_or_pop(counters, key, previous))

    def _write_counter(self, ce: p4runtime_pb2.CounterEntry, undo: list[Callable[[], None]] | None) -> None:
        cells = self.counter_cells.get(ce.counter_id)
        if cells is None:
            raise invalid(f"counter id {ce.counter_id:#x} is not in the pipeline")
        spec = self.schema.counters_by_id[ce.counter_id]
        index = ce.index.index
        if index < 0 or (spec.size and index >= spec.size):
            raise invalid(f"counter {spec.name}: index {index} out of range")
        previous = cells.get(index)
        cells[index] = [ce.data.byte_count, ce.data.packet_count]
        if undo is not None:
            undo.append(lambda: _put_or_pop(cells, index, previous))

    def count_hit(self, table_id: int, key: MatchKey, nbytes: int) -> None:
        """Feed a direct counter (called by packet execution for a matched entry)."""
        state = self.tables[table_id]
        cell = state.counters.get(key)
        if cell is None:
            if key not in state.stored or not state.spec.direct_counter_id:
                return
            cell = state.counters[key] = [0, 0]
        cell[0] += nbytes
        cell[1] += 1

    # ------------------------------------------------------------------- read

    def read(self, entity: p4runtime_pb2.Entity) -> Iterator[p4runtime_pb2.Entity]:
        """Entities selected by one entity of a ReadRequest (zero ids and empty matches are wildcards)."""
        which = entity.WhichOneof("entity")
        if which == "table_entry":
            yield from self._read_table_entries(entity.table_entry)
        elif which == "direct_counter_entry":
            yield from self._read_direct_counters(entity.direct_counter_entry)
        elif which == "action_profile_member":
            yield from self._read_members(entity.action_profile_member)
        elif which == "action_profile_group":
            yield from self._read_groups(entity.action_profile_group)
        elif which == "counter_entry":
            yield from self._read_counters(entity.counter_entry)
        elif which is None:
            raise invalid("read entity is empty")
        else:
            raise EntityError(code_pb2.UNIMPLEMENTED, f"softipu does not support reading {which}")

    def _selected_tables(self, table_id: int) -> list[TableState]:
        if table_id == 0:
            return list(self.tables.values())
        table_of(self.schema, table_id)
        return [self.tables[table_id]]

    def _read_table_entries(self, query: p4runtime_pb2.TableEntry) -> Iterator[p4runtime_pb2.Entity]:
        with_counters = query.HasField("counter_data")
        for state in self._selected_tables(query.table_id):
            if query.is_default_action:
                out = p4runtime_pb2.Entity()
                te = out.table_entry
                te.table_id = state.spec.id
                te.is_default_action = True
                self._default_action_into(state, te.action)
                yield out
                continue
            if len(query.match) or query.priority:
                key = self._match_key(state, query, Canonicaliser(False))
                found = state.stored.get(key)
                selected = [(key, found)] if found is not None else []
            else:
                selected = list(state.stored.items())
            counters = state.counters
            counted = with_counters and state.spec.direct_counter_id
            for key, stored in selected:
                out = _parse_entity(_TABLE_ENTRY_TAG + varint(len(stored)) + stored)
                if counted:
                    cell = counters.get(key, _ZERO_CELL)
                    data = out.table_entry.counter_data
                    data.SetInParent()
                    data.byte_count = cell[0]
                    data.packet_count = cell[1]
                yield out

    def _default_action_into(self, state: TableState, out: p4runtime_pb2.TableAction) -> None:
        if state.default_action is not None:
            out.CopyFrom(state.default_action)
            return
        initial = state.spec.initial_default_action_id
        if initial:
            out.action.action_id = initial
            for t in self.pipeline.p4info.tables:
                if t.preamble.id == state.spec.id and t.HasField("initial_default_action"):
                    for arg in t.initial_default_action.arguments:
                        out.action.params.add(param_id=arg.param_id, value=arg.value)

    def _read_direct_counters(
        self, query: p4runtime_pb2.DirectCounterEntry
    ) -> Iterator[p4runtime_pb2.Entity]:
        te_query = query.table_entry
        for state in self._selected_tables(te_query.table_id):
            if not state.spec.direct_counter_id:
                if te_query.table_id:
                    raise invalid(f"table {state.spec.name} has no direct counter")
                continue
            if len(te_query.match) or te_query.priority:
                key = self._match_key(state, te_query, Canonicaliser(False))
                keys = [key] if key in state.stored else []
            else:
                keys = list(state.stored)
            for key in keys:
                out = p4runtime_pb2.Entity()
                dce = out.direct_counter_entry
                stored = _parse(state.stored[key])
                dce.table_entry.table_id = stored.table_id
                dce.table_entry.match.extend(stored.match)
                dce.table_entry.priority = stored.priority
                dce.data.SetInParent()
                cell = state.counters.get(key, _ZERO_CELL)
                dce.data.byte_count = cell[0]
                dce.data.packet_count = cell[1]
                yield out

    def _read_members(self, query: p4runtime_pb2.ActionProfileMember) -> Iterator[p4runtime_pb2.Entity]:
        ids = [query.action_profile_id] if query.action_profile_id else list(self.profiles)
        for pid in ids:
            profile = self._profile(pid)
            for mid, member in profile.members.items():
                if query.member_id and mid != query.member_id:
                    continue
                out = p4runtime_pb2.Entity()
                out.action_profile_member.CopyFrom(member)
                yield out

    def _read_groups(self, query: p4runtime_pb2.ActionProfileGroup) -> Iterator[p4runtime_pb2.Entity]:
        ids = [query.action_profile_id] if query.action_profile_id else list(self.profiles)
        for pid in ids:
            profile = self._profile(pid)
            for gid, group in profile.groups.items():
                if query.group_id and gid != query.group_id:
                    continue
                out = p4runtime_pb2.Entity()
                out.action_profile_group.CopyFrom(group)
                yield out

    def _read_counters(self, query: p4runtime_pb2.CounterEntry) -> Iterator[p4runtime_pb2.Entity]:
        ids = [query.counter_id] if query.counter_id else list(self.counter_cells)
        for cid in ids:
            cells = self.counter_cells.get(cid)
            if cells is None:
                raise invalid(f"counter id {cid:#x} is not in the pipeline")
            spec = self.schema.counters_by_id[cid]
            indexes = [query.index.index] if query.HasField("index") else range(spec.size)
            for index in indexes:
                cell = cells.get(index, [0, 0])
                out = p4runtime_pb2.Entity()
                out.counter_entry.counter_id = cid
                out.counter_entry.index.index = index
                out.counter_entry.data.byte_count = cell[0]
                out.counter_entry.data.packet_count = cell[1]
                yield out

    # -------------------------------------------------------------- reconcile

    def adopt(self, previous: DeviceState) -> int:
        """Carry over ``previous``'s entries that still fit this pipeline (RECONCILE_AND_COMMIT).

        Returns how many entries were dropped because they no longer fit.
        """
        dropped = 0
        for old_profile_id, old_profile in previous.profiles.items():
            if old_profile_id not in self.profiles:
                dropped += len(old_profile.members) + len(old_profile.groups)
                continue
            for member in old_profile.members.values():
                dropped += self._replay(_INSERT, "action_profile_member", member)
            for group in old_profile.groups.values():
                dropped += self._replay(_INSERT, "action_profile_group", group)
        for table in previous.tables.values():
            for key, raw in table.stored.items():
                entry = _parse(raw)
                cell = table.counters.get(key)
                if cell is not None:
                    entry = _with_counter(entry, cell)
                dropped += self._replay(_INSERT, "table_entry", entry)
            if table.default_action is not None:
                default = p4runtime_pb2.TableEntry(
                    table_id=table.spec.id, is_default_action=True, action=table.default_action
                )
                dropped += self._replay(_MODIFY, "table_entry", default)
        return dropped

    def _replay(self, utype: p4runtime_pb2.Update.Type, kind: str, message: object) -> int:
        update = p4runtime_pb2.Update(type=utype)
        getattr(update.entity, kind).CopyFrom(message)
        try:
            self._apply(update, None)
        except EntityError as exc:
            log.info("reconcile drops a %s that no longer fits: %s", kind, exc.message)
            return 1
        return 0

    def entry_count(self) -> int:
        return sum(len(t.stored) for t in self.tables.values())


def _with_counter(entry: p4runtime_pb2.TableEntry, cell: list[int]) -> p4runtime_pb2.TableEntry:
    copy = p4runtime_pb2.TableEntry()
    copy.CopyFrom(entry)
    copy.counter_data.byte_count = cell[0]
    copy.counter_data.packet_count = cell[1]
    return copy


def _put_or_pop(mapping: dict[K, V], key: K, value: V | None) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value
