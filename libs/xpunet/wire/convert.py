"""Typed conversion between frozen dataclasses and plain maps (the body of every bus message).

``to_wire(obj)`` turns a dataclass instance into a map of plain values that
msgpack can carry; ``from_wire(cls, data)`` checks such a map against the
field types of ``cls`` and rebuilds the instance.  The per-class converters
are built once from the type hints and cached, because this is the hot path
(the watcher pushes every pod of a large cluster through it).

Supported field types, and their wire form:

====================================  ==============================================
``str``, ``int``, ``float``, ``bool``   themselves (``int`` never accepts a bool;
``bytes``, ``None``                     ``float`` accepts an int)
``Literal[...]``                        the value; decoding checks membership
``enum.Enum`` (``StrEnum``, ...)        ``.value``
``tuple[X, ...]``, ``tuple[X, Y]``      a list
``frozenset[X]``                        a sorted list (stable bytes)
``list[X]``                             a list
``Labels`` (``xpunet.model``)           a map str→str (already sorted)
``Mapping[str, X]``, ``dict[str, X]``   a map with sorted keys; decodes to a ``dict``
a dataclass                             a map, field name → value (see below)
``X | None``                            ``None`` or X's form
``X | Y`` (scalars, enums)              X's or Y's form; decoding tries each in order
``A | B`` (dataclasses)                 A's or B's map plus ``"_t": "<class name>"``
====================================  ==============================================

Dataclass maps: the key is the field name, or ``field(metadata={"wire":
"k"})`` to pick another (to rename a field without changing the wire, or to
keep a retired key from being reused).  Every ``init`` field is written, in
declaration order, so equal objects give equal maps and equal msgpack bytes.
Decoding ignores unknown keys (newer writers), applies the dataclass default
for a missing key (older writers), and raises ``WireError`` naming the class
and the field path for a missing required field or a value of the wrong shape.
Only classes whose type hints resolve at module level are supported.

Speed: each class's plan is also compiled into straight-line Python
(``_codegen``), which handles the common case and hands anything unexpected
to the plan's interpreter here, so results and errors are the interpreter's.
``from_wire_reference``/``to_wire_reference`` run the interpreter alone
(tests check the two agree).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from xpunet.model.objects import Labels
from xpunet.wire import _codegen

__all__ = ["WireError", "from_wire", "to_wire"]

T = TypeVar("T")
Encoder = Callable[[Any], Any]
MapEncoder = Callable[[Any], dict[str, Any]]
Decoder = Callable[[Any], Any]
UNION_TAG: Final = "_t"
_MISSING: Final = object()


class WireError(ValueError):
    """A wire map (or message) does not fit the expected shape.  Names the class and the field."""

    def __init__(self, cls: str, field: str, problem: str) -> None:
        self.cls = cls
        self.field = field  # a path such as "ports[2].port"; "" for the whole value
        self.problem = problem
        super().__init__(f"{cls}: {field}: {problem}" if field else f"{cls}: {problem}")


class _ShapeError(Exception):
    """Raised inside decoders; the path is prepended while unwinding, so the hot path builds no strings."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []

    def at(self, step: str) -> _ShapeError:
        self.path.insert(0, step)
        return self

    def render_path(self) -> str:
        out = ""
        for step in self.path:
            out += step if step.startswith("[") or not out else f".{step}"
        return out


def _typename(value: Any) -> str:
    return type(value).__name__


# --- public API --------------------------------------------------------------------


def to_wire(obj: Any) -> dict[str, Any]:
    """The wire map of a dataclass instance."""
    cls = type(obj)
    codec = _CODECS.get(cls) or _class_codec(cls, _COMPILED)
    return codec.encode(obj)


def from_wire(cls: type[T], data: Any) -> T:
    """Rebuild a ``cls`` from its wire map.  Raises ``WireError`` if the map does not fit."""
    codec = _CODECS.get(cls) or _class_codec(cls, _COMPILED)
    try:
        result: T = codec.decode(data)
    except _ShapeError as exc:
        raise WireError(cls.__qualname__, exc.render_path(), exc.problem) from None
    return result


def to_wire_reference(obj: Any) -> dict[str, Any]:
    """``to_wire`` by the plan interpreter alone, without generated code (for tests and debugging)."""
    cls = type(obj)
    codec = _REFERENCE.codecs.get(cls) or _class_codec(cls, _REFERENCE)
    return codec.encode(obj)


def from_wire_reference(cls: type[T], data: Any) -> T:
    """``from_wire`` by the plan interpreter alone, without generated code (for tests and debugging)."""
    codec = _REFERENCE.codecs.get(cls) or _class_codec(cls, _REFERENCE)
    try:
        result: T = codec.decode(data)
    except _ShapeError as exc:
        raise WireError(cls.__qualname__, exc.render_path(), exc.problem) from None
    return result


