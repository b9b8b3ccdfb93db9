"""The counter dump's netlink encoding and decoding (the kernel side is in tests/integration/kernel)."""

from __future__ import annotations

import struct

import pytest

from xpunet.datapath.kernel import nlcounters as nl


def _msg(kind: int, body: bytes, flags: int = 2) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def _counter(name: str, packets: int, nbytes: int) -> bytes:
    data = nl._attr(nl.NFTA_COUNTER_BYTES, struct.pack(">Q", nbytes))
    data += nl._attr(nl.NFTA_COUNTER_PACKETS, struct.pack(">Q", packets))
    body = struct.pack("=BBH", nl.NFPROTO_INET, 0, 0)
    body += nl._attr(nl.NFTA_OBJ_TABLE, b"xpunet\0")
    body += nl._attr(nl.NFTA_OBJ_NAME, name.encode() + b"\0")
    body += nl._attr(nl.NFTA_OBJ_DATA | 0x8000, data)  # NLA_F_NESTED, as the kernel sends it
    return _msg((nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWOBJ, body)


def test_request_asks_for_the_counters_of_one_table() -> None:
    req = nl.counter_dump_request("xpunet", seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert length == len(req)
    assert kind == (10 << 8) | 19
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    assert seq == 7
    assert b"xpunet\0" in req


def test_dump_parts_add_up_until_done() -> None:
    got: dict[str, tuple[int, int]] = {}
    assert not nl.parse_counter_dump(_counter("acl_1", 3, 180) + _counter("deny_egress", 0, 0), got)
    assert nl.parse_counter_dump(_counter("acl_2", 2**40, 2**50) + _msg(nl.NLMSG_DONE, b"\0" * 4), got)
    assert got == {"acl_1": (3, 180), "deny_egress": (0, 0), "acl_2": (2**40, 2**50)}


def test_an_error_answer_is_raised_with_its_errno() -> None:
    with pytest.raises(nl.NetlinkError, match="No such file"):
        nl.parse_counter_dump(_msg(nl.NLMSG_ERROR, struct.pack("=i", -2) + b"\0" * 16), {})
