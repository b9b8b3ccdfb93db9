"""The lean receive path: protocol parsing in any chunking, header blocks, publish acks (no server needed).

nats-py's own parser is the reference: fed the same bytes it must report the
same messages and connection events as ``LeanParser`` (whose direct handlers
get the same bytes, minus the detour through ``_process_msg``).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import nats.errors
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.protocol.parser import Parser

from xpunet.bus.errors import BusError
from xpunet.bus.nats._client import DirectHandler, LeanParser, encode_headers, parse_headers, pub_command
from xpunet.bus.nats._errors import ApiError
from xpunet.bus.nats._kv import ack_sequence

Event = tuple[Any, ...]


class Recorder:
    """Stands in for the client behind ``ParserHost``: records every message and connection event."""

    def __init__(self, direct_sids: tuple[int, ...] = (), unsubscribed: tuple[int, ...] = ()) -> None:
        self.events: list[Event] = []
        self.stats: dict[str, int] = {"in_msgs": 0, "in_bytes": 0}
        self._direct: dict[int, DirectHandler] = {
            sid: self._handler(sid) for sid in direct_sids + unsubscribed
        }
        self._subs: dict[int, object] = {sid: object() for sid in direct_sids}

    def _handler(self, sid: int) -> DirectHandler:
        def handle(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            self.events.append(("msg", sid, subject, reply, data, headers))

        return handle

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        self.events.append(("msg", sid, bytes(subject), bytes(reply), data, headers))

    async def _process_info(self, info: dict[str, object]) -> None:
        self.events.append(("info", info))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))


HEADERS = b"NATS/1.0\r\nKV-Operation: DEL\r\ntraceparent: 00-ab-cd-01\r\n\r\n"
HEARTBEAT = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 7\r\nNats-Last-Stream: 9\r\n\r\n"
TRICKY = b"MSG x 1 2\r\nab\r\nPING"
STREAM = b"".join(
    [
        b'INFO {"server_id":"x","max_payload":1048576}\r\n',
        b"MSG $KV.b.pod.a 1 $JS.ACK.KV_b.c.1.5.1.1700000000000000000.0 5\r\nhello\r\n",
        b"MSG plain 2 3\r\nabc\r\n",
        b"+OK\r\n",
        b"MSG empty 1 0\r\n\r\n",
        b"HMSG $KV.b.pod.b 1 $JS.ACK.KV_b.c.1.6.2.1700000000000000000.0 %d %d\r\n%b\r\n"
        % (len(HEADERS), len(HEADERS), HEADERS),
        b"PING\r\n",
        b"HMSG _INBOX.x 1 %d %d\r\n%b\r\n" % (len(HEARTBEAT), len(HEARTBEAT), HEARTBEAT),
        # A payload that looks like protocol must be taken as payload.
        b"MSG tricky 3 reply.to %d\r\n%b\r\n" % (len(TRICKY), TRICKY),
        b"HMSG both 2 reply 12 15\r\nNATS/1.0\r\n\r\nxyz\r\n",
        b"PONG\r\n",
        b"MSG gone 4 1\r\nz\r\n",  # direct handler, but unsubscribed: the ordinary path decides
        b"-ERR 'Stale Connection'\r\n",
    ]
)


async def _feed(parser: Parser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        await parser.parse(chunk)


async def _reference_events() -> list[Event]:
    host = Recorder()
    await _feed(Parser(host), [STREAM])
    return host.events


async def _lean_events(chunks: list[bytes], direct: tuple[int, ...] = (1, 3)) -> tuple[list[Event], Recorder]:
    host = Recorder(direct_sids=direct, unsubscribed=(4,))
    parser = LeanParser(host)
    await _feed(parser, chunks)
    return host.events, host


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


async def test_whole_stream_matches_nats_py() -> None:
    reference = await _reference_events()
    assert len([e for e in reference if e[0] == "msg"]) == 8
    events, host = await _lean_events([STREAM])
    assert events == reference
    assert host.stats["in_msgs"] == 5  # sids 1 and 3 were delivered directly


async def test_every_two_way_split_matches_nats_py() -> None:
    reference = await _reference_events()
    for cut in range(1, len(STREAM)):
        events, _ = await _lean_events(_splits(STREAM, [cut]))
        assert events == reference, (
            f"split at {cut}: {STREAM[max(0, cut - 20) : cut]!r} | {STREAM[cut : cut + 20]!r}"
        )


async def test_byte_by_byte_matches_nats_py() -> None:
    reference = await _reference_events()
    events, _ = await _lean_events([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == reference


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=20))
async def test_any_chunking_matches_nats_py(cuts: list[int]) -> None:
    reference = await _reference_events()
    events, _ = await _lean_events(_splits(STREAM, cuts), direct=())
    assert events == reference


async def test_a_failing_handler_drops_only_its_message() -> None:
    host = Recorder(direct_sids=(1,))

    def broken(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        raise RuntimeError("bug")

    host._direct[1] = broken
    parser = LeanParser(host)
    await parser.parse(b"MSG a 1 1\r\nx\r\nMSG b 2 1\r\ny\r\n")
    assert host.events == [("msg", 2, b"b", b"", b"y", None)]


async def test_reset_drops_a_partial_message() -> None:
    host = Recorder()
    parser = LeanParser(host)
    await parser.parse(b"MSG a 2 10\r\nhalf")
    parser.reset()
    await parser.parse(b"MSG b 2 1\r\nz\r\n")
    assert host.events == [("msg", 2, b"b", b"", b"z", None)]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"MSG a b 3\r\nabc\r\n", id="sid-not-a-number"),
        pytest.param(b"MSG a 1 x\r\n", id="size-not-a-number"),
        pytest.param(b"MSG a 1 2 3 4\r\n", id="too-many-fields"),
        pytest.param(b"HELLO there\r\n", id="unknown-operation"),
    ],
)
async def test_malformed_protocol_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(nats.errors.ProtocolError):
        await LeanParser(Recorder()).parse(line)


# -- header blocks ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(HEADERS, {"KV-Operation": "DEL", "traceparent": "00-ab-cd-01"}, id="plain"),
        pytest.param(
            HEARTBEAT,
            {
                "Status": "100",
                "Description": "Idle Heartbeat",
                "Nats-Last-Consumer": "7",
                "Nats-Last-Stream": "9",
            },
            id="heartbeat",
        ),
        pytest.param(b"NATS/1.0 503\r\n\r\n", {"Status": "503"}, id="status-only"),
        pytest.param(
            b"NATS/1.0 404 No Messages\r\n\r\n", {"Status": "404", "Description": "No Messages"}, id="desc"
        ),
        pytest.param(
            b"NATS/1.0\r\nA:1\r\nno colon\r\nB :  spaced  \r\nbad name: x\r\n\r\n",
            {"A": "1", "B": "spaced"},
            id="odd-lines",
        ),
        pytest.param(b"NATS/1.0\r\nX: caf\xc3\xa9\r\n\r\n", {"X": "caf\u00e9"}, id="utf8-value"),
    ],
)
def test_parse_headers(raw: bytes, expected: dict[str, str]) -> None:
    assert parse_headers(raw) == expected


_NAMES = st.text(alphabet="abcXYZ019-_.!#", min_size=1, max_size=12)
_VALUES = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAMES, _VALUES, max_size=6))
def test_encode_then_parse_headers_round_trips(headers: dict[str, str]) -> None:
    assert parse_headers(encode_headers(headers)) == {k.strip(): v.strip() for k, v in headers.items()}


def test_encode_headers_rejects_a_bad_name() -> None:
    with pytest.raises(nats.errors.BadHeaderError):
        encode_headers({"bad name": "x"})


async def test_prepared_commands_parse_back() -> None:
    block = encode_headers({"traceparent": "00-1-2-01"})
    data = pub_command(b"$KV.b.k", b"_INBOX.r.0.1", b"value", block) + pub_command(b"s", b"", b"", None)
    # Outbound PUB/HPUB are inbound MSG/HMSG with a sid added: check the framing both ways.
    inbound = data.replace(b"HPUB $KV.b.k ", b"HMSG $KV.b.k 9 ").replace(b"PUB s ", b"MSG s 9 ")
    host = Recorder()
    await LeanParser(host).parse(inbound)
    assert host.events == [
        ("msg", 9, b"$KV.b.k", b"_INBOX.r.0.1", b"value", block),
        ("msg", 9, b"s", b"", b"", None),
    ]


# -- publish acks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "seq"),
    [
        pytest.param(b'{"stream":"KV_b","seq":42}', 42, id="plain"),
        pytest.param(b'{"stream":"KV_b","seq":7,"duplicate":true}', 7, id="duplicate"),
        pytest.param(b'{"stream":"KV_b","domain":"hub","seq":9}', 9, id="domain"),
        pytest.param(b'{"stream": "KV_b", "seq": 12 }', 12, id="spaces"),
        pytest.param(b'{"stream":"error","seq":3}', 3, id="stream-named-error"),
    ],
)
def test_ack_sequence(data: bytes, seq: int) -> None:
    assert ack_sequence(data) == seq == json.loads(data)["seq"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(
            b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"},'
            b'"stream":"KV_b","seq":0}',
            ApiError,
            id="error-answer",
        ),
        pytest.param(b"", BusError, id="empty"),
        pytest.param(b'{"stream":"KV_b"}', BusError, id="no-seq"),
        pytest.param(b'{"stream":"KV_b","seq":"x"}', BusError, id="seq-not-a-number"),
        pytest.param(b'{"stream":"KV_b","seq":true}', BusError, id="seq-bool"),
    ],
)
def test_ack_sequence_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ack_sequence(data)
