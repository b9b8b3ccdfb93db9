"""P4Info messages -> :class:`~xpunet.p4rt.schema.PipelineSchema`, with validation.

This is the one place that reads ``p4.config.v1.P4Info``: the client uses it to
name things in errors, softipu uses it to VERIFY a pipeline before installing
it.  It imports protobuf message classes only (no I/O).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from xpunet.p4rt.schema import (
    ActionProfileSpec,
    ActionRef,
    ActionScope,
    ActionSpec,
    CounterSpec,
    MatchFieldSpec,
    MatchKind,
    ParamSpec,
    PipelineSchema,
    TableSpec,
)

# P4Runtime id prefixes (top byte of every id), by object kind.
PREFIX_ACTION = 0x01
PREFIX_TABLE = 0x02
PREFIX_ACTION_PROFILE = 0x11
PREFIX_COUNTER = 0x12
PREFIX_DIRECT_COUNTER = 0x13

_MATCH_KINDS = {
    p4info_pb2.MatchField.EXACT: MatchKind.EXACT,
    p4info_pb2.MatchField.LPM: MatchKind.LPM,
    p4info_pb2.MatchField.TERNARY: MatchKind.TERNARY,
    p4info_pb2.MatchField.RANGE: MatchKind.RANGE,
    p4info_pb2.MatchField.OPTIONAL: MatchKind.OPTIONAL,
}
_SCOPES = {
    p4info_pb2.ActionRef.TABLE_AND_DEFAULT: ActionScope.TABLE_AND_DEFAULT,
    p4info_pb2.ActionRef.TABLE_ONLY: ActionScope.TABLE_ONLY,
    p4info_pb2.ActionRef.DEFAULT_ONLY: ActionScope.DEFAULT_ONLY,
}
_UNITS = {
    p4info_pb2.CounterSpec.BYTES: "bytes",
    p4info_pb2.CounterSpec.PACKETS: "packets",
    p4info_pb2.CounterSpec.BOTH: "both",
}


class P4InfoError(ValueError):
    """The P4Info is not a usable pipeline contract; the message names the object."""


def parse_text(text: str) -> p4info_pb2.P4Info:
    """Parse a P4Info in protobuf text format."""
    p4info = p4info_pb2.P4Info()
    try:
        text_format.Parse(text, p4info)
    except text_format.ParseError as exc:
        raise P4InfoError(f"P4Info text does not parse: {exc}") from exc
    return p4info


def load_text(path: str | Path) -> p4info_pb2.P4Info:
    return parse_text(Path(path).read_text())


def build_schema(p4info: p4info_pb2.P4Info) -> PipelineSchema:
    """Validate ``p4info`` and index it.  Raises :class:`P4InfoError` naming the first problem."""
    seen: dict[int, str] = {}

    def claim(obj_id: int, name: str, prefix: int, kind: str) -> None:
        if not name:
            raise P4InfoError(f"{kind} id {obj_id:#x} has no name")
        if obj_id >> 24 != prefix:
            raise P4InfoError(f"{kind} {name}: id {obj_id:#x} does not carry the {kind} prefix {prefix:#04x}")
        if obj_id in seen:
            raise P4InfoError(f"{kind} {name}: id {obj_id:#x} already used by {seen[obj_id]}")
        seen[obj_id] = name

    actions: list[ActionSpec] = []
    for a in p4info.actions:
        claim(a.preamble.id, a.preamble.name, PREFIX_ACTION, "action")
        params = tuple(ParamSpec(p.id, p.name, p.bitwidth) for p in a.params)
        _unique((p.id for p in params), f"action {a.preamble.name}: duplicate param id")
        for p in params:
            if p.bitwidth <= 0:
                raise P4InfoError(f"action {a.preamble.name}: param {p.name} has bitwidth {p.bitwidth}")
        actions.append(ActionSpec(a.preamble.id, a.preamble.name, params))
    action_ids = {a.id for a in actions}

    profiles: list[ActionProfileSpec] = []
    for ap in p4info.action_profiles:
        claim(ap.preamble.id, ap.preamble.name, PREFIX_ACTION_PROFILE, "action_profile")
        profiles.append(
            ActionProfileSpec(
                ap.preamble.id,
                ap.preamble.name,
                tuple(ap.table_ids),
                ap.with_selector,
                ap.size,
                ap.max_group_size,
            )
        )
    profile_ids = {p.id for p in profiles}

    direct_counters: list[CounterSpec] = []
    for dc in p4info.direct_counters:
        claim(dc.preamble.id, dc.preamble.name, PREFIX_DIRECT_COUNTER, "direct_counter")
        direct_counters.append(
            CounterSpec(
                dc.preamble.id, dc.preamble.name, _UNITS.get(dc.spec.unit, "both"), 0, dc.direct_table_id
            )
        )
    counters = []
    for c in p4info.counters:
        claim(c.preamble.id, c.preamble.name, PREFIX_COUNTER, "counter")
        counters.append(CounterSpec(c.preamble.id, c.preamble.name, _UNITS.get(c.spec.unit, "both"), c.size))
    direct_counter_by_table = {dc.direct_table_id: dc.id for dc in direct_counters}

    tables: list[TableSpec] = []
    for t in p4info.tables:
        name = t.preamble.name
        claim(t.preamble.id, name, PREFIX_TABLE, "table")
        fields = []
        for mf in t.match_fields:
            kind = _MATCH_KINDS.get(mf.match_type)
            if kind is None:
                raise P4InfoError(f"table {name}: match field {mf.name} has unsupported match type")
            if mf.bitwidth <= 0:
                raise P4InfoError(f"table {name}: match field {mf.name} has bitwidth {mf.bitwidth}")
            if mf.id <= 0:
                raise P4InfoError(f"table {name}: match field {mf.name} has id {mf.id} (must be > 0)")
            fields.append(MatchFieldSpec(mf.id, mf.name, mf.bitwidth, kind))
        _unique((f.id for f in fields), f"table {name}: duplicate match field id")
        refs = []
        for ref in t.action_refs:
            if ref.id not in action_ids:
                raise P4InfoError(f"table {name}: action ref {ref.id:#x} is not an action of this P4Info")
            refs.append(ActionRef(ref.id, _SCOPES.get(ref.scope, ActionScope.TABLE_AND_DEFAULT)))
        ref_ids = {r.action_id for r in refs}
        if t.const_default_action_id and t.const_default_action_id not in ref_ids:
            raise P4InfoError(f"table {name}: const default action is not in its action refs")
        initial = t.initial_default_action.action_id if t.HasField("initial_default_action") else 0
        if initial and initial not in ref_ids:
            raise P4InfoError(f"table {name}: initial default action is not in its action refs")
        if t.implementation_id and t.implementation_id not in profile_ids:
            raise P4InfoError(
                f"table {name}: implementation {t.implementation_id:#x} is not an action profile"
            )
        tables.append(
            TableSpec(
                id=t.preamble.id,
                name=name,
                match_fields=tuple(fields),
                action_refs=tuple(refs),
                size=t.size,
                const_default_action_id=t.const_default_action_id,
                initial_default_action_id=initial or t.const_default_action_id,
                implementation_id=t.implementation_id,
                direct_counter_id=direct_counter_by_table.get(t.preamble.id, 0),
                is_const_table=t.is_const_table,
            )
        )
    table_ids = {t.id for t in tables}
    for counter in direct_counters:
        if counter.direct_table_id not in table_ids:
            raise P4InfoError(
                f"direct_counter {counter.name}: table {counter.direct_table_id:#x} does not exist"
            )
    for profile in profiles:
        for tid in profile.table_ids:
            if tid not in table_ids:
                raise P4InfoError(f"action_profile {profile.name}: table {tid:#x} does not exist")
    return PipelineSchema(
        tables=tuple(tables),
        actions=tuple(actions),
        action_profiles=tuple(profiles),
        counters=tuple(counters),
        direct_counters=tuple(direct_counters),
    )


def _unique(ids: Iterable[int], problem: str) -> None:
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise P4InfoError(f"{problem} {i}")
        seen.add(i)
