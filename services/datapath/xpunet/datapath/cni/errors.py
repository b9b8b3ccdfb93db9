"""CNI errors: the spec's well-known codes, xpunet's own (100+), and the error JSON."""

from __future__ import annotations

from typing import Any

# Well-known codes (CNI spec, "Error codes").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50  # STATUS
PLUGIN_NOT_AVAILABLE_LIMITED = 51  # STATUS: existing containers may be affected too

# xpunet's codes.
IPS_EXHAUSTED = 100
CHECK_FAILED = 101
DATAPATH_ERROR = 102


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out
