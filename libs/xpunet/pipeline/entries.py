"""Table entries of the xpunet pipeline as frozen values, independent of P4Runtime protobufs.

An entry is (table, match, priority) → (action, params).  Values are plain
ints (addresses as integers), match fields appear in the table's key order and
don't-care fields are omitted, as P4Runtime requires (a ternary with mask 0, a
range covering the whole field, an LPM of length 0 are never sent).  So two
equal entries compare equal, and :attr:`TableEntry.key` identifies an entry
the way a P4Runtime server does.

``origin`` says which intent an entry came from (for error reports and
traces); it takes no part in equality.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from xpunet.pipeline.schema import SCHEMA, FieldSpec, Schema, TableSpec, qualified


@dataclass(frozen=True, slots=True)
class Exact:
    value: int

    def __hash__(self) -> int:
        # Equal exactly when the values are: the value's hash will do, without the generated
        # hash's 1-tuple (entry keys are hashed ~5 times per entry on a node's first pass).
        return hash(self.value)


@dataclass(frozen=True, slots=True)
class Lpm:
    value: int
    prefix_len: int


@dataclass(frozen=True, slots=True)
class Ternary:
    value: int
    mask: int


@dataclass(frozen=True, slots=True)
class Range:
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Optional:
    value: int


FieldMatch = Exact | Lpm | Ternary | Range | Optional
EntryKey = tuple[str, tuple[tuple[str, FieldMatch], ...], int]


class EntryError(ValueError):
    """An entry does not fit the pipeline (names the table and field)."""


@dataclass(frozen=True, slots=True)
class TableEntry:
    table: str
    match: tuple[tuple[str, FieldMatch], ...]
    action: str
    params: tuple[tuple[str, int], ...] = ()
    priority: int = 0
    origin: str = field(default="", compare=False)
    # The key, made on first use and kept: every index of a node's entries (the lowering's, the
    # reconciler's) then holds this one tuple instead of a copy each (~64 bytes per entry each).
    _key: EntryKey | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> EntryKey:
        k = self._key
        if k is None:
            k = (self.table, self.match, self.priority)
            object.__setattr__(self, "_key", k)
        return k

    def match_of(self, name: str) -> FieldMatch | None:
        for n, m in self.match:
            if n == name:
                return m
        return None

    def param(self, name: str) -> int:
        for n, v in self.params:
            if n == name:
                return v
        raise KeyError(f"{self.action} has no parameter {name!r}")

    @property
    def alias(self) -> str:
        return self.table.rsplit(".", 1)[-1]


# --- building entries fast -------------------------------------------------------------------
# The dataclass __init__ of a frozen class sets each field through object.__setattr__ (~0.9 µs an
# entry); a node's first pass builds ~10M of them.  new_entry sets the slots directly (~0.45 µs)
# and the key with them.  The field list is checked here, so a new field cannot be missed.
_SLOTS = ("table", "match", "action", "params", "priority", "origin", "_key")
if tuple(f.name for f in fields(TableEntry)) != _SLOTS:  # pragma: no cover - a programming error
    raise RuntimeError("TableEntry's fields changed: update new_entry")
_new_object = object.__new__
_set_table, _set_match, _set_action, _set_params, _set_priority, _set_origin, _set_key = (
    TableEntry.__dict__[name].__set__ for name in _SLOTS
)


def new_entry(
    table: str,
    match: tuple[tuple[str, FieldMatch], ...],
    action: str,
    params: tuple[tuple[str, int], ...],
    priority: int,
    origin: str,
) -> TableEntry:
    """``TableEntry(table, match, action, params, priority, origin)``, equal in every way, built
    without the dataclass __init__ (hot paths; no check, like the constructor)."""
    e: TableEntry = _new_object(TableEntry)
    _set_table(e, table)
    _set_match(e, match)
    _set_action(e, action)
    _set_params(e, params)
    _set_priority(e, priority)
    _set_origin(e, origin)
    _set_key(e, (table, match, priority))
    return e


def _is_wildcard(spec: FieldSpec, m: FieldMatch) -> bool:
    full = (1 << spec.bitwidth) - 1
    if isinstance(m, Ternary):
        return m.mask == 0
    if isinstance(m, Range):
        return m.low == 0 and m.high == full
    if isinstance(m, Lpm):
        return m.prefix_len == 0
    return False


def make_entry(
    table: str,
    match: Mapping[str, FieldMatch],
    action: str,
    params: Mapping[str, int] | None = None,
    *,
    priority: int = 0,
    origin: str = "",
    schema: Schema = SCHEMA,
) -> TableEntry:
    """A canonical, validated entry: names qualified, fields in key order, wildcards dropped.

    Names (table, fields, action, parameters) are checked once per layout (see
    :func:`entry_layout`); each call checks only the values.
    """
    params = params or {}
    layout = entry_layout(table, tuple(match), action, tuple(params), schema=schema)
    return layout.make(match, params, priority=priority, origin=origin)


class EntryLayout:
    """One (table, given fields, action, given parameters) combination, validated once.

    Building entries through a layout checks only the values (match kinds, bit
    widths, priority); the names were checked when the layout was made, so the
    hot paths of the lowering pay for a few comparisons per entry, not for a
    schema walk.
    """

    __slots__ = ("_fields", "_params", "_priority", "action", "action_spec", "spec", "table")

    def __init__(
        self,
        table: str,
        fields: tuple[str, ...],
        action: str,
        params: tuple[str, ...],
        *,
        schema: Schema = SCHEMA,
    ) -> None:
        spec = schema.table(qualified(table))
        action_spec = schema.action(qualified(action))
        self.spec = spec
        self.action_spec = action_spec
        self.table = spec.name
        self.action = action_spec.name
        names = {f.name for f in spec.key}
        for n in fields:
            if n not in names:
                raise EntryError(f"{spec.alias}: no key field {n!r}")
        if action_spec.name not in spec.action_names() or action_spec.name == spec.default_action:
            raise EntryError(
                f"{spec.alias}: action {action_spec.alias} is not allowed in entries of this table"
            )
        for f in spec.key:
            if f.match_kind == "exact" and f.name not in fields:
                raise EntryError(f"{spec.alias}: exact field {f.name} is missing")
        pnames = {p.name for p in action_spec.params}
        for n in params:
            if n not in pnames:
                raise EntryError(f"{spec.alias}: action {action_spec.alias} has no parameter {n!r}")
        for p in action_spec.params:
            if p.name not in params:
                raise EntryError(f"{spec.alias}: action {action_spec.alias} parameter {p.name} is missing")
        # Key order of the table, only the fields given.
        self._fields = tuple(f for f in spec.key if f.name in fields)
        self._params = tuple((p.name, (1 << p.bitwidth) - 1, p.bitwidth) for p in action_spec.params)
        self._priority = spec.needs_priority

    def make(
        self,
        match: Mapping[str, FieldMatch],
        params: Mapping[str, int],
        *,
        priority: int = 0,
        origin: str = "",
    ) -> TableEntry:
        """The entry with these values; raises :class:`EntryError` naming a value that does not fit."""
        spec = self.spec
        match_t: list[tuple[str, FieldMatch]] = []
        for f in self._fields:
            m = match[f.name]
            problem = _check_field(spec, f, m)
            if problem is not None:
                raise EntryError(problem)
            if not _is_wildcard(f, m):
                match_t.append((f.name, m))
        params_t: list[tuple[str, int]] = []
        for name, full, width in self._params:
            v = params[name]
            if not 0 <= v <= full:
                raise EntryError(
                    f"{spec.alias}: {self.action_spec.alias}({name}={v}) does not fit bit<{width}>"
                )
            params_t.append((name, v))
        self.check_priority(priority)
        return new_entry(self.table, tuple(match_t), self.action, tuple(params_t), priority, origin)

    def check_priority(self, priority: int) -> None:
        if self._priority and priority <= 0:
            raise EntryError(f"{self.spec.alias}: entries need a priority > 0")
        if not self._priority and priority != 0:
            raise EntryError(f"{self.spec.alias}: entries take no priority")

    def fits(self, field_name: str, value: int) -> bool:
        """Whether ``value`` fits the key field (for hot paths that build matches themselves)."""
        for f in self._fields:
            if f.name == field_name:
                return 0 <= value < (1 << f.bitwidth)
        raise KeyError(f"{self.spec.alias}: layout has no field {field_name!r}")

    def check_params(self, params: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        """The parameters as an entry holds them, checked (for hot paths sharing them across entries)."""
        out: list[tuple[str, int]] = []
        for name, full, width in self._params:
            v = params[name]
            if not 0 <= v <= full:
                raise EntryError(
                    f"{self.spec.alias}: {self.action_spec.alias}({name}={v}) does not fit bit<{width}>"
                )
            out.append((name, v))
        return tuple(out)


_LAYOUTS: dict[int, tuple[Schema, dict[tuple[str, tuple[str, ...], str, tuple[str, ...]], EntryLayout]]] = {}


def entry_layout(
    table: str, fields: tuple[str, ...], action: str, params: tuple[str, ...], *, schema: Schema = SCHEMA
) -> EntryLayout:
    """The (cached) layout of entries of ``table`` with these fields, action and parameters."""
    held = _LAYOUTS.get(id(schema))
    if held is None or held[0] is not schema:
        # Keyed by identity (hashing a whole schema per entry would cost more than validating);
        # the schema is held so its id cannot be reused while cached.
        held = (schema, {})
        _LAYOUTS[id(schema)] = held
    cache = held[1]
    k = (table, fields, action, params)
    layout = cache.get(k)
    if layout is None:
        layout = EntryLayout(table, fields, action, params, schema=schema)
        cache[k] = layout
    return layout


def check_entry(
    entry: TableEntry,
    schema: Schema = SCHEMA,
    *,
    given_fields: Iterable[str] | None = None,
    given_params: Iterable[str] | None = None,
) -> str | None:
    """``None`` if the entry is valid for the pipeline, else the problem in words."""
    try:
        spec = schema.table(entry.table)
        action = schema.action(entry.action)
    except KeyError as exc:
        return str(exc.args[0])
    names = {f.name for f in spec.key}
    for n in given_fields or ():
        if n not in names:
            return f"{spec.alias}: no key field {n!r}"
    if entry.action not in spec.action_names() or entry.action == spec.default_action:
        return f"{spec.alias}: action {action.alias} is not allowed in entries of this table"
    for f in spec.key:
        m = entry.match_of(f.name)
        if m is None:
            if f.match_kind == "exact":
                return f"{spec.alias}: exact field {f.name} is missing"
            continue
        problem = _check_field(spec, f, m)
        if problem is not None:
            return problem
    pnames = {p.name for p in action.params}
    for n in given_params or ():
        if n not in pnames:
            return f"{spec.alias}: action {action.alias} has no parameter {n!r}"
    got = dict(entry.params)
    for p in action.params:
        if p.name not in got:
            return f"{spec.alias}: action {action.alias} parameter {p.name} is missing"
        if not 0 <= got[p.name] < (1 << p.bitwidth):
            return f"{spec.alias}: {action.alias}({p.name}={got[p.name]}) does not fit bit<{p.bitwidth}>"
    if spec.needs_priority and entry.priority <= 0:
        return f"{spec.alias}: entries need a priority > 0"
    if not spec.needs_priority and entry.priority != 0:
        return f"{spec.alias}: entries take no priority"
    return None


def _check_field(spec: TableSpec, f: FieldSpec, m: FieldMatch) -> str | None:
    full = (1 << f.bitwidth) - 1
    where = f"{spec.alias}.{f.name}"
    kind = {Exact: "exact", Lpm: "lpm", Ternary: "ternary", Range: "range", Optional: "optional"}[type(m)]
    if kind != f.match_kind:
        return f"{where}: {kind} match on a {f.match_kind} field"
    if isinstance(m, Exact | Optional):
        if not 0 <= m.value <= full:
            return f"{where}: value {m.value} does not fit bit<{f.bitwidth}>"
    elif isinstance(m, Lpm):
        if not 0 <= m.prefix_len <= f.bitwidth:
            return f"{where}: prefix length {m.prefix_len} out of 0..{f.bitwidth}"
        host = (1 << (f.bitwidth - m.prefix_len)) - 1
        if m.value & host or not 0 <= m.value <= full:
            return f"{where}: value has bits outside the /{m.prefix_len} prefix"
    elif isinstance(m, Ternary):
        if m.value & ~m.mask or not 0 <= m.mask <= full:
            return f"{where}: value has bits outside the mask"
    elif isinstance(m, Range) and not 0 <= m.low <= m.high <= full:
        return f"{where}: range {m.low}..{m.high} is empty or does not fit bit<{f.bitwidth}>"
    return None


def field_matches(m: FieldMatch | None, value: int, bitwidth: int) -> bool:
    """Whether a packet field value matches one match component (``None``: don't care)."""
    if m is None:
        return True
    if isinstance(m, Exact | Optional):
        return value == m.value
    if isinstance(m, Lpm):
        shift = bitwidth - m.prefix_len
        return value >> shift == m.value >> shift
    if isinstance(m, Ternary):
        return value & m.mask == m.value
    return m.low <= value <= m.high


# --- address helpers shared by lowering, interpreter and traces -----------------------------


def ip_int(addr: str) -> tuple[int, int]:
    """``"10.0.0.1"`` → (4, 167772161); raises ValueError naming the address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError as exc:
        raise ValueError(f"not an IP address: {addr!r}") from exc
    return ip.version, int(ip)


def cidr_lpm(cidr: str) -> tuple[int, Lpm]:
    """``"10.0.0.0/24"`` → (4, Lpm(...)); host bits must be clear."""
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError as exc:
        raise ValueError(f"not a CIDR: {cidr!r}") from exc
    return net.version, Lpm(int(net.network_address), net.prefixlen)


def ip_str(value: int, version: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def family_suffix(version: int) -> str:
    return "v4" if version == 4 else "v6"
