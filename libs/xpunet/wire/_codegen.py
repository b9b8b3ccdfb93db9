"""Per-class wire encoders and decoders generated as Python source and compiled once per class (pure).

``convert`` describes a dataclass as a list of fields with their converters
and interprets that plan for every object: a loop, a tuple unpack and a type
test per field.  For the hot classes (a pod, an EndpointSlice) that loop is
most of the cost, so each class also gets straight-line code:

    def decode(data):
        if type(data) is not dict:
            return generic(data)
        try:
            get = data.get
            v0 = get('namespace', MISSING)
            if type(v0) is not str:
                if v0 is MISSING: raise FallbackSignal
                v0 = DEC0(v0)
            ...
            return CLS(namespace=v0, ...)
        except Exception:
            return generic(data)

The generated decoder only has a *fast path*: any surprise (a missing
required key, a wrong type, a rejected value) hands the whole map to the
generic decoder, which produces the result or the exact ``WireError`` path
and message it always did.  So the generated code never decides what is
valid; it only skips work on data the generic decoder would accept as is.

Safety: the source is built only from the dataclass's own field metadata —
attribute names (checked to be identifiers), wire keys (embedded as ``repr``
string literals) and generated local names.  Defaults, converters, classes and
child codecs are passed in as the function's globals, never as source text.
Nothing from the data being decoded ever reaches the generator.
"""

from __future__ import annotations

import dataclasses
import keyword
import types
import typing
from collections.abc import Callable
from typing import Any, Final

__all__ = ["CodecFunctions", "FallbackSignal", "FieldSpec", "generate"]

_MISSING: Final = object()


class FallbackSignal(Exception):  # noqa: N818 - a signal, not an error anyone sees
    """Raised inside generated decoders to hand a map to the generic decoder."""


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    """One ``init`` field of a dataclass, as the generic codec sees it."""

    attr: str
    key: str
    hint: Any  # the resolved type hint
    encode: Callable[[Any], Any] | None  # the generic converter's encoder (None: identity)
    decode: Callable[[Any], Any]  # the generic converter's decoder
    fast: type | None  # a wire value of exactly this type needs no conversion
    required: bool
    default: Any  # dataclasses.MISSING when there is none
    default_factory: Any  # dataclasses.MISSING when there is none


