"""Pure P4Runtime value rules (bytestrings, match components) and P4Info validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.p4rt.errors import PermanentTargetError, RetryableTargetError, UpdateError, classify
from xpunet.p4rt.p4info import P4InfoError, build_schema, parse_text
from xpunet.p4rt.schema import (
    BitField,
    canonical,
    check_lpm,
    check_range,
    check_ternary,
    check_value,
    decode_uint,
    encode_uint,
    is_canonical,
)
from xpunet.p4rt.testing import TEST_P4INFO_TEXT


@settings(max_examples=200, deadline=None)
@given(bitwidth=st.integers(1, 128), data=st.data())
def test_encode_is_canonical_and_round_trips(bitwidth: int, data: st.DataObject) -> None:
    value = data.draw(st.integers(0, (1 << bitwidth) - 1))
    encoded = encode_uint(value, bitwidth)
    assert is_canonical(encoded)
    assert decode_uint(encoded) == value
    assert check_value(BitField(bitwidth), encoded) is None
    padded = b"\x00" * data.draw(st.integers(0, 4)) + encoded
    assert check_value(BitField(bitwidth), padded) is None  # receivers accept any length that fits
    assert canonical(padded) == encoded


@settings(max_examples=200, deadline=None)
@given(bitwidth=st.integers(1, 64), excess=st.integers(1, 1000))
def test_values_beyond_the_width_are_rejected(bitwidth: int, excess: int) -> None:
    too_big = ((1 << bitwidth) - 1 + excess).to_bytes(9, "big")
    assert check_value(BitField(bitwidth), too_big) is not None


@pytest.mark.parametrize(
    ("problem", "result"),
    [
        pytest.param(check_value(BitField(9), b""), "empty", id="empty"),
        pytest.param(check_value(BitField(9), b"\x02\x00"), "does not fit", id="9-bit-overflow"),
        pytest.param(check_lpm(BitField(32), b"\x0a\x00\x00\x01", 24), "beyond prefix", id="lpm-host-bits"),
        pytest.param(check_lpm(BitField(32), b"\x00", 0), "don't-care", id="lpm-zero"),
        pytest.param(check_lpm(BitField(32), b"\x0a", 33), "exceeds", id="lpm-long"),
        pytest.param(check_ternary(BitField(8), b"\x03", b"\x01"), "outside mask", id="ternary-bits"),
        pytest.param(check_ternary(BitField(8), b"\x00", b"\x00"), "don't-care", id="ternary-zero-mask"),
        pytest.param(check_range(BitField(16), b"\x05", b"\x01"), "low", id="range-inverted"),
        pytest.param(check_range(BitField(8), b"\x00", b"\xff"), "don't-care", id="range-full"),
        pytest.param(check_lpm(BitField(32), b"\x0a\x00\x00\x00", 8), None, id="lpm-ok"),
        pytest.param(check_ternary(BitField(8), b"\x01", b"\x03"), None, id="ternary-ok"),
        pytest.param(check_range(BitField(16), b"\x50", b"\x01\xbb"), None, id="range-ok"),
    ],
)
def test_match_component_rules(problem: str | None, result: str | None) -> None:
    if result is None:
        assert problem is None
    else:
        assert problem is not None
        assert result in problem


def test_schema_indexes_names_and_ids() -> None:
    schema = build_schema(parse_text(TEST_P4INFO_TEXT))
    lpm = schema.table("ingress.ipv4_lpm")
    assert lpm.id == 0x02000001
    assert lpm.match_field("hdr.ipv4.dst").bitwidth == 32
    assert not lpm.needs_priority
    assert schema.table("ingress.acl").needs_priority
    assert schema.action("ingress.forward").param("port").bitwidth == 9
    assert lpm.direct_counter_id == 0x13000001
    assert schema.name_of(0x01000002) == "ingress.forward"
    with pytest.raises(KeyError, match="no table named 'nope'"):
        schema.table("nope")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(("id: 0x02000002", "id: 0x02000001"), "already used", id="duplicate-id"),
        pytest.param(("id: 0x01000003 name", "id: 0x02000009 name"), "prefix", id="wrong-prefix"),
        pytest.param(
            ("bitwidth: 16 match_type: RANGE", "bitwidth: 0 match_type: RANGE"), "bitwidth", id="zero-width"
        ),
        pytest.param(
            ("action_refs { id: 0x01000003 }", "action_refs { id: 0x01000077 }"), "action ref", id="bad-ref"
        ),
        pytest.param(
            ("implementation_id: 0x11000001", "implementation_id: 0x11000009"),
            "action profile",
            id="bad-impl",
        ),
        pytest.param(
            ("direct_table_id: 0x02000001", "direct_table_id: 0x02000077"), "does not exist", id="bad-direct"
        ),
    ],
)
def test_invalid_p4info_names_the_problem(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in TEST_P4INFO_TEXT
    with pytest.raises(P4InfoError, match=message):
        build_schema(parse_text(TEST_P4INFO_TEXT.replace(old, new, 1)))


def test_unparseable_p4info_is_a_p4info_error() -> None:
    with pytest.raises(P4InfoError, match="does not parse"):
        parse_text("tables { nonsense }")


def test_error_classification() -> None:
    assert isinstance(classify("UNAVAILABLE", "down"), RetryableTargetError)
    assert isinstance(classify("INVALID_ARGUMENT", "bad"), PermanentTargetError)
    dup = UpdateError(0, "ALREADY_EXISTS", "exists")
    full = UpdateError(1, "RESOURCE_EXHAUSTED", "full")
    aborted = UpdateError(2, "ABORTED", "rolled back")
    assert isinstance(classify("UNKNOWN", "x", (dup,)), PermanentTargetError)
    assert isinstance(classify("UNKNOWN", "x", (dup, full)), RetryableTargetError)
    # In a rolled-back batch, the innocent ABORTED updates do not make it retryable.
    assert isinstance(classify("UNKNOWN", "x", (dup, aborted)), PermanentTargetError)
    assert "update 1: RESOURCE_EXHAUSTED: full" in str(classify("UNKNOWN", "x", (full,)))