# --- per-class codecs ------------------------------------------------------------------


class _Registry:
    """Codecs by class; ``compiled`` registries also generate straight-line code per class."""

    __slots__ = ("codecs", "compiled")

    def __init__(self, *, compiled: bool) -> None:
        self.codecs: dict[type, _ClassCodec] = {}
        self.compiled = compiled


_COMPILED = _Registry(compiled=True)
_REFERENCE = _Registry(compiled=False)
_CODECS = _COMPILED.codecs


class _ClassCodec:
    """The encoder and decoder of one dataclass, built from its type hints once.

    ``encode``/``decode`` are the generated functions once built (in a
    compiled registry), else the plan interpreters ``encode_plan_``/``decode_plan_``.
    """

    __slots__ = (
        "cls",
        "decode",
        "decode_plan",
        "encode",
        "encode_plan",
        "fallbacks",
        "ready",
        "registry",
        "source",
    )

    def __init__(self, cls: type, registry: _Registry) -> None:
        self.cls = cls
        self.registry = registry
        self.ready = False
        self.source = ""  # the generated code, if any
        self.fallbacks = 0  # maps the generated decoder handed to the interpreter (tests watch it)
        self.encode: MapEncoder = self.encode_plan_
        self.decode: Decoder = self.decode_plan_
        # (attribute, key, encoder or None for identity)
        self.encode_plan: tuple[tuple[str, str, Encoder | None], ...] = ()
        # (attribute, key, fast type or None, decoder, required)
        self.decode_plan: tuple[tuple[str, str, type | None, Decoder, bool], ...] = ()

    def build(self) -> None:
        try:
            hints = typing.get_type_hints(self.cls)
        except Exception as exc:  # NameError and friends from unresolvable annotations
            raise TypeError(f"wire: cannot resolve the type hints of {self.cls.__qualname__}: {exc}") from exc
        encode_plan = []
        decode_plan = []
        specs = []
        for f in dataclasses.fields(self.cls):
            if not f.init:
                continue
            key = f.metadata.get("wire", f.name)
            try:
                conv = _converter(hints[f.name], self.registry)
            except TypeError as exc:
                raise TypeError(f"wire: {self.cls.__qualname__}.{f.name}: {exc}") from None
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            encode_plan.append((f.name, key, conv.encode))
            decode_plan.append((f.name, key, conv.fast, conv.decode, required))
            specs.append(
                _codegen.FieldSpec(
                    f.name,
                    key,
                    hints[f.name],
                    conv.encode,
                    conv.decode,
                    conv.fast,
                    required,
                    f.default,
                    f.default_factory,
                )
            )
        self.encode_plan = tuple(encode_plan)
        self.decode_plan = tuple(decode_plan)
        if self.registry.compiled:
            try:
                generated = _codegen.generate(
                    self.cls,
                    specs,
                    codec_of=lambda tp: self.registry.codecs[tp],
                    generic_decode=self._fallback,
                )
            except ValueError:
                pass  # a field that cannot be named in code: the interpreter serves this class
            else:
                self.encode, self.decode, self.source = generated.encode, generated.decode, generated.source
        self.ready = True

    def encode_plan_(self, obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, key, enc in self.encode_plan:
            value = getattr(obj, attr)
            out[key] = value if enc is None else enc(value)
        return out

    def _fallback(self, data: Any) -> Any:
        self.fallbacks += 1
        return self.decode_plan_(data)

    def decode_plan_(self, data: Any) -> Any:
        if not isinstance(data, dict | Mapping):
            raise _ShapeError(f"expected a map for {self.cls.__qualname__}, got {_typename(data)}")
        kwargs: dict[str, Any] = {}
        for attr, key, fast, dec, required in self.decode_plan:
            value = data.get(key, _MISSING)
            if value is _MISSING:
                if required:
                    raise _ShapeError("is required").at(key)
                continue  # the dataclass default applies
            if type(value) is fast:
                kwargs[attr] = value
                continue
            try:
                kwargs[attr] = dec(value)
            except _ShapeError as exc:
                raise exc.at(key) from None
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:  # __post_init__ validation of the class itself
            raise _ShapeError(f"rejected by {self.cls.__qualname__}: {exc}") from None


def _class_codec(cls: type, registry: _Registry) -> _ClassCodec:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"wire: {cls.__qualname__} is not a dataclass")
    codec = _ClassCodec(cls, registry)
    registry.codecs[cls] = codec  # before building, so recursive types find it
    try:
        codec.build()
    except BaseException:
        del registry.codecs[cls]
        raise
    return codec


