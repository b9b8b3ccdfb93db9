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

Slots = tuple[Any, ...]  # one component per match field (None: omitted), then the priority
# A table entry's identity: its slots, or for tables on the wire fast path (.wirekey) the canonical
# bytes of its match fields.
MatchKey = Slots | bytes

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


def match_key(table: TableSpec, entry: p4runtime_pb2.TableEntry, canon: Canonicaliser) -> Slots:
    """The canonical identity of ``entry`` in ``table`` (validates every match field).

    Layout: one slot per match field of the table, in P4Info order (None for an
    omitted don't-care field), then the priority.  :func:`fast_key` builds the
    same layout.
    """
    index = table.field_index
    slots: list[Any] = [None] * len(index)
    exact_seen = 0
    for fm in entry.match:
        fid = fm.field_id
        pos = index.get(fid)
        if pos is None:
            raise invalid(f"table {table.name}: match field id {fid} does not exist")
        spec = table.match_fields[pos]
        if slots[pos] is not None:
            raise invalid(f"table {table.name}: match field {spec.name} repeated")
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
        slots[pos] = comp
    if exact_seen != table.exact_count:
        raise invalid(f"table {table.name}: every exact field must be present")
    problem = check_priority(table, entry.priority)
    if problem is not None:
        raise invalid(problem)
    slots.append(entry.priority)
    return tuple(slots)


# ----------------------------------------------------------------- fast path
#
# The common case (canonical values, a valid entry) decided with as few
# protobuf accesses and Python calls as possible.  ``None``/False means "not
# sure": the caller then runs the full check above, which gives the verdict and
# the error message.  The fast path never accepts what the full check rejects.

_K_EXACT, _K_LPM, _K_TERNARY, _K_RANGE, _K_OPTIONAL = range(5)
_KIND_CODE = {_EXACT: _K_EXACT, _LPM: _K_LPM, _TERNARY: _K_TERNARY, _RANGE: _K_RANGE, _OPTIONAL: _K_OPTIONAL}
_MAX_PRIORITY = 0x7FFFFFFF


class KeyPlan:
    """Per-table facts for the fast path, precomputed once per installed pipeline."""

    __slots__ = ("actions", "exact_count", "fields", "needs_priority", "nfields")

    def __init__(self, schema: PipelineSchema, table: TableSpec) -> None:
        self.fields = {
            f.id: (pos, _KIND_CODE[f.match_kind], f.width.nbytes, f.width.max_first_byte, f.bitwidth)
            for pos, f in enumerate(table.match_fields)
        }
        self.nfields = len(table.match_fields)
        self.exact_count = table.exact_count
        self.needs_priority = table.needs_priority
        # action id -> ({param id: (bit, nbytes, max lead byte)}, all bits)
        self.actions: dict[int, tuple[dict[int, tuple[int, int, int]], int]] = {}
        for ref in table.action_refs:
            if ref.scope is ActionScope.DEFAULT_ONLY:
                continue
            spec = schema.actions_by_id[ref.action_id]
            params = {
                p.id: (1 << i, p.width.nbytes, p.width.max_first_byte) for i, p in enumerate(spec.params)
            }
            self.actions[ref.action_id] = (params, (1 << len(spec.params)) - 1)


def fast_key(plan: KeyPlan, entry: p4runtime_pb2.TableEntry) -> Slots | None:
    fields = plan.fields
    slots: list[Any] = [None] * plan.nfields
    exact_seen = 0
    for fm in entry.match:
        info = fields.get(fm.field_id)
        if info is None:
            return None
        pos, kind, nbytes, maxb, bitwidth = info
        if slots[pos] is not None:
            return None
        if kind == _K_EXACT:
            v = fm.exact.value
            n = len(v)
            if not (0 < n <= nbytes and (n == 1 or v[0]) and (n < nbytes or v[0] <= maxb)):
                return None
            slots[pos] = v
            exact_seen += 1
        elif kind == _K_LPM:
            lpm = fm.lpm
            v = lpm.value
            plen = lpm.prefix_len
            n = len(v)
            if not (0 < n <= nbytes and (n == 1 or v[0]) and (n < nbytes or v[0] <= maxb)):
                return None
            if not 0 < plen <= bitwidth or int.from_bytes(v, "big") & ((1 << (bitwidth - plen)) - 1):
                return None
            slots[pos] = (v, plen)
        elif kind == _K_TERNARY:
            t = fm.ternary
            v = t.value
            m = t.mask
            n = len(v)
            if not (0 < n <= nbytes and (n == 1 or v[0]) and (n < nbytes or v[0] <= maxb)):
                return None
            n = len(m)
            if not (0 < n <= nbytes and (n == 1 or m[0]) and (n < nbytes or m[0] <= maxb)):
                return None
            mi = int.from_bytes(m, "big")
            if mi == 0 or int.from_bytes(v, "big") & ~mi:
                return None
            slots[pos] = (v, m)
        elif kind == _K_RANGE:
            r = fm.range
            lo = r.low
            hi = r.high
            n = len(lo)
            if not (0 < n <= nbytes and (n == 1 or lo[0]) and (n < nbytes or lo[0] <= maxb)):
                return None
            n = len(hi)
            if not (0 < n <= nbytes and (n == 1 or hi[0]) and (n < nbytes or hi[0] <= maxb)):
                return None
            li = int.from_bytes(lo, "big")
            hi_i = int.from_bytes(hi, "big")
            if li > hi_i or (li == 0 and hi_i == (1 << bitwidth) - 1):
                return None
            slots[pos] = (lo, hi)
        else:
            v = fm.optional.value
            n = len(v)
            if not (0 < n <= nbytes and (n == 1 or v[0]) and (n < nbytes or v[0] <= maxb)):
                return None
            slots[pos] = v
    if exact_seen != plan.exact_count:
        return None
    priority = entry.priority
    if plan.needs_priority:
        if not 0 < priority <= _MAX_PRIORITY:
            return None
    elif priority:
        return None
    slots.append(priority)
    return tuple(slots)


def fast_action_ok(plan: KeyPlan, action: p4runtime_pb2.Action) -> bool:
    known = plan.actions.get(action.action_id)
    if known is None:
        return False
    params, full = known
    seen = 0
    for p in action.params:
        info = params.get(p.param_id)
        if info is None:
            return False
        bit, nbytes, maxb = info
        if seen & bit:
            return False
        seen |= bit
        v = p.value
        n = len(v)
        if not (0 < n <= nbytes and (n == 1 or v[0]) and (n < nbytes or v[0] <= maxb)):
            return False
    return seen == full


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
