"""KV key, prefix and bucket-name rules (pure): validate early, with an error that names the bad input.

NATS KV keys are subject tokens joined by dots: only ``[-/_=.a-zA-Z0-9]``, no
leading or trailing dot, no empty token.  Bucket names are ``[-_a-zA-Z0-9]``.
A watch prefix is a plain string prefix of keys; ``prefix_filter`` turns it
into the narrowest NATS subject filter that covers it (whole tokens only), and
says whether the rest must be checked on the client.
"""

from __future__ import annotations

import itertools
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


def prefixes_filters(prefixes: tuple[str, ...]) -> tuple[list[str], bool]:
    """The subject filters (relative, as ``prefix_filter``) of one watch over several prefixes.

    Returns ``(filters, exact)``: one filter per distinct subject range, and whether every
    prefix is exact (else keys must be checked against the prefixes on the client).  The
    server refuses overlapping filters, so overlapping prefixes (``pod.`` and ``pod.a.``, or
    anything with ``""``) raise ``InvalidKey`` naming them; watch the wider one instead.
    """
    if not prefixes:
        raise InvalidKey("a watch needs at least one key prefix")
    by_filter: dict[str, str] = {}
    exact = True
    for prefix in prefixes:
        subject, is_exact = prefix_filter(prefix)
        exact = exact and is_exact
        by_filter.setdefault(subject, prefix)
    heads = sorted((subject[:-1], prefix) for subject, prefix in by_filter.items())  # without the ">"
    # Sorted, a head that starts with another comes right after it or after one that does too.
    for (head, prefix), (next_head, next_prefix) in itertools.pairwise(heads):
        if next_head.startswith(head):
            raise InvalidKey(f"watch prefixes {prefix!r} and {next_prefix!r} overlap: watch {prefix!r} alone")
    return list(by_filter), exact