# --- converters for field types ---------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Conv:
    encode: Encoder | None  # None: the value is its own wire form
    decode: Decoder  # checks and converts any wire value (raises _ShapeError)
    fast: type | None = None  # a wire value of exactly this type is already correct


def _converter(tp: Any, reg: _Registry) -> _Conv:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None) or tp is None:
        return _Conv(None, _expect_none, type(None))
    if tp in (str, bool, bytes):
        return _Conv(None, _exact(tp), tp)
    if tp is int:
        return _Conv(None, _int, int)
    if tp is float:
        return _Conv(None, _float, float)
    if tp is Labels:
        return _Conv(_labels_to_wire, _labels)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        codec = reg.codecs.get(tp) or _class_codec(tp, reg)
        if codec.ready:
            return _Conv(codec.encode, codec.decode)
        # A recursive type, still being built: look its functions up when called.
        return _Conv(lambda v: codec.encode(v), lambda v: codec.decode(v))
    if origin is typing.Literal:
        return _literal(args)
    if origin in (typing.Union, types.UnionType):
        return _union(args, reg)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_converter(args[0], reg), tuple)
        return _fixed_tuple(tuple(_converter(a, reg) for a in args))
    if origin is list:
        return _sequence(_converter(args[0], reg), list)
    if origin is frozenset:
        return _frozenset(_converter(args[0], reg))
    if origin in (dict, Mapping):  # typing.Mapping[...] reports collections.abc.Mapping as its origin
        if args[0] is not str:
            raise TypeError(f"map keys must be str, not {args[0]!r}")
        return _mapping(_converter(args[1], reg))
    raise TypeError(f"unsupported type {tp!r}")


def _expect_none(value: Any) -> None:
    if value is not None:
        raise _ShapeError(f"expected null, got {_typename(value)}")


def _exact(tp: type) -> Decoder:
    name = tp.__name__

    def decode(value: Any) -> Any:
        if type(value) is not tp:
            raise _ShapeError(f"expected {name}, got {_typename(value)}")
        return value

    return decode


def _int(value: Any) -> int:
    if type(value) is not int:  # bool is not an int on the wire
        raise _ShapeError(f"expected int, got {_typename(value)}")
    return value


