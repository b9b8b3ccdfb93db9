"""KV key, prefix and bucket validation and the prefix → subject filter mapping (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.bus.errors import InvalidKey
from xpunet.bus.keys import prefix_filter, prefixes_filters, validate_bucket, validate_key, validate_prefix


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("pod.default.web-1", id="dotted"),
        pytest.param("a", id="single"),
        pytest.param("node.n1/x=y_z-0", id="all-punctuation"),
        pytest.param("A.B.C", id="upper"),
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        pytest.param("", "non-empty", id="empty"),
        pytest.param(".lead", "start or end", id="leading-dot"),
        pytest.param("trail.", "start or end", id="trailing-dot"),
        pytest.param("a..b", "empty token", id="empty-token"),
        pytest.param("has space", "' '", id="space"),
        pytest.param("wild*", "'*'", id="star"),
        pytest.param("wild>", "'>'", id="gt"),
        pytest.param("naïve", "'ï'", id="non-ascii"),
        pytest.param("a:b", "':'", id="colon"),
    ],
)
def test_invalid_keys_name_the_key_and_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as err:
        validate_key(key)
    assert repr(key) in str(err.value)
    assert reason in str(err.value)


def test_invalid_key_is_also_a_value_error() -> None:
    with pytest.raises(ValueError, match="bad key"):
        validate_key("bad key")


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param("", (">", True), id="everything"),
        pytest.param("node.n1.", ("node.n1.>", True), id="whole-tokens"),
        pytest.param("node.n1", ("node.>", False), id="partial-token"),
        pytest.param("pod", (">", False), id="first-token-partial"),
    ],
)
def test_prefix_filter(prefix: str, expected: tuple[str, bool]) -> None:
    assert prefix_filter(prefix) == expected


@pytest.mark.parametrize(
    ("prefixes", "expected"),
    [
        pytest.param(("pod.",), (["pod.>"], True), id="one"),
        pytest.param(("pod.", "namespace.", "sync."), (["pod.>", "namespace.>", "sync.>"], True), id="kinds"),
        pytest.param(("pod.a", "pod.b"), (["pod.>"], False), id="same-range-once"),
        pytest.param(("pod.ns1", "svc."), (["pod.>", "svc.>"], False), id="one-inexact"),
        pytest.param(("pod.", "podx."), (["pod.>", "podx.>"], True), id="string-prefix-is-not-overlap"),
    ],
)
def test_prefixes_filters(prefixes: tuple[str, ...], expected: tuple[list[str], bool]) -> None:
    assert prefixes_filters(prefixes) == expected


@pytest.mark.parametrize(
    "prefixes",
    [
        pytest.param(("pod.", "pod.a."), id="nested"),
        pytest.param(("", "svc."), id="everything"),
        pytest.param(("svc.", "pod"), id="single-token-is-everything"),
    ],
)
def test_overlapping_prefixes_are_rejected_by_name(prefixes: tuple[str, ...]) -> None:
    with pytest.raises(InvalidKey, match="overlap"):
        prefixes_filters(prefixes)


def test_no_prefixes_is_an_error() -> None:
    with pytest.raises(InvalidKey, match="at least one"):
        prefixes_filters(())


@pytest.mark.parametrize("prefix", [".x", "a..", "sp ace", "x*"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidKey, match="prefix"):
        validate_prefix(prefix)


@pytest.mark.parametrize("bucket", ["", "a.b", "a b", "x>"])
def test_invalid_buckets(bucket: str) -> None:
    with pytest.raises(InvalidKey, match="bucket"):
        validate_bucket(bucket)


def _subject_matches(filter_: str, key: str) -> bool:
    """NATS subject matching for filters made by prefix_filter (literal tokens, then a final '>')."""
    want, have = filter_.split("."), key.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or have[i] != token:
            return False
    return len(want) == len(have)


_token = st.text(alphabet="ab-_1", min_size=1, max_size=3)
_key = st.lists(_token, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(key=_key, cut=st.integers(min_value=0, max_value=12))
def test_filter_covers_every_key_with_the_prefix(key: str, cut: int) -> None:
    prefix = key[:cut]
    if prefix.endswith(".") and prefix.count(".") != prefix.rstrip(".").count(".") + 1:
        return
    filter_, exact = prefix_filter(prefix)
    assert _subject_matches(filter_, key)  # every key with the prefix is delivered
    if exact:
        assert key.startswith(prefix)
