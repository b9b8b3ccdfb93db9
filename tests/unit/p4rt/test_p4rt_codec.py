"""The hand-written P4Runtime Update encoder against the protobuf library's own encoding.

The reference builds the same Update through the generated message classes
(setting each field the way the P4Runtime spec describes the entry) and
serialises it; the encoder's bytes must be identical, and must decode back to
the entry.  Entries are drawn from every table xpunet writes, with every match
kind, don't-care-free values up to the full bitwidth, and zero values.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p4.v1 import p4runtime_pb2

from xpunet.datapath.p4rt_codec import _HEADS, XPUNET_COOKIE, CodecError, EntryCodec, _head
from xpunet.p4rt.schema import encode_uint
from xpunet.p4rt.wire import frame_write_request
from xpunet.pipeline.diff import Update, UpdateKind
from xpunet.pipeline.entries import Exact, FieldMatch, Lpm, Optional, Range, TableEntry, Ternary
from xpunet.pipeline.schema import SCHEMA, FieldSpec, TableSpec

CODEC = EntryCodec()
WRITTEN = [t for t in SCHEMA.tables if not t.learned]
KINDS: list[UpdateKind] = ["INSERT", "MODIFY", "DELETE"]


def reference(update: Update) -> p4runtime_pb2.Update:
    """The Update built field by field through the protobuf API (the oracle)."""
    entry = update.entry
    table = SCHEMA.table(entry.table)
    out = p4runtime_pb2.Update(type=update.kind)
    te = out.entity.table_entry
    te.table_id = table.id
    ids = {f.name: f.id for f in table.key}
    for name, m in entry.match:
        fm = te.match.add(field_id=ids[name])
        if isinstance(m, Exact):
            fm.exact.value = encode_uint(m.value)
        elif isinstance(m, Lpm):
            fm.lpm.value = encode_uint(m.value)
            fm.lpm.prefix_len = m.prefix_len
        elif isinstance(m, Ternary):
            fm.ternary.value = encode_uint(m.value)
            fm.ternary.mask = encode_uint(m.mask)
        elif isinstance(m, Range):
            fm.range.low = encode_uint(m.low)
            fm.range.high = encode_uint(m.high)
        else:
            fm.optional.value = encode_uint(m.value)
    te.priority = entry.priority
    te.controller_metadata = XPUNET_COOKIE
    if update.kind != "DELETE":
        spec = SCHEMA.action(entry.action)
        action = te.action.action
        action.action_id = spec.id
        pids = {p.name: p.id for p in spec.params}
        for name, value in entry.params:
            action.params.add(param_id=pids[name], value=encode_uint(value))
    return out


def _match(spec: FieldSpec, draw: st.DrawFn) -> FieldMatch:
    top = (1 << spec.bitwidth) - 1
    value = st.one_of(st.just(0), st.just(top), st.integers(0, top))
    kind = spec.match_kind
    if kind == "exact":
        return Exact(draw(value))
    if kind == "lpm":
        return Lpm(draw(value), draw(st.integers(0, spec.bitwidth)))
    if kind == "ternary":
        return Ternary(draw(value), draw(value))
    if kind == "range":
        return Range(draw(value), draw(value))
    return Optional(draw(value))


@st.composite
def updates(draw: st.DrawFn) -> Update:
    table: TableSpec = draw(st.sampled_from(WRITTEN))
    action_name = draw(st.sampled_from(table.action_names()))
    action = SCHEMA.action(action_name)
    match = tuple((f.name, _match(f, draw)) for f in table.key)
    params = tuple((p.name, draw(st.integers(0, (1 << p.bitwidth) - 1))) for p in action.params)
    priority = draw(st.one_of(st.just(0), st.integers(1, 0x7FFFFFFF)))
    kind: UpdateKind = draw(st.sampled_from(KINDS))
    return Update(kind, TableEntry(table.name, match, action.name, params, priority))


@settings(max_examples=400, deadline=None)
@given(update=updates())
def test_encoding_equals_protobuf_serialisation(update: Update) -> None:
    expected = reference(update)
    data = CODEC.encode_update(update)
    assert data == expected.SerializeToString(deterministic=True)
    assert p4runtime_pb2.Update.FromString(data) == expected
    # Twice: the second time from the value caches.
    assert CODEC.encode_update(update) == data


@settings(max_examples=200, deadline=None)
@given(update=updates())
def test_encoded_entry_decodes_back(update: Update) -> None:
    if update.kind == "DELETE":
        return
    message = p4runtime_pb2.Update.FromString(CODEC.encode_update(update))
    assert CODEC.decode(message.entity.table_entry) == update.entry
    assert CODEC.is_owned(message.entity.table_entry)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 128, 2047, 2048, 3000, 20_000])
def test_update_heads_frame_any_table_entry_length(size: int) -> None:
    # Bodies past the precomputed heads, and lengths of one, two and three varint bytes.
    body = p4runtime_pb2.TableEntry(table_id=1, metadata=b"m" * size).SerializeToString()
    for kind in KINDS:
        expected = p4runtime_pb2.Update(type=kind)
        expected.entity.table_entry.ParseFromString(body)
        assert _head(kind, len(body)) + body == expected.SerializeToString()
        if len(body) < len(_HEADS[kind]):
            assert _HEADS[kind][len(body)] == _head(kind, len(body))


def test_write_request_framing_equals_protobuf() -> None:
    ups = [Update("INSERT", e) for e in _sample_entries()]
    header = p4runtime_pb2.WriteRequest(
        device_id=7, role="r", atomicity=p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR
    )
    framed = frame_write_request(header.SerializeToString(), CODEC.encode_updates(ups))
    expected = p4runtime_pb2.WriteRequest()
    expected.CopyFrom(header)
    expected.updates.extend(reference(u) for u in ups)
    assert p4runtime_pb2.WriteRequest.FromString(framed) == expected


def _sample_entries() -> list[TableEntry]:
    backend = SCHEMA.table("ingress.maglev_backend_v4")
    return [
        TableEntry(
            backend.name,
            (("backend_group", Exact(g)), ("bucket", Exact(b))),
            "ingress.set_backend_v4",
            (("addr", 0x0A000000 + b), ("port", 8080)),
        )
        for g in (1, 2)
        for b in range(300)
    ]


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(TableEntry("ingress.nope", (), "ingress.acl_allow"), id="unknown-table"),
        pytest.param(
            TableEntry("ingress.maglev_backend_v4", (("nope", Exact(1)),), "ingress.set_backend_v4"),
            id="unknown-field",
        ),
        pytest.param(
            TableEntry("ingress.maglev_backend_v4", (), "ingress.nope"),
            id="unknown-action",
        ),
    ],
)
def test_unknown_names_are_codec_errors(entry: TableEntry) -> None:
    with pytest.raises(CodecError, match="nope"):
        CODEC.encode_update(Update("INSERT", entry))