class ChildCodec(typing.Protocol):
    """The codec of a nested dataclass (late-bound: read at call time, so recursive types work)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class CodecFunctions:
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[Any], Any]
    source: str  # kept for debugging and tests


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_of(tp: Any) -> Any | None:
    """``X`` when ``tp`` is ``X | None`` with a single other member, else None."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    members = [m for m in typing.get_args(tp) if m is not type(None)]
    if len(members) == 1 and len(members) < len(typing.get_args(tp)):
        return members[0]
    return None


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _tuple_item(tp: Any) -> Any | None:
    """``X`` when ``tp`` is ``tuple[X, ...]``, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _str_literals(tp: Any) -> frozenset[str] | None:
    """The members of ``Literal["a", "b", ...]`` when they are all strings, else None."""
    if typing.get_origin(tp) is not typing.Literal:
        return None
    members = typing.get_args(tp)
    if not all(type(m) is str for m in members):
        return None
    return frozenset(members)


def _slot_setters(cls: type, fields: list[FieldSpec]) -> list[Callable[[Any, Any], None]] | None:
    """The slot setters of ``cls``'s fields when setting them is all its ``__init__`` does, else None.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``: about as much time as decoding the fields.  When
    the class uses slots, has the ``__init__`` ``dataclasses`` wrote (not its
    own), no ``__post_init__``, no non-init fields and no custom ``__new__``,
    setting the slots directly builds the same object.  Anything else is built
    by calling the class.
    """
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    if (
        code is None
        or code.co_filename != "<string>"  # dataclasses compiles the __init__ it writes
        or "__create_fn__" not in getattr(code, "co_qualname", "")
        or hasattr(cls, "__post_init__")
        or getattr(cls, "__new__", None) is not object.__new__
        or any(not f.init for f in dataclasses.fields(cls))
        or len(fields) != len(dataclasses.fields(cls))
    ):
        return None
    setters = []
    for f in fields:
        slot = getattr(cls, f.attr, None)
        if not isinstance(slot, types.MemberDescriptorType):
            return None
        setters.append(slot.__set__)
    return setters


def generate(
    cls: type,
    fields: list[FieldSpec],
    *,
    codec_of: Callable[[type], ChildCodec],
    generic_decode: Callable[[Any], Any],
) -> CodecFunctions:
    """Compile the encoder and decoder of ``cls``; ``ValueError`` if a field cannot be named in code."""
    env: dict[str, Any] = {
        # Only what the generated code names; a missing one would turn every call into a fallback
        # (tests assert valid data never falls back).
        "__builtins__": {"type": type, "tuple": tuple, "dict": dict, "list": list, "str": str, "len": len},
        "Exception": Exception,
        "CLS": cls,
        "MISSING": _MISSING,
        "FallbackSignal": FallbackSignal,
        "generic_decode": generic_decode,
    }
    enc_items: list[str] = []
    dec_lines: list[str] = []
    call_args: list[str] = []
    for i, f in enumerate(fields):
        if not f.attr.isidentifier() or keyword.iskeyword(f.attr) or not isinstance(f.key, str):
            raise ValueError(f"field {f.attr!r} of {cls.__qualname__} cannot be named in generated code")
        key = repr(f.key)
        value = f"obj.{f.attr}"
        v = f"v{i}"
        env[f"DEC{i}"] = f.decode
        if f.encode is not None:
            env[f"ENC{i}"] = f.encode
        if f.default is not dataclasses.MISSING:
            env[f"DEF{i}"] = f.default
            if_missing = f"{v} = DEF{i}"
        elif f.default_factory is not dataclasses.MISSING:
            env[f"FAC{i}"] = f.default_factory
            if_missing = f"{v} = FAC{i}()"
        else:
            if_missing = "raise FallbackSignal"

        item = _tuple_item(f.hint)
        inner = _optional_of(f.hint)
        dec_lines.append(f"{v} = get({key}, MISSING)")
        if _is_dataclass_type(f.hint):
            env[f"C{i}"] = codec_of(f.hint)
            enc_items.append(f"{key}: C{i}.encode({value})")
            dec_lines += [f"if {v} is MISSING:", f"    {if_missing}", "else:", f"    {v} = C{i}.decode({v})"]
        elif inner is not None and _is_dataclass_type(inner):
            env[f"C{i}"] = codec_of(inner)
            enc_items.append(f"{key}: ENC{i}({value})")
            dec_lines += [
                f"if {v} is MISSING:",
                f"    {if_missing}",
                f"elif {v} is not None:",
                f"    {v} = C{i}.decode({v})",
            ]
        elif item is not None and item in (str, int, bytes, bool):
            # Short sequences of a scalar (an endpoint's addresses, empty hints) are the common case.
            env[f"T{i}"] = item
            enc_items.append(f"{key}: {value}" if f.encode is None else f"{key}: ENC{i}({value})")
            dec_lines += [
                f"if (type({v}) is tuple or type({v}) is list) and (",
                f"    not {v} or (len({v}) == 1 and type({v}[0]) is T{i})",
                "):",
                f"    {v} = tuple({v})",
                f"elif {v} is MISSING:",
                f"    {if_missing}",
                "else:",
                f"    {v} = DEC{i}({v})",
            ]
        elif item is not None and _is_dataclass_type(item):
            env[f"C{i}"] = codec_of(item)
            enc_items.append(f"{key}: [C{i}.encode(x) for x in {value}]")
            dec_lines += [
                f"if type({v}) is tuple or type({v}) is list:",
                f"    {v} = tuple([C{i}.decode(x) for x in {v}])",
                f"elif {v} is MISSING:",
                f"    {if_missing}",
                "else:",
                f"    {v} = DEC{i}({v})",
            ]
        else:
            enc_items.append(f"{key}: {value}" if f.encode is None else f"{key}: ENC{i}({value})")
            literals = _str_literals(f.hint)
            if literals is not None:
                env[f"L{i}"] = literals
                dec_lines += [
                    f"if type({v}) is not str or {v} not in L{i}:",
                    f"    if {v} is MISSING:",
                    f"        {if_missing}",
                    "    else:",
                    f"        {v} = DEC{i}({v})",
                ]
            elif f.fast is not None:
                env[f"T{i}"] = f.fast
                dec_lines += [
                    f"if type({v}) is not T{i}:",
                    f"    if {v} is MISSING:",
                    f"        {if_missing}",
                ]
                if _is_optional(f.hint):
                    dec_lines += [f"    elif {v} is not None:", f"        {v} = DEC{i}({v})"]
                else:
                    dec_lines += ["    else:", f"        {v} = DEC{i}({v})"]
            else:
                dec_lines += [f"if {v} is MISSING:", f"    {if_missing}", "else:", f"    {v} = DEC{i}({v})"]
        call_args.append(f"{f.attr}={v}")

    setters = _slot_setters(cls, fields)
    if setters is None:
        dec_lines.append(f"return CLS({', '.join(call_args)})")
    else:
        env["NEW"] = object.__new__
        dec_lines.append("obj = NEW(CLS)")
        for i, setter in enumerate(setters):
            env[f"S{i}"] = setter
            dec_lines.append(f"S{i}(obj, v{i})")
        dec_lines.append("return obj")
    body = "\n".join(f"        {line}" for line in dec_lines)
    source = (
        "def encode(obj):\n"
        f"    return {{{', '.join(enc_items)}}}\n"
        "\n"
        "def decode(data):\n"
        "    if type(data) is not dict:\n"
        "        return generic_decode(data)\n"
        "    try:\n"
        "        get = data.get\n"
        f"{body}\n"
        "    except Exception:\n"
        "        # Not the common case: the generic decoder decides, and names any problem.\n"
        "        return generic_decode(data)\n"
    )
    code = compile(source, f"<wire codec {cls.__module__}.{cls.__qualname__}>", "exec")
    exec(code, env)
    return CodecFunctions(encode=env["encode"], decode=env["decode"], source=source)
