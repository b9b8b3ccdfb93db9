"""Protocol-buffers wire format for the P4Runtime Write path, written by hand.

The Write hot path builds serialised ``p4.v1.Update`` messages directly as
bytes (see :mod:`xpunet.datapath.p4rt_codec`) and frames them into a
``WriteRequest`` without ever making protobuf objects: a repeated message
field on the wire is just ``tag, length, bytes`` per element, so the request
is its header's encoding followed by one framed element per update.  Building
a few short byte strings per field is several times cheaper in Python than
setting the same fields on protobuf messages and serialising them.

Field numbers are taken from the generated descriptors at import time, not
written down here, so they cannot drift from the ``p4runtime`` protos.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message
from p4.v1 import p4runtime_pb2

VARINT = 0
LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """The base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes([n]) for n in range(0x80)]


def tag(message: type[Message], field: str, wire_type: int) -> bytes:
    """The key (field number and wire type) of ``message.field`` as it appears on the wire."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    return varint((number << 3) | wire_type)


def length_delimited(key: bytes, body: bytes) -> bytes:
    """One length-delimited field: ``key``, the length of ``body``, ``body``."""
    n = len(body)
    return key + (_SMALL[n] if n < 0x80 else varint(n)) + body


_UPDATES_TAG = tag(p4runtime_pb2.WriteRequest, "updates", LENGTH_DELIMITED)
_UPDATE_PREFIX = [_UPDATES_TAG + varint(n) for n in range(4096)]


def frame_write_request(header: bytes, updates: Sequence[bytes]) -> bytes:
    """A serialised WriteRequest: ``header`` (its other fields, serialised) and the encoded updates."""
    parts = [header]
    prefix = _UPDATE_PREFIX
    for data in updates:
        n = len(data)
        parts.append(prefix[n] if n < 4096 else _UPDATES_TAG + varint(n))
        parts.append(data)
    return b"".join(parts)
