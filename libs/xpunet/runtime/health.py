"""A tiny HTTP/1.1 endpoint on asyncio streams: ``/healthz``, ``/readyz`` and ``/metrics``.

No framework: three GET routes, one response per connection.  Probes
(Kubernetes kubelet, Prometheus) need nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

_MAX_HEAD = 8192  # bytes of request line + headers we accept
_READ_TIMEOUT = 5.0  # seconds a client gets to send its request
_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Probes:
    """Callbacks the endpoint asks; each must be cheap and never block."""

    readiness: Callable[[], tuple[bool, str]]  # (ready, reason when not)
    metrics: Callable[[], str]  # Prometheus text exposition


class HealthServer:
    def __init__(self, host: str, port: int, probes: Probes) -> None:
        self._host = host
        self._port = port
        self._probes = probes
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); valid after ``start``."""
        if self._server is None:
            raise RuntimeError("health server not started")
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, ctype, body = await self._respond(reader)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that went away or sent junk; nothing to answer
        except Exception:
            log.exception("health endpoint failed answering a request")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        async with asyncio.timeout(_READ_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > _MAX_HEAD:
            return 400, "text/plain", b"request too large\n"
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3:
            return 400, "text/plain", b"bad request line\n"
        method, target, _version = parts
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, reason = self._probes.readiness()
            if ready:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {reason}\n".encode()
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._probes.metrics().encode()
        return 404, "text/plain", b"not found\n"


async def http_get(url: str) -> tuple[int, str]:
    """GET ``http://host:port/path`` from a health endpoint; returns (status, body).

    A matching minimal client (``xpunetctl``, tests) so nothing needs an HTTP library.
    """
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    async with asyncio.timeout(_READ_TIMEOUT):  # a health endpoint answers at once or not at all
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode("utf-8", "replace")
