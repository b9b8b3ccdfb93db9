"""The msgpack envelope every bus payload travels in, and the registry of schema names.

A payload is a msgpack map ``{"v": SCHEMA_VERSION, "t": <schema>, "o": <wire map>}``:

* ``v`` — the envelope version.  A reader accepts any version >= 1: a newer
  writer may add fields, which decoders ignore.  A change old readers could
  not survive gets a new schema name (``"k8s.pod"`` → ``"k8s.pod.v2"``),
  never a reused one.
* ``t`` — the schema name, e.g. ``"k8s.pod"``; it says which class ``o`` is.
* ``o`` — the wire map of the object (``xpunet.wire.convert``).

Unknown top-level keys are ignored.  Anything that is not such a map —
garbage, truncated bytes, a missing or mistyped ``v``/``t``/``o`` — raises
``WireError``.

The registry maps schema names to classes so ``decode_object`` can return the
right class; the six Kubernetes kinds of ``xpunet.model`` are registered as
``k8s.<kind>`` (``k8s.pod``, ``k8s.endpointslice``, ...).  Other packages
register their own classes at import time (``register("intent.lb", LBIntent)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypeVar

import msgpack

from xpunet.model.objects import (
    EndpointSlice,
    K8sObject,
    Kind,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
)
from xpunet.wire.convert import WireError, from_wire, to_wire

__all__ = [
    "K8S_SCHEMAS",
    "SCHEMA_VERSION",
    "decode",
    "decode_as",
    "decode_k8s",
    "decode_object",
    "encode",
    "encode_object",
    "register",
    "schema_of",
]

T = TypeVar("T")
SCHEMA_VERSION: Final = 1
_ENVELOPE: Final = "envelope"  # the "class" named by envelope-level WireErrors

_BY_NAME: dict[str, type] = {}
_BY_CLASS: dict[type, str] = {}


# --- registry ---------------------------------------------------------------------


def register(schema: str, cls: type) -> None:
    """Bind a schema name to a dataclass (idempotent; a conflicting rebinding is a bug → ValueError)."""
    if _BY_NAME.get(schema, cls) is not cls or _BY_CLASS.get(cls, schema) != schema:
        raise ValueError(
            f"wire: schema {schema!r} or class {cls.__qualname__} is already registered differently"
        )
    _BY_NAME[schema] = cls
    _BY_CLASS[cls] = schema


def schema_of(cls: type) -> str:
    """The registered schema name of ``cls`` (KeyError if it has none)."""
    return _BY_CLASS[cls]


K8S_SCHEMAS: Final[Mapping[type, str]] = {
    Pod: f"k8s.{Kind.POD}",
    Namespace: f"k8s.{Kind.NAMESPACE}",
    Node: f"k8s.{Kind.NODE}",
    Service: f"k8s.{Kind.SERVICE}",
    EndpointSlice: f"k8s.{Kind.ENDPOINT_SLICE}",
    NetworkPolicy: f"k8s.{Kind.NETWORK_POLICY}",
}
for _cls, _schema in K8S_SCHEMAS.items():
    register(_schema, _cls)


# --- envelope -----------------------------------------------------------------------


def encode(schema: str, obj: Any) -> bytes:
    """Pack ``obj`` (a dataclass, or an already-built wire map) under ``schema``."""
    body = obj if isinstance(obj, dict) else to_wire(obj)
    try:
        data: bytes = msgpack.packb({"v": SCHEMA_VERSION, "t": schema, "o": body}, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. an int beyond 64 bits
        raise WireError(type(obj).__qualname__, "", f"cannot encode under {schema!r}: {exc}") from None
    return data


def encode_object(obj: Any) -> bytes:
    """Pack a registered dataclass under its own schema name."""
    try:
        schema = _BY_CLASS[type(obj)]
    except KeyError:
        raise TypeError(f"wire: {type(obj).__qualname__} has no registered schema") from None
    return encode(schema, obj)


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """Unpack an envelope: the schema name and the wire map (lists arrive as tuples)."""
    try:
        # use_list=False: tuples are what the dataclasses hold, so decoding copies less.
        msg = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types for bad input (ValueError, ExtraData, ...)
        raise WireError(_ENVELOPE, "", f"not a valid msgpack message: {exc}") from None
    if not isinstance(msg, dict):
        raise WireError(_ENVELOPE, "", f"expected a map, got {type(msg).__name__}")
    version = msg.get("v")
    if type(version) is not int or version < 1:
        raise WireError(_ENVELOPE, "v", f"expected a schema version >= 1, got {version!r}")
    schema = msg.get("t")
    if type(schema) is not str or not schema:
        raise WireError(_ENVELOPE, "t", f"expected a schema name, got {schema!r}")
    body = msg.get("o")
    if not isinstance(body, dict):
        raise WireError(_ENVELOPE, "o", f"expected the object map, got {type(body).__name__}")
    return schema, body


def decode_as(cls: type[T], data: bytes) -> T:
    """Unpack an envelope whose object is a ``cls``; a registered class must match the schema name."""
    schema, body = decode(data)
    expected = _BY_CLASS.get(cls)
    if expected is not None and schema != expected:
        raise WireError(cls.__qualname__, "", f"message has schema {schema!r}, expected {expected!r}")
    return from_wire(cls, body)


def decode_object(data: bytes) -> object:
    """Unpack an envelope into the class registered for its schema name."""
    schema, body = decode(data)
    cls = _BY_NAME.get(schema)
    if cls is None:
        raise WireError(_ENVELOPE, "t", f"unknown schema {schema!r}")
    return from_wire(cls, body)


def decode_k8s(data: bytes) -> K8sObject:
    """``decode_object`` restricted to the Kubernetes kinds (anything else raises WireError)."""
    obj = decode_object(data)
    if not isinstance(obj, Pod | Namespace | Node | Service | EndpointSlice | NetworkPolicy):
        raise WireError(type(obj).__qualname__, "", "is not a Kubernetes object")
    return obj
