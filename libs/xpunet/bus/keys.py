"""KV key, prefix and bucket-name rules (pure): validate early, with an error that names the bad input.

NATS KV keys are subject tokens joined by dots: only ``[-/_=.a-zA-Z0-9]``, no
leading or trailing dot, no empty token.  Bucket names are ``[-_a-zA-Z0-9]``.
A watch prefix is a plain string prefix of keys; ``prefix_filter`` turns it
into the narrowest NATS subject filter that covers it (whole tokens only), and
says whether the rest must be checked on the client.
"""

from __future__ import annotations

import re

from xpunet.bus.errors import InvalidKey

_KEY_CHARS = re.compile(r"[-/_=.a-zA-Z0-9]+")
_BUCKET_CHARS = re.compile(r"[-_a-zA-Z0-9]+")


def validate_key(key: str) -> str:
    """Return ``key`` if NATS KV accepts it, else raise ``InvalidKey`` naming it and the reason."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid KV key {key!r}: must be a non-empty string")
    if _KEY_CHARS.fullmatch(key) is None:
        bad = sorted({c for c in key if _KEY_CHARS.fullmatch(c) is None})
        raise InvalidKey(f"invalid KV key {key!r}: characters {''.join(bad)!r} not in [-/_=.a-zA-Z0-9]")
    if key.startswith(".") or key.endswith("."):
        raise InvalidKey(f"invalid KV key {key!r}: must not start or end with '.'")
    if ".." in key:
        raise InvalidKey(f"invalid KV key {key!r}: empty token ('..')")
    return key


def validate_prefix(prefix: str) -> str:
    """A watch/keys prefix: empty, or a key start (may end with '.', so ``node.n1.`` is fine)."""
    if prefix == "":
        return prefix
    if not isinstance(prefix, str) or _KEY_CHARS.fullmatch(prefix) is None:
        raise InvalidKey(f"invalid KV key prefix {prefix!r}: characters must be in [-/_=.a-zA-Z0-9]")
    if prefix.startswith(".") or ".." in prefix:
        raise InvalidKey(f"invalid KV key prefix {prefix!r}: leading '.' or empty token")
    return prefix


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or _BUCKET_CHARS.fullmatch(bucket) is None:
        raise InvalidKey(f"invalid KV bucket name {bucket!r}: must match [-_a-zA-Z0-9]+")
    return bucket


def prefix_filter(prefix: str) -> tuple[str, bool]:
    """The subject filter (relative to the bucket's ``$KV.<bucket>.``) covering keys starting with ``prefix``.

    Returns ``(filter, exact)``; when ``exact`` is false the filter is wider and
    each key must also be checked with ``key.startswith(prefix)``.
    """
    validate_prefix(prefix)
    if prefix == "" or prefix.endswith("."):
        return prefix + ">", True
    head, dot, _ = prefix.rpartition(".")
    if dot:
        return head + ".>", False
    return ">", False