def _float(value: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise _ShapeError(f"expected float, got {_typename(value)}")


def _labels_to_wire(value: Labels) -> dict[str, str]:
    return dict(value.items())  # Labels iterates in sorted key order


def _labels(value: Any) -> Labels:
    if not isinstance(value, dict | Mapping):
        raise _ShapeError(f"expected a map of labels, got {_typename(value)}")
    for k, v in value.items():
        if type(k) is not str or type(v) is not str:
            raise _ShapeError(f"labels must map str to str, got {_typename(k)} → {_typename(v)}")
    return Labels(value)


def _enum(tp: type[enum.Enum]) -> _Conv:
    def decode(value: Any) -> Any:
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise _ShapeError(f"{value!r} is not a valid {tp.__qualname__}") from None

    return _Conv(_enum_value, decode)


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _literal(allowed: tuple[Any, ...]) -> _Conv:
    # Compare type and value: Literal[1] must not accept True.
    members = frozenset((type(a), a) for a in allowed)
    shown = ", ".join(repr(a) for a in allowed)

    def decode(value: Any) -> Any:
        try:
            ok = (type(value), value) in members
        except TypeError:  # unhashable value
            ok = False
        if not ok:
            raise _ShapeError(f"{value!r} is not one of {shown}")
        return value

    return _Conv(None, decode)


def _sequence(item: _Conv, make: type[tuple[Any, ...]] | type[list[Any]]) -> _Conv:
    enc, dec, fast = item.encode, item.decode, item.fast

    def encode(value: Any) -> list[Any]:
        return list(value) if enc is None else [enc(x) for x in value]

    def decode(value: Any) -> Any:
        if type(value) is not list and type(value) is not tuple:
            raise _ShapeError(f"expected a list, got {_typename(value)}")
        if fast is not None and all(type(x) is fast for x in value):
            return make(value)
        out = []
        for i, x in enumerate(value):
            try:
                out.append(x if type(x) is fast else dec(x))
            except _ShapeError as exc:
                raise exc.at(f"[{i}]") from None
        return make(out)

    return _Conv(encode, decode)


def _fixed_tuple(items: tuple[_Conv, ...]) -> _Conv:
    def encode(value: Any) -> list[Any]:
        return [x if c.encode is None else c.encode(x) for c, x in zip(items, value, strict=True)]

    def decode(value: Any) -> tuple[Any, ...]:
        if type(value) is not list and type(value) is not tuple:
            raise _ShapeError(f"expected a list, got {_typename(value)}")
        if len(value) != len(items):
            raise _ShapeError(f"expected {len(items)} items, got {len(value)}")
        out = []
        for i, (c, x) in enumerate(zip(items, value, strict=True)):
            try:
                out.append(c.decode(x))
            except _ShapeError as exc:
                raise exc.at(f"[{i}]") from None
        return tuple(out)

    return _Conv(encode, decode)


def _frozenset(item: _Conv) -> _Conv:
    seq = _sequence(item, list)
    assert seq.encode is not None

    def encode(value: Any) -> list[Any]:
        assert seq.encode is not None
        out: list[Any] = seq.encode(value)
        try:
            out.sort()
        except TypeError:  # maps or mixed types: order by their (deterministic) rendering
            out.sort(key=repr)
        return out

    def decode(value: Any) -> frozenset[Any]:
        return frozenset(seq.decode(value))

    return _Conv(encode, decode)


def _mapping(value_conv: _Conv) -> _Conv:
    enc, dec, fast = value_conv.encode, value_conv.decode, value_conv.fast

    def encode(value: Mapping[str, Any]) -> dict[str, Any]:
        keys = sorted(value)  # stable bytes whatever the insertion order
        if enc is None:
            return {k: value[k] for k in keys}
        return {k: enc(value[k]) for k in keys}

    def decode(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict | Mapping):
            raise _ShapeError(f"expected a map, got {_typename(value)}")
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _ShapeError(f"map keys must be str, got {_typename(k)}")
            try:
                out[k] = v if type(v) is fast else dec(v)
            except _ShapeError as exc:
                raise exc.at(f"[{k}]") from None
        return out

    return _Conv(encode, decode)


def _union(members: tuple[Any, ...], reg: _Registry) -> _Conv:
    optional = type(None) in members
    rest = tuple(m for m in members if m is not type(None))
    inner = _converter(rest[0], reg) if len(rest) == 1 else _multi(rest, reg)
    if not optional:
        return inner
    enc, dec, fast = inner.encode, inner.decode, inner.fast

    def encode(value: Any) -> Any:
        return None if value is None or enc is None else enc(value)

    def decode(value: Any) -> Any:
        return None if value is None else dec(value)

    return _Conv(None if enc is None else encode, decode, fast)


def _multi(members: tuple[Any, ...], reg: _Registry) -> _Conv:
    """A union of several non-None types."""
    classes = [m for m in members if isinstance(m, type) and dataclasses.is_dataclass(m)]
    if classes and len(classes) != len(members):
        raise TypeError(f"a union may not mix dataclasses and other types: {members!r}")
    if classes:
        return _tagged(classes, reg)
    convs = [_converter(m, reg) for m in members]
    by_type: dict[type, Encoder | None] = {}
    for m, c in zip(members, convs, strict=True):
        base = typing.get_origin(m) or m
        if isinstance(base, type):
            by_type.setdefault(base, c.encode)
    needs_encode = any(c.encode is not None for c in convs)

    def encode(value: Any) -> Any:
        for tp, enc in by_type.items():
            if isinstance(value, tp):
                return value if enc is None else enc(value)
        return value  # Literal members and the like are their own wire form

    def decode(value: Any) -> Any:
        problems = []
        for c in convs:
            if c.fast is not None and type(value) is c.fast:
                return value
            try:
                return c.decode(value)
            except _ShapeError as exc:
                problems.append(exc.problem)
        raise _ShapeError(" / ".join(problems))

    return _Conv(encode if needs_encode else None, decode)


def _tagged(classes: list[type], reg: _Registry) -> _Conv:
    """A union of dataclasses: the map carries the class name under ``_t``, so decoding is exact."""
    codecs = {cls.__name__: (reg.codecs.get(cls) or _class_codec(cls, reg)) for cls in classes}
    if len(codecs) != len(classes):
        raise TypeError(f"union members must have distinct class names: {classes!r}")
    by_class = {codec.cls: (name, codec) for name, codec in codecs.items()}

    def encode(value: Any) -> dict[str, Any]:
        name, codec = by_class[type(value)]
        out = codec.encode(value)
        out[UNION_TAG] = name
        return out

    def decode(value: Any) -> Any:
        if not isinstance(value, dict | Mapping):
            raise _ShapeError(f"expected a map, got {_typename(value)}")
        tag = value.get(UNION_TAG)
        codec = codecs.get(tag) if isinstance(tag, str) else None
        if codec is None:
            raise _ShapeError(
                f"unknown or missing {UNION_TAG!r} tag {tag!r}: expected one of {', '.join(codecs)}"
            )
        return codec.decode(value)

    return _Conv(encode, decode)
