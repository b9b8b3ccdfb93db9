"""The plugin-to-agent framing (cni/wire.py): what the C shim and main.py send, what the agent answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpunet.datapath.cni.wire import WireError, decode_reply, decode_request, encode_reply, encode_request

values = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=40)
names = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12).map(lambda s: f"CNI_{s}")


@settings(max_examples=60, deadline=None)
@given(env=st.dictionaries(names, values, max_size=6), stdin=st.binary(max_size=200))
def test_request_round_trips(env: dict[str, str], stdin: bytes) -> None:
    assert decode_request(encode_request(env, stdin)) == (env, stdin, False)


def test_only_cni_variables_are_sent() -> None:
    data = encode_request({"PATH": "/bin", "CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=2"}, b'{"a":1}')
    assert data == b'CNI_COMMAND=ADD\0CNI_ARGS=A=1;B=2\0\0{"a":1}'


def test_legacy_json_line_request() -> None:
    line = json.dumps({"env": {"CNI_COMMAND": "DEL"}, "stdin": '{"name":"x"}'}).encode() + b"\n"
    assert decode_request(line) == ({"CNI_COMMAND": "DEL"}, b'{"name":"x"}', True)
    assert json.loads(encode_reply(1, '{"code":7}', legacy=True)) == {"code": 1, "stdout": '{"code":7}'}


@pytest.mark.parametrize(
    ("data", "word"),
    [
        pytest.param(b"CNI_COMMAND=ADD\0", "no empty entry", id="unterminated-env"),
        pytest.param(b"PATH=/bin\0\0{}", "bad environment entry", id="not-cni"),
        pytest.param(b"CNI_COMMAND\0\0{}", "bad environment entry", id="no-equals"),
        pytest.param(b'{"env": 1}', "bad JSON request", id="legacy-bad"),
    ],
)
def test_bad_requests_are_named(data: bytes, word: str) -> None:
    with pytest.raises(WireError, match=word):
        decode_request(data)


@pytest.mark.parametrize(
    ("code", "output", "wire"),
    [
        pytest.param(0, '{"cniVersion":"1.1.0"}', b'0\n{"cniVersion":"1.1.0"}\n', id="result"),
        pytest.param(0, "", b"0\n", id="nothing-printed"),
        pytest.param(1, '{"code":11}', b'1\n{"code":11}\n', id="error"),
    ],
)
def test_reply(code: int, output: str, wire: bytes) -> None:
    assert encode_reply(code, output) == wire
    assert decode_reply(wire) == (code, wire.partition(b"\n")[2])


@pytest.mark.parametrize("data", [b"", b"0", b"x\n", b"-1\n", b"256\n"])
def test_bad_replies(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_reply(data)
