"""softipu's regex fast path for exact-match tables against its full validation path.

Two devices take the same random Write batches, one with the fast path and one
without; every per-update result and the whole table state (keys, stored
bytes, counters) must be equal.  The updates mix valid entries with every kind
of flaw the full path catches: padded, too wide and empty values, missing,
repeated and reordered fields, priorities where none belong, unknown and
default-only actions, missing or extra parameters, counter data, default-entry
writes, updates without a type.  Values come from a small domain, so MODIFY and
DELETE often find their entry.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from xpunet.datapath.softipu.state import DeviceState, Pipeline
from xpunet.p4rt.p4info import build_schema, parse_text
from xpunet.p4rt.schema import ActionScope, BitField, MatchFieldSpec, MatchKind, PipelineSchema, TableSpec
from xpunet.p4rt.testing import TEST_P4INFO_TEXT
from xpunet.pipeline.p4info import load_p4info

# Widths that are not whole bytes, and a table small enough to fill.
ODD_TABLES = """
tables {
  preamble { id: 0x02000010 name: "ingress.odd" alias: "odd" }
  match_fields { id: 1 name: "meta.vrf" bitwidth: 12 match_type: EXACT }
  match_fields { id: 2 name: "meta.port" bitwidth: 9 match_type: EXACT }
  match_fields { id: 3 name: "meta.flag" bitwidth: 1 match_type: EXACT }
  action_refs { id: 0x01000002 }
  action_refs { id: 0x01000001 }
  action_refs { id: 0x01000004 scope: DEFAULT_ONLY }
  size: 6
}
"""


def _pipeline(p4info: p4info_pb2.P4Info) -> Pipeline:
    return Pipeline(p4info, build_schema(p4info), b"", 1)


PIPELINES = [_pipeline(load_p4info()), _pipeline(parse_text(TEST_P4INFO_TEXT + ODD_TABLES))]
UNSPECIFIED = p4runtime_pb2.Update.UNSPECIFIED
KINDS = [p4runtime_pb2.Update.INSERT, p4runtime_pb2.Update.MODIFY, p4runtime_pb2.Update.DELETE]


class _Flaws:
    """Draws whether to spoil something; a clean entry (about half of them) gets no flaw at all."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.on = draw(st.booleans())

    def __call__(self) -> bool:
        # (A value inside the range: hypothesis favours the ends.)
        return self.on and self.draw(st.integers(0, 7)) == 5


