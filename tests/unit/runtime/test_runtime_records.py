"""Health records: round trip, tolerance of unknown fields, errors naming the key and field."""

from __future__ import annotations

import msgpack
import pytest

from xpunet.runtime.records import HealthRecord, RecordError, decode_health, encode_health, health_key

RECORD = HealthRecord(
    service="datapath",
    instance="datapath.node-1",
    node="node-1",
    ready=False,
    reason="bus not connected",
    pid=42,
    health="http://127.0.0.1:9680",
    at=1000.0,
    interval=5.0,
)


def _raw(**changes: object) -> bytes:
    body: dict[str, object] = msgpack.unpackb(encode_health(RECORD))
    body.update(changes)
    packed: bytes = msgpack.packb(body)
    return packed


def test_round_trip() -> None:
    assert health_key(RECORD.instance) == "health.datapath.node-1"
    assert decode_health("k", encode_health(RECORD)) == RECORD


def test_unknown_fields_are_ignored_and_int_times_accepted() -> None:
    assert decode_health("k", _raw(extra={"x": 1}, at=1000)) == RECORD


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\xc1", "health.x: not msgpack", id="garbage"),
        pytest.param(msgpack.packb([1]), "health.x: expected a map, got list", id="not-a-map"),
        pytest.param(_raw(v=2), "health.x: unsupported schema version 2", id="future-version"),
        pytest.param(_raw(ready="yes"), "health.x: field 'ready': expected a boolean, got 'yes'", id="ready"),
        pytest.param(_raw(pid=True), "health.x: field 'pid': expected an integer, got True", id="pid-bool"),
        pytest.param(_raw(at="now"), "health.x: field 'at': expected a number, got 'now'", id="at"),
        pytest.param(
            _raw(instance=None), "health.x: field 'instance': expected a string, got None", id="missing"
        ),
    ],
)
def test_bad_records_name_key_and_field(data: bytes, message: str) -> None:
    with pytest.raises(RecordError) as info:
        decode_health("health.x", data)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("age", "stale"),
    [pytest.param(14.9, False, id="fresh"), pytest.param(15.1, True, id="three-intervals")],
)
def test_stale_after_three_intervals(age: float, stale: bool) -> None:
    assert RECORD.stale(RECORD.at + age) is stale
