"""Validation and canonical keys of P4Runtime entities against an installed pipeline.

Each check raises :class:`EntityError` carrying the google.rpc code the spec
asks for (INVALID_ARGUMENT for a malformed entity, NOT_FOUND for an unknown
reference, ...).  A table entry's identity is its *match key*: a tuple of one
component per present match field, ordered by field id, plus the priority.
Values inside the key are canonical bytestrings, so a padded and an unpadded
encoding of the same value are the same entry.

This is the hot path of a Write (tens of thousands of entries per second), so
it works directly on the protobuf fields and avoids per-entry objects.
"""

from __future__ import annotations

from typing import Any

from google.rpc import code_pb2
from p4.v1 import p4runtime_pb2

from xpunet.p4rt.schema import (
    ActionScope,
    ActionSpec,
    BitField,
    MatchKind,
    PipelineSchema,
    TableSpec,
    canonical,
    check_lpm,
    check_priority,
    check_range,
    check_ternary,
    check_value,
)

MatchKey = tuple[Any, ...]

_EXACT = MatchKind.EXACT
_LPM = MatchKind.LPM
_TERNARY = MatchKind.TERNARY
_RANGE = MatchKind.RANGE
_OPTIONAL = MatchKind.OPTIONAL
_KIND_ONEOF = {
    _EXACT: "exact",
    _LPM: "lpm",
    _TERNARY: "ternary",
    _RANGE: "range",
    _OPTIONAL: "optional",
}


class EntityError(Exception):
    """One entity is rejected.  ``code`` is a google.rpc.Code value."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code_pb2.Code.Name(code)}: {message}")


def invalid(message: str) -> EntityError:
    return EntityError(code_pb2.INVALID_ARGUMENT, message)


class Canonicaliser:
    """Checks values and reports whether any needed rewriting to canonical form.

    ``strict`` rejects non-canonical bytestrings outright (useful to catch an
    encoder that pads); otherwise they are accepted, per the spec, and stored in
    canonical form so Read returns canonical values.
    """

    __slots__ = ("rewrote", "strict")

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.rewrote = False

    def value(self, width: BitField, data: bytes, what: str) -> bytes:
        problem = check_value(width, data)
        if problem is not None:
            raise invalid(f"{what}: {problem}")
        if len(data) > 1 and data[0] == 0:
            if self.strict:
                raise invalid(f"{what}: non-canonical bytestring {data.hex()} (leading zero bytes)")
            self.rewrote = True
            return canonical(data)
        return data


def table_of(schema: PipelineSchema, table_id: int) -> TableSpec:
    table = schema.tables_by_id.get(table_id)
    if table is None:
        raise invalid(f"table id {table_id:#x} is not in the pipeline")
    return table


def match_key(table: TableSpec, entry: p4runtime_pb2.TableEntry, canon: Canonicaliser) -> MatchKey:
    """The canonical identity of ``entry`` in ``table`` (validates every match field)."""
    fields = table.fields_by_id
    parts: list[tuple[int, Any]] = []
    exact_seen = 0
    for fm in entry.match:
        fid = fm.field_id
        spec = fields.get(fid)
        if spec is None:
            raise invalid(f"table {table.name}: match field id {fid} does not exist")
        kind = spec.match_kind
        which = fm.WhichOneof("field_match_type")
        if which != _KIND_ONEOF[kind]:
            raise invalid(f"table {table.name}: field {spec.name} is {kind.value}, got {which or 'nothing'}")
        what = f"table {table.name}: field {spec.name}"
        width = spec.width
        comp: Any
        if kind is _EXACT:
            comp = canon.value(width, fm.exact.value, what)
            exact_seen += 1
        elif kind is _LPM:
            value = canon.value(width, fm.lpm.value, what)
            problem = check_lpm(width, value, fm.lpm.prefix_len)
            if problem is not None:
                raise invalid(f"{what}: {problem}")
            comp = (value, fm.lpm.prefix_len)
        elif kind is _TERNARY:
            value = canon.value(width, fm.ternary.value, what)
            mask = canon.value(width, fm.ternary.mask, what + " mask")
            problem = check_ternary(width, value, mask)
            if problem is not None:
                raise invalid(f"{what}: {problem}")
            comp = (value, mask)
        elif kind is _RANGE:
            low = canon.value(width, fm.range.low, what + " low")
            high = canon.value(width, fm.range.high, what + " high")
            problem = check_range(width, low, high)
            if problem is not None:
                raise invalid(f"{what}: {problem}")
            comp = (low, high)
        else:
            comp = canon.value(width, fm.optional.value, what)
        parts.append((fid, comp))
    if exact_seen != table.exact_count:
        raise invalid(f"table {table.name}: every exact field must be present")
    if len(parts) > 1:
        parts.sort(key=_first)
        for i in range(1, len(parts)):
            if parts[i][0] == parts[i - 1][0]:
                raise invalid(f"table {table.name}: match field id {parts[i][0]} repeated")
    problem = check_priority(table, entry.priority)
    if problem is not None:
        raise invalid(problem)
    return (*parts, entry.priority)


def _first(part: tuple[int, Any]) -> int:
    return part[0]


def check_action(
    schema: PipelineSchema,
    table: TableSpec,
    action: p4runtime_pb2.Action,
    canon: Canonicaliser,
    *,
    default: bool,
) -> ActionSpec:
    ref = table.actions_by_id.get(action.action_id)
    if ref is None:
        raise invalid(f"table {table.name}: action id {action.action_id:#x} is not one of its actions")
    if default and ref.scope is ActionScope.TABLE_ONLY:
        raise invalid(f"table {table.name}: action {schema.name_of(ref.action_id)} is table-only")
    if not default and ref.scope is ActionScope.DEFAULT_ONLY:
        raise invalid(f"table {table.name}: action {schema.name_of(ref.action_id)} is default-only")
    spec = schema.actions_by_id[action.action_id]
    check_params(spec, action, canon)
    return spec


def check_params(spec: ActionSpec, action: p4runtime_pb2.Action, canon: Canonicaliser) -> None:
    by_id = spec.params_by_id
    seen: set[int] = set()
    for p in action.params:
        ps = by_id.get(p.param_id)
        if ps is None:
            raise invalid(f"action {spec.name}: param id {p.param_id} does not exist")
        if p.param_id in seen:
            raise invalid(f"action {spec.name}: param {ps.name} repeated")
        seen.add(p.param_id)
        raw = p.value
        value = canon.value(ps.width, raw, f"action {spec.name}: param {ps.name}")
        if value is not raw:
            p.value = value
    if len(seen) != len(by_id):
        missing = sorted(ps.name for pid, ps in by_id.items() if pid not in seen)
        raise invalid(f"action {spec.name}: missing param(s) {', '.join(missing)}")


def canonicalise_match(entry: p4runtime_pb2.TableEntry) -> None:
    """Rewrite every match value of ``entry`` to canonical form (after validation)."""
    for fm in entry.match:
        which = fm.WhichOneof("field_match_type")
        if which == "exact":
            fm.exact.value = canonical(fm.exact.value)
        elif which == "lpm":
            fm.lpm.value = canonical(fm.lpm.value)
        elif which == "ternary":
            fm.ternary.value = canonical(fm.ternary.value)
            fm.ternary.mask = canonical(fm.ternary.mask)
        elif which == "range":
            fm.range.low = canonical(fm.range.low)
            fm.range.high = canonical(fm.range.high)
        elif which == "optional":
            fm.optional.value = canonical(fm.optional.value)
