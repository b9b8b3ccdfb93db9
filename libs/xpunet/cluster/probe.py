"""Real connections from inside a pod's namespace: one probe is one TCP/SCTP connect or UDP exchange.

An outcome is what the client sees: ``open`` (connected and the responder said
who it is), ``refused`` (RST / ICMP port unreachable: a reject), ``timeout``
(no answer: a drop) or ``unreachable`` (ICMP host/net unreachable).  Policy
denies show up as ``timeout``; a Service without endpoints as ``refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Literal

from xpunet.cluster.netns import socket_in

Outcome = Literal["open", "refused", "timeout", "unreachable"]
DEFAULT_TIMEOUT = 1.0
IPPROTO_SCTP = 132


@dataclass(frozen=True, slots=True)
class ProbeResult:
    outcome: Outcome
    peer: str = ""  # the responder's name (ns/pod) when open
    seconds: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "open"


def _family(ip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


def _classify(exc: OSError) -> Outcome:
    if exc.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
        return "refused"
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return "unreachable"
    if exc.errno == errno.ETIMEDOUT:
        return "timeout"
    raise exc


class HeldConnection:
    """An open stream connection from a pod, kept to check later that it still works."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer

    async def echo(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> bool:  # noqa: ASYNC109
        """Send a line; True when the same line comes back within ``timeout``."""
        try:
            self.writer.write(text.encode() + b"\n")
            await self.writer.drain()
            async with asyncio.timeout(timeout):
                line = await self.reader.readline()
        except (TimeoutError, OSError):
            return False
        return line.decode().rstrip("\n") == text

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def connect(
    netns: str,
    ip: str,
    port: int,
    *,
    protocol: Literal["TCP", "SCTP"] = "TCP",
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    source_port: int = 0,
) -> tuple[ProbeResult, HeldConnection | None]:
    """Connect from ``netns``; on success the connection stays open (the caller closes it)."""
    proto = IPPROTO_SCTP if protocol == "SCTP" else 0
    sock = await socket_in(netns, _family(ip), socket.SOCK_STREAM, proto)
    if source_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if sock.family == socket.AF_INET6 else "0.0.0.0", source_port))
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (ip, port))
            reader, writer = await asyncio.open_connection(sock=sock)
            banner = await reader.readline()
    except TimeoutError:
        sock.close()
        return ProbeResult("timeout", seconds=time.monotonic() - started), None
    except OSError as exc:
        sock.close()
        return ProbeResult(_classify(exc), seconds=time.monotonic() - started, detail=str(exc)), None
    elapsed = time.monotonic() - started
    if not banner:
        writer.close()
        return ProbeResult("refused", seconds=elapsed, detail="closed without a banner"), None
    peer = banner.decode().strip()
    return ProbeResult("open", peer, elapsed), HeldConnection(reader, writer, peer)


async def tcp(
    netns: str,
    ip: str,
    port: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    protocol: Literal["TCP", "SCTP"] = "TCP",
    source_port: int = 0,
) -> ProbeResult:
    """One connect-and-close probe."""
    result, conn = await connect(netns, ip, port, timeout=timeout, protocol=protocol, source_port=source_port)
    if conn is not None:
        await conn.close()
    return result


async def udp(
    netns: str,
    ip: str,
    port: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    payload: bytes = b"probe",
) -> ProbeResult:
    """One datagram and its answer (``<ns/pod> <payload>``)."""
    sock = await socket_in(netns, _family(ip), socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    try:
        await loop.sock_connect(sock, (ip, port))
        async with asyncio.timeout(timeout):
            await loop.sock_sendall(sock, payload)
            data = await loop.sock_recv(sock, 4096)
    except TimeoutError:
        return ProbeResult("timeout", seconds=time.monotonic() - started)
    except OSError as exc:
        return ProbeResult(_classify(exc), seconds=time.monotonic() - started, detail=str(exc))
    finally:
        sock.close()
    peer, _, _ = data.decode(errors="replace").partition(" ")
    return ProbeResult("open", peer, time.monotonic() - started)
