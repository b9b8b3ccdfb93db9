"""The one place where nats-py errors become ``xpunet.bus.errors`` (callers never see a nats exception)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors

from xpunet.bus.errors import BusClosed, BusError, BusUnavailable

# JetStream API error codes we act on.
ERR_WRONG_LAST_SEQUENCE = (10071, 10164)
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    """An ``{"error": {...}}`` answer from the JetStream API or a publish ack."""

    code: int
    status: int
    description: str

    def __str__(self) -> str:
        return f"{self.description} (status {self.status}, code {self.code})"


def parse_api_response(data: bytes) -> dict[str, object]:
    """A JetStream API answer as a dict; raises ``ApiError`` for an error answer, ``BusError`` for junk."""
    try:
        resp = json.loads(data)
    except ValueError as exc:
        raise BusError(f"malformed JetStream answer {data[:80]!r}") from exc
    if not isinstance(resp, dict):
        raise BusError(f"malformed JetStream answer {data[:80]!r}")
    err = resp.get("error")
    if err is not None:
        if not isinstance(err, dict):
            raise BusError(f"malformed JetStream error {err!r}")
        raise ApiError(int(err.get("err_code", 0)), int(err.get("code", 0)), str(err.get("description", "")))
    return resp


@contextlib.contextmanager
def mapped_errors(what: str) -> Iterator[None]:
    """Re-raise nats-py (and transport) errors from the block as bus errors prefixed with ``what``."""
    try:
        yield
    except BusError:
        raise
    except ApiError as exc:
        raise BusError(f"{what}: {exc}") from exc
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
        raise BusClosed(f"{what}: connection closed") from exc
    except nats.errors.NoRespondersError as exc:
        raise BusUnavailable(f"{what}: no responders") from exc
    except nats.js.errors.NoStreamResponseError as exc:
        raise BusUnavailable(f"{what}: JetStream did not answer (no stream or server down)") from exc
    except (
        TimeoutError,
        nats.errors.TimeoutError,
        nats.errors.OutboundBufferLimitError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
        nats.js.errors.ServiceUnavailableError,
        OSError,
    ) as exc:
        raise BusUnavailable(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc
    except nats.js.errors.APIError as exc:
        raise BusError(f"{what}: {exc.description} (code {exc.err_code})") from exc
    except nats.errors.Error as exc:
        raise BusError(f"{what}: {type(exc).__name__} {exc}".rstrip()) from exc
