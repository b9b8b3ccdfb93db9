"""The framing between the exec'ed `xpunet-cni` (the C shim or main.py) and the resident CNI agent.

Chosen so that a C program can write and read it without a JSON library:

* request: every CNI_* variable as ``KEY=VALUE\\0``, an empty entry (a lone
  ``\\0``) closing the list, then the network config (the plugin's stdin) up
  to the end of the stream (the sender shuts down its sending side);
* reply: the plugin's exit code in decimal, ``\\n``, then exactly the bytes
  the plugin prints on stdout, up to the end of the stream.

The first, JSON-line framing (``{"env": {...}, "stdin": "..."}`` answered by
``{"code": N, "stdout": "..."}``) is still accepted from older binaries: a
request starting with ``{`` is one of those.  Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

MAX_MESSAGE = 1 << 20  # a request or a reply; the network config and the result are a few kB


class WireError(ValueError):
    """A malformed request or reply."""


def encode_request(env: Mapping[str, str], stdin: bytes) -> bytes:
    entries = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items() if k.startswith("CNI_"))
    return entries + b"\0" + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes, bool]:
    """(CNI_* env, stdin, legacy) of a request; legacy is the JSON-line framing."""
    if data.startswith(b"{"):
        try:
            request = json.loads(data)
            legacy = {str(k): str(v) for k, v in request["env"].items()}
            return legacy, str(request["stdin"]).encode(), True
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WireError(f"bad JSON request: {exc}") from exc
    env: dict[str, str] = {}
    pos = 0
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise WireError("request ends inside the environment (no empty entry)")
        if end == pos:
            return env, data[end + 1 :], False
        key, sep, value = data[pos:end].decode("utf-8", "surrogateescape").partition("=")
        if not sep or not key.startswith("CNI_"):
            raise WireError(f"bad environment entry {data[pos:end][:40]!r}")
        env[key] = value
        pos = end + 1


def encode_reply(code: int, output: str, *, legacy: bool = False) -> bytes:
    """The reply to a request; `output` is the plugin's stdout without its final newline."""
    if legacy:
        return json.dumps({"code": code, "stdout": output}).encode() + b"\n"
    return f"{code}\n".encode() + (output.encode() + b"\n" if output else b"")


def decode_reply(data: bytes) -> tuple[int, bytes]:
    """(exit code, bytes to print) of a reply."""
    head, sep, out = data.partition(b"\n")
    if not sep or not head.isdigit() or int(head) > 255:
        raise WireError(f"bad reply {data[:40]!r}")
    return int(head), out
