"""A pipeline's P4Runtime contract as plain data, and the value rules of the spec.

This room is pure (no protobuf, no I/O).  `xpunet.p4rt.p4info` turns a P4Info
message into a :class:`PipelineSchema`; the client, the softipu server and the
lowering all reason over these frozen types: name <-> id maps, the bitwidth and
match kind of every field, which tables need a priority, and the bytestring
rules of P4Runtime (spec section "Bytestrings"):

* a value is an unsigned big-endian bytestring; the empty string is invalid;
* a receiver accepts any length as long as the value fits the bitwidth;
* the *canonical* form, which every encoder (and every Read reply) uses, is the
  shortest string that holds the value (no leading zero bytes; zero is b"\\x00").

Match validation (`check_*`) returns ``None`` when the component is valid and a
human-readable problem otherwise; callers map that to INVALID_ARGUMENT.  The
functions take raw bytes and ints so the server can call them on protobuf fields
without building intermediate objects per entry.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class MatchKind(enum.Enum):
    EXACT = "exact"
    LPM = "lpm"
    TERNARY = "ternary"
    RANGE = "range"
    OPTIONAL = "optional"


class ActionScope(enum.Enum):
    TABLE_AND_DEFAULT = "table_and_default"
    TABLE_ONLY = "table_only"
    DEFAULT_ONLY = "default_only"


# Match kinds whose presence makes a table need an explicit priority (> 0).
PRIORITY_KINDS = frozenset({MatchKind.TERNARY, MatchKind.RANGE, MatchKind.OPTIONAL})


@dataclass(frozen=True, slots=True)
class BitField:
    """Width facts for one unsigned bit<W> value, precomputed for fast checks."""

    bitwidth: int
    nbytes: int = field(init=False)
    max_first_byte: int = field(init=False)  # the largest lead byte allowed when len == nbytes
    max_value: int = field(init=False)

    def __post_init__(self) -> None:
        if self.bitwidth <= 0:
            raise ValueError(f"bitwidth must be > 0, got {self.bitwidth}")
        object.__setattr__(self, "nbytes", (self.bitwidth + 7) // 8)
        rest = self.bitwidth % 8
        object.__setattr__(self, "max_first_byte", 0xFF if rest == 0 else (1 << rest) - 1)
        object.__setattr__(self, "max_value", (1 << self.bitwidth) - 1)


@dataclass(frozen=True, slots=True)
class MatchFieldSpec:
    id: int
    name: str
    bitwidth: int
    match_kind: MatchKind
    width: BitField = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", BitField(self.bitwidth))


@dataclass(frozen=True, slots=True)
class ParamSpec:
    id: int
    name: str
    bitwidth: int
    width: BitField = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", BitField(self.bitwidth))


@dataclass(frozen=True, slots=True)
class ActionSpec:
    id: int
    name: str
    params: tuple[ParamSpec, ...] = ()
    params_by_id: Mapping[int, ParamSpec] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params_by_id", {p.id: p for p in self.params})

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"action {self.name}: no parameter {name!r}")


@dataclass(frozen=True, slots=True)
class ActionRef:
    action_id: int
    scope: ActionScope = ActionScope.TABLE_AND_DEFAULT


@dataclass(frozen=True, slots=True)
class TableSpec:
    id: int
    name: str
    match_fields: tuple[MatchFieldSpec, ...]
    action_refs: tuple[ActionRef, ...]
    size: int = 0
    const_default_action_id: int = 0
    initial_default_action_id: int = 0  # 0: the P4Info names none (NoAction-like miss)
    implementation_id: int = 0  # an action profile: entries point at members / groups
    direct_counter_id: int = 0
    is_const_table: bool = False
    fields_by_id: Mapping[int, MatchFieldSpec] = field(init=False, compare=False, repr=False)
    actions_by_id: Mapping[int, ActionRef] = field(init=False, compare=False, repr=False)
    needs_priority: bool = field(init=False, compare=False)
    exact_count: int = field(init=False, compare=False)  # exact fields may never be omitted
    field_index: Mapping[int, int] = field(init=False, compare=False, repr=False)  # field id -> position

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields_by_id", {f.id: f for f in self.match_fields})
        object.__setattr__(self, "field_index", {f.id: i for i, f in enumerate(self.match_fields)})
        object.__setattr__(
            self, "exact_count", sum(1 for f in self.match_fields if f.match_kind is MatchKind.EXACT)
        )
        object.__setattr__(self, "actions_by_id", {a.action_id: a for a in self.action_refs})
        object.__setattr__(
            self, "needs_priority", any(f.match_kind in PRIORITY_KINDS for f in self.match_fields)
        )

    def match_field(self, name: str) -> MatchFieldSpec:
        for f in self.match_fields:
            if f.name == name:
                return f
        raise KeyError(f"table {self.name}: no match field {name!r}")


@dataclass(frozen=True, slots=True)
class ActionProfileSpec:
    id: int
    name: str
    table_ids: tuple[int, ...]
    with_selector: bool
    size: int
    max_group_size: int


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """An indirect counter array (or, with ``direct_table_id``, a direct counter)."""

    id: int
    name: str
    unit: str  # "bytes", "packets", "both"
    size: int = 0
    direct_table_id: int = 0


@dataclass(frozen=True, slots=True)
class PipelineSchema:
    """Everything a P4Runtime peer must know about a pipeline, indexed both ways."""

    tables: tuple[TableSpec, ...]
    actions: tuple[ActionSpec, ...]
    action_profiles: tuple[ActionProfileSpec, ...] = ()
    counters: tuple[CounterSpec, ...] = ()
    direct_counters: tuple[CounterSpec, ...] = ()
    tables_by_id: Mapping[int, TableSpec] = field(init=False, compare=False, repr=False)
    actions_by_id: Mapping[int, ActionSpec] = field(init=False, compare=False, repr=False)
    profiles_by_id: Mapping[int, ActionProfileSpec] = field(init=False, compare=False, repr=False)
    counters_by_id: Mapping[int, CounterSpec] = field(init=False, compare=False, repr=False)
    direct_counters_by_id: Mapping[int, CounterSpec] = field(init=False, compare=False, repr=False)
    ids_by_name: Mapping[str, int] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables_by_id", {t.id: t for t in self.tables})
        object.__setattr__(self, "actions_by_id", {a.id: a for a in self.actions})
        object.__setattr__(self, "profiles_by_id", {p.id: p for p in self.action_profiles})
        object.__setattr__(self, "counters_by_id", {c.id: c for c in self.counters})
        object.__setattr__(self, "direct_counters_by_id", {c.id: c for c in self.direct_counters})
        names: dict[str, int] = {}
        for kind, objs in (
            ("table", self.tables),
            ("action", self.actions),
            ("action_profile", self.action_profiles),
            ("counter", self.counters),
            ("direct_counter", self.direct_counters),
        ):
            for obj in objs:
                names[f"{kind}:{obj.name}"] = obj.id
        object.__setattr__(self, "ids_by_name", names)

    def table(self, name: str) -> TableSpec:
        return self.tables_by_id[self._id("table", name)]

    def action(self, name: str) -> ActionSpec:
        return self.actions_by_id[self._id("action", name)]

    def action_profile(self, name: str) -> ActionProfileSpec:
        return self.profiles_by_id[self._id("action_profile", name)]

    def counter(self, name: str) -> CounterSpec:
        return self.counters_by_id[self._id("counter", name)]

    def _id(self, kind: str, name: str) -> int:
        try:
            return self.ids_by_name[f"{kind}:{name}"]
        except KeyError:
            raise KeyError(f"pipeline has no {kind} named {name!r}") from None

    def name_of(self, obj_id: int) -> str:
        """The name of any table/action/profile/counter id, for error messages."""
        for lookup in (
            self.tables_by_id,
            self.actions_by_id,
            self.profiles_by_id,
            self.counters_by_id,
            self.direct_counters_by_id,
        ):
            obj = lookup.get(obj_id)
            if obj is not None:
                return obj.name
        return f"#{obj_id:#x}"


# ---------------------------------------------------------------- bytestrings


def encode_uint(value: int, bitwidth: int | None = None) -> bytes:
    """The canonical bytestring of an unsigned integer (checked against ``bitwidth``)."""
    if value < 0:
        raise ValueError(f"negative value {value} cannot be a P4Runtime bytestring")
    if bitwidth is not None and value >> bitwidth:
        raise ValueError(f"value {value} does not fit in {bitwidth} bits")
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def decode_uint(data: bytes) -> int:
    return int.from_bytes(data, "big")


def canonical(data: bytes) -> bytes:
    """Strip leading zero bytes, keeping one byte for zero.  ``data`` must be non-empty."""
    if len(data) > 1 and data[0] == 0:
        stripped = data.lstrip(b"\x00")
        return stripped or b"\x00"
    return data


def is_canonical(data: bytes) -> bool:
    return len(data) == 1 or (len(data) > 1 and data[0] != 0)


def check_value(width: BitField, data: bytes) -> str | None:
    """``None`` when ``data`` is a valid bytestring for ``width`` (any length that fits)."""
    n = len(data)
    if n == 0:
        return "empty bytestring"
    if n < width.nbytes or (n == width.nbytes and data[0] <= width.max_first_byte):
        return None
    # Longer than needed is legal only when the surplus is leading zeros.
    value = data.lstrip(b"\x00")
    if len(value) < width.nbytes or (len(value) == width.nbytes and value[0] <= width.max_first_byte):
        return None
    return f"value {data.hex()} does not fit in {width.bitwidth} bits"


# ------------------------------------------------------- match components


def check_lpm(width: BitField, value: bytes, prefix_len: int) -> str | None:
    problem = check_value(width, value)
    if problem is not None:
        return problem
    if prefix_len <= 0:
        return "lpm prefix_len 0 is a don't-care: omit the field instead"
    if prefix_len > width.bitwidth:
        return f"lpm prefix_len {prefix_len} exceeds bitwidth {width.bitwidth}"
    host_bits = width.bitwidth - prefix_len
    if decode_uint(value) & ((1 << host_bits) - 1):
        return f"lpm value {value.hex()} has bits set beyond prefix /{prefix_len}"
    return None


def check_ternary(width: BitField, value: bytes, mask: bytes) -> str | None:
    problem = check_value(width, value) or check_value(width, mask)
    if problem is not None:
        return problem
    m = decode_uint(mask)
    if m == 0:
        return "ternary mask 0 is a don't-care: omit the field instead"
    if decode_uint(value) & ~m:
        return f"ternary value {value.hex()} has bits set outside mask {mask.hex()}"
    return None


def check_range(width: BitField, low: bytes, high: bytes) -> str | None:
    problem = check_value(width, low) or check_value(width, high)
    if problem is not None:
        return problem
    lo, hi = decode_uint(low), decode_uint(high)
    if lo > hi:
        return f"range low {lo} > high {hi}"
    if lo == 0 and hi == width.max_value:
        return "range covering every value is a don't-care: omit the field instead"
    return None


def check_priority(table: TableSpec, priority: int) -> str | None:
    if table.needs_priority:
        if priority <= 0:
            return f"table {table.name} has ternary/range/optional fields: priority must be > 0"
        if priority > 0x7FFFFFFF:
            return f"priority {priority} exceeds 2^31-1"
    elif priority != 0:
        return f"table {table.name} has only exact/lpm fields: priority must be 0, got {priority}"
    return None
