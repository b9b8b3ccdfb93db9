"""The one codec between xpunet's frozen dataclasses and the bytes on the bus (pure: no I/O).

``to_wire``/``from_wire`` convert dataclasses to plain maps and back, typed by
the dataclass fields (``convert`` lists the supported types); ``encode`` /
``decode`` wrap a map in the versioned msgpack envelope (``envelope``);
``register`` binds schema names to classes so ``decode_object`` needs no hint.
"""

from xpunet.wire.convert import WireError, from_wire, to_wire
from xpunet.wire.envelope import (
    K8S_SCHEMAS,
    SCHEMA_VERSION,
    decode,
    decode_as,
    decode_k8s,
    decode_object,
    encode,
    encode_object,
    register,
    schema_of,
)

__all__ = [
    "K8S_SCHEMAS",
    "SCHEMA_VERSION",
    "WireError",
    "decode",
    "decode_as",
    "decode_k8s",
    "decode_object",
    "encode",
    "encode_object",
    "from_wire",
    "register",
    "schema_of",
    "to_wire",
]