def _value(draw: st.DrawFn, width: BitField, rare: _Flaws) -> bytes:
    choice = draw(st.integers(0, 19))
    if choice == 11 and rare.on:
        return b""
    if choice == 12 and rare.on:
        number = width.max_value + 1  # one bit too wide
    elif choice == 13:
        number = width.max_value
    else:
        number = draw(st.integers(0, min(1, width.max_value)))
    data = number.to_bytes(max(1, (number.bit_length() + 7) // 8), "big")
    if choice == 14 and rare.on:
        data = b"\x00" + data  # padded: accepted, stored canonical
    return data


def _field(draw: st.DrawFn, out: p4runtime_pb2.TableEntry, spec: MatchFieldSpec, rare: _Flaws) -> None:
    fm = out.match.add(field_id=spec.id)
    kind, width = spec.match_kind, spec.width
    if kind is MatchKind.EXACT:
        fm.exact.value = _value(draw, width, rare)
    elif kind is MatchKind.LPM:
        fm.lpm.value = _value(draw, width, rare)
        fm.lpm.prefix_len = draw(st.integers(0, width.bitwidth))
    elif kind is MatchKind.TERNARY:
        fm.ternary.value = _value(draw, width, rare)
        fm.ternary.mask = _value(draw, width, rare)
    elif kind is MatchKind.RANGE:
        fm.range.low = _value(draw, width, rare)
        fm.range.high = _value(draw, width, rare)
    else:
        fm.optional.value = _value(draw, width, rare)


def _entry(draw: st.DrawFn, schema: PipelineSchema, table: TableSpec) -> p4runtime_pb2.TableEntry:
    rare = _Flaws(draw)
    out = p4runtime_pb2.TableEntry(table_id=table.id)
    fields = list(table.match_fields)
    if rare():
        fields = draw(st.permutations(fields))
    if fields and rare():
        fields.pop(draw(st.integers(0, len(fields) - 1)))
    if fields and rare():
        fields.append(fields[0])
    for f in fields:
        _field(draw, out, f, rare)
    if table.needs_priority != rare():
        out.priority = draw(st.integers(1, 3))
    if draw(st.booleans()):
        out.controller_metadata = draw(st.integers(0, 1 << 64 - 1))
    if not rare():
        usable = [r for r in table.action_refs if r.scope is not ActionScope.DEFAULT_ONLY]
        ref = draw(st.sampled_from(usable if usable and not rare() else table.action_refs))
        action_id = ref.action_id if not rare() else 0x01000099
        action = out.action.action
        action.action_id = action_id
        spec = schema.actions_by_id.get(ref.action_id)
        params = list(spec.params) if spec is not None else []
        if rare():
            params = draw(st.permutations(params))
        if params and rare():
            params.pop()
        for p in params:
            action.params.add(param_id=p.id, value=_value(draw, p.width, rare))
        if rare():
            action.params.add(param_id=9, value=b"\x01")
    if rare():
        out.counter_data.packet_count = draw(st.integers(0, 2))
        out.counter_data.byte_count = draw(st.integers(0, 2))
    if rare():
        out.is_default_action = True
    if rare():
        out.metadata = b"m"
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple[Pipeline, list[list[p4runtime_pb2.Update]], list[bool]]:
    pipeline = draw(st.sampled_from(PIPELINES))
    schema = pipeline.schema
    # Mostly the fast path's tables (exact match), some of the others.
    tables = [t for t in schema.tables if all(f.match_kind is MatchKind.EXACT for f in t.match_fields)]
    out: list[list[p4runtime_pb2.Update]] = []
    rollbacks: list[bool] = []
    for _ in range(draw(st.integers(1, 4))):
        batch = []
        for _ in range(draw(st.integers(1, 12))):
            table = draw(st.sampled_from(tables if draw(st.integers(0, 9)) != 5 else list(schema.tables)))
            kind = draw(st.sampled_from(KINDS)) if draw(st.integers(0, 19)) != 7 else UNSPECIFIED
            update = p4runtime_pb2.Update(type=kind)
            update.entity.table_entry.CopyFrom(_entry(draw, schema, table))
            batch.append(update)
        out.append(batch)
        rollbacks.append(draw(st.integers(0, 4)) == 3)
    return pipeline, out, rollbacks


def _tables(device: DeviceState) -> dict[int, tuple[object, ...]]:
    return {tid: (dict(t.stored), dict(t.counters), t.default_action) for tid, t in device.tables.items()}


@settings(max_examples=300, deadline=None)
@given(case=batches())
def test_fast_path_and_full_path_agree(
    case: tuple[Pipeline, list[list[p4runtime_pb2.Update]], list[bool]],
) -> None:
    pipeline, writes, rollbacks = case
    fast = DeviceState(pipeline)
    full = DeviceState(pipeline, wire_path=False)
    for batch, rollback in zip(writes, rollbacks, strict=True):
        # Each device gets its own copies: the full path canonicalises what it stores in place.
        a = fast.write([_copy(u) for u in batch], rollback=rollback)
        b = full.write([_copy(u) for u in batch], rollback=rollback)
        assert a == b
        assert _tables(fast) == _tables(full)


def _copy(update: p4runtime_pb2.Update) -> p4runtime_pb2.Update:
    out = p4runtime_pb2.Update()
    out.CopyFrom(update)
    return out


def test_fast_path_takes_the_plain_entries() -> None:
    # Sanity: the generator's plain entries really go the fast way (else the property tests nothing).
    device = DeviceState(PIPELINES[0])
    table = device.schema.tables_by_id[
        next(t.id for t in device.schema.tables if t.name.endswith("maglev_backend_v4"))
    ]
    update = p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT)
    entry = update.entity.table_entry
    entry.table_id = table.id
    entry.match.add(field_id=1).exact.value = b"\x07"
    entry.match.add(field_id=2).exact.value = b"\x01\x00"
    action = entry.action.action
    action.action_id = next(r.action_id for r in table.action_refs if r.scope.value != "default_only")
    action.params.add(param_id=1, value=b"\x0a\x00\x00\x01")
    action.params.add(param_id=2, value=b"\x1f\x90")
    entry.controller_metadata = 7
    assert device._write_wire(update, None)
    [stored] = device.tables[table.id].stored.values()
    assert p4runtime_pb2.TableEntry.FromString(stored) == entry


def _boundary_values(width: BitField) -> list[bytes]:
    top = width.max_value
    return [
        b"",
        b"\x00",
        b"\x00\x01",
        top.to_bytes(width.nbytes, "big"),
        (top + 1).to_bytes(width.nbytes + 1, "big").lstrip(b"\x00"),
        b"\x00" + top.to_bytes(width.nbytes, "big"),
        b"\xff" * width.nbytes,
        b"\x01" * (width.nbytes + 1),
    ]


def _plain(table: TableSpec, schema: PipelineSchema) -> p4runtime_pb2.Update:
    update = p4runtime_pb2.Update(type=p4runtime_pb2.Update.INSERT)
    entry = update.entity.table_entry
    entry.table_id = table.id
    for f in table.match_fields:
        entry.match.add(field_id=f.id).exact.value = b"\x01"
    forward_or_set_backend = (0x01000002, 0x0100001A)
    [ref] = [r for r in table.action_refs if r.action_id in forward_or_set_backend]
    action = entry.action.action
    action.action_id = ref.action_id
    for p in schema.actions_by_id[ref.action_id].params:
        action.params.add(param_id=p.id, value=b"\x01")
    return update


def test_every_value_boundary_agrees_with_the_full_path() -> None:
    cases = [
        (PIPELINES[1], "ingress.odd"),  # 12-, 9- and 1-bit fields; 9- and 48-bit parameters
        (PIPELINES[0], "ingress.maglev_backend_v4"),
    ]
    checked = 0
    for pipeline, name in cases:
        [table] = [t for t in pipeline.schema.tables if t.name == name]
        base = _plain(table, pipeline.schema)
        entry = base.entity.table_entry
        slots = [(fm.exact, f.width) for fm, f in zip(entry.match, table.match_fields, strict=True)]
        spec = pipeline.schema.actions_by_id[entry.action.action.action_id]
        params = [(p, s.width) for p, s in zip(entry.action.action.params, spec.params, strict=True)]
        for holder, width in slots + params:
            for value in _boundary_values(width):
                original = holder.value
                holder.value = value
                fast = DeviceState(pipeline)
                full = DeviceState(pipeline, wire_path=False)
                assert fast.write([_copy(base)], rollback=False) == full.write([_copy(base)], rollback=False)
                assert _tables(fast) == _tables(full), (name, width, value)
                holder.value = original
                checked += 1
    assert checked > 50
