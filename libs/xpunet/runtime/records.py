"""The health record each service instance keeps in KV ``xpunet-status`` at ``health.<instance>``.

Pure: encode/decode only.  A msgpack map with a schema version; the decoder
ignores unknown fields so later versions can add some.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import msgpack

HEALTH_KEY_PREFIX = "health."
HEALTH_SCHEMA = 1


class RecordError(ValueError):
    """A health record cannot be decoded; the message names the key and the problem."""


@dataclass(frozen=True, slots=True)
class HealthRecord:
    service: str
    instance: str
    node: str
    ready: bool
    reason: str  # why not ready ("" when ready)
    pid: int
    health: str  # the HTTP health endpoint URL ("" when disabled)
    at: float  # unix time the record was written
    interval: float  # seconds until the next write is due

    def stale(self, now: float) -> bool:
        """No rewrite for three intervals: the instance is probably gone without a clean stop."""
        return now - self.at > 3 * self.interval


def health_key(instance: str) -> str:
    return HEALTH_KEY_PREFIX + instance


def encode_health(record: HealthRecord) -> bytes:
    packed: bytes = msgpack.packb({"v": HEALTH_SCHEMA, **asdict(record)})
    return packed


def decode_health(key: str, data: bytes) -> HealthRecord:
    try:
        raw = msgpack.unpackb(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RecordError(f"{key}: not msgpack: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecordError(f"{key}: expected a map, got {type(raw).__name__}")
    if raw.get("v") != HEALTH_SCHEMA:
        raise RecordError(f"{key}: unsupported schema version {raw.get('v')!r}")

    def text(name: str) -> str:
        value = raw.get(name)
        if not isinstance(value, str):
            raise RecordError(f"{key}: field {name!r}: expected a string, got {value!r}")
        return value

    def number(name: str) -> float:
        value = raw.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{key}: field {name!r}: expected a number, got {value!r}")
        return float(value)

    ready, pid = raw.get("ready"), raw.get("pid")
    if not isinstance(ready, bool):
        raise RecordError(f"{key}: field 'ready': expected a boolean, got {ready!r}")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise RecordError(f"{key}: field 'pid': expected an integer, got {pid!r}")
    return HealthRecord(
        service=text("service"),
        instance=text("instance"),
        node=text("node"),
        ready=ready,
        reason=text("reason"),
        pid=pid,
        health=text("health"),
        at=number("at"),
        interval=number("interval"),
    )
