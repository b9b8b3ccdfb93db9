"""No bus socket outlives its use: cancelled connects, stopped hosts, failed reconnect handshakes.

A relay in front of the real nats-server holds a client in the middle of the
NATS handshake (the server's INFO passes, the PONG that completes the handshake
is held back), which is where a stop or a failed attempt used to leave the
client's socket open until some later garbage collection.  Each test then
waits for the relay to see the client close its end; a socket left open fails
the test here instead of surfacing as an unraisable ``ResourceWarning`` in a
later one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from nats.aio.transport import TcpTransport

from xpunet.bus.backoff import Backoff
from xpunet.bus.nats import connect
from xpunet.runtime.context import ServiceContext
from xpunet.runtime.host import ServiceHost
from xpunet.runtime.settings import Settings, build_settings, cli_layer
from xpunet.runtime.telemetry import setup_telemetry

_WITHIN = 10.0  # bound on each wait, so a socket left open fails the test instead of hanging it


@dataclass(eq=False)
class Leg:
    """One client connection through the relay."""

    client: asyncio.StreamWriter
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)


class HandshakeRelay:
    """A TCP relay to the nats-server; with ``stall`` set, new clients are held mid-handshake."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.url = ""
        self.legs: list[Leg] = []
        self.stall = False
        # Legs whose client sent its PING and now waits for the held-back PONG.
        self.stalled: asyncio.Queue[Leg] = asyncio.Queue()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def cut(self) -> None:
        """Close every current client connection from the relay's side."""
        for leg in self.legs:
            leg.client.close()

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        await self.cut()  # each handler then sees its client's end close and finishes
        async with asyncio.timeout(_WITHIN):
            await asyncio.gather(*list(self._handlers))
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        leg = Leg(client_writer)
        self.legs.append(leg)
        writers = [client_writer]
        down: asyncio.Task[None] | None = None
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
            writers.append(server_writer)
            down = asyncio.create_task(self._down(server_reader, client_writer, self.stall))
            await self._up(client_reader, server_writer, leg, self.stall)
        finally:
            leg.client_closed.set()
            for writer in writers:  # all closed before any await: nothing stays open if cut short
                writer.close()
            if down is not None:
                down.cancel()
                await asyncio.wait({down})
            for writer in writers:
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await writer.wait_closed()
            self._handlers.discard(task)

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, leg: Leg, stall: bool
    ) -> None:
        """Client → server, until the client closes its end; report a stalled leg once it sent PING."""
        tail = b""  # the last bytes seen, for a PING split across reads
        reported = not stall
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
                if not reported:
                    tail = tail[-8:] + data
                    if b"PING\r\n" in tail:
                        reported = True
                        self.stalled.put_nowait(leg)

    async def _down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stall: bool) -> None:
        """Server → client: everything, or (stalling) only the INFO line."""
        with contextlib.suppress(ConnectionError):
            if stall:
                writer.write(await reader.readline())
                await writer.drain()
                await asyncio.Event().wait()  # hold the rest (the PONG) until the leg ends
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()  # the server went away: so does the client's connection


@pytest.fixture
async def relay(nats_server_port: int) -> AsyncIterator[HandshakeRelay]:
    relay = HandshakeRelay(nats_server_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.aclose()


@pytest.fixture
def nats_server_port(nats_url: str) -> int:
    return int(nats_url.rsplit(":", 1)[1])


async def _next_stalled(relay: HandshakeRelay) -> Leg:
    async with asyncio.timeout(_WITHIN):
        return await relay.stalled.get()


async def _client_closes(leg: Leg) -> None:
    async with asyncio.timeout(_WITHIN):
        await leg.client_closed.wait()


async def test_connect_cancelled_mid_handshake_closes_its_socket(relay: HandshakeRelay) -> None:
    relay.stall = True
    attempt = asyncio.create_task(connect(relay.url, name="cancelled", connect_timeout=30))
    leg = await _next_stalled(relay)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    await _client_closes(leg)


async def test_host_stopped_mid_handshake_closes_its_socket(relay: HandshakeRelay) -> None:
    relay.stall = True

    async def run(ctx: ServiceContext[Settings]) -> None:
        raise AssertionError("the bus never came up, so run() is never called")

    settings = build_settings(
        Settings, [cli_layer([f"bus.urls={relay.url}", "bus.connect_timeout=30", "health.enabled=false"])]
    )
    telemetry = setup_telemetry("xpunet-midway", settings.telemetry, {})
    host = ServiceHost("midway", run, settings, telemetry, instance="test-midway")
    stop = asyncio.Event()
    hosting = asyncio.create_task(host.run(stop))
    leg = await _next_stalled(relay)
    stop.set()
    await hosting  # a stop before the bus is up is a clean stop
    assert host.ctx is None
    await _client_closes(leg)


async def test_failed_reconnect_handshake_closes_its_socket(relay: HandshakeRelay) -> None:
    bus = await connect(
        relay.url, name="reconnecting", connect_timeout=1, backoff=Backoff(initial=0.05, maximum=0.1)
    )
    try:
        relay.stall = True
        await relay.cut()
        # The first reconnect attempt times out waiting for its PONG; the next
        # attempt must not leave that attempt's socket open.
        first = await _next_stalled(relay)
        await _next_stalled(relay)
        await _client_closes(first)
    finally:
        await bus.close()


async def test_close_during_a_reconnect_handshake_closes_its_socket(relay: HandshakeRelay) -> None:
    bus = await connect(relay.url, name="closing", connect_timeout=30)
    relay.stall = True
    await relay.cut()
    leg = await _next_stalled(relay)  # the reconnect attempt waits for its PONG
    await bus.close()
    assert bus.client.is_closed
    await _client_closes(leg)


async def test_close_whose_cancel_a_reconnect_attempt_dropped_still_closes(
    relay: HandshakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python 3.11's wait_for (around nats-py's TCP connect) returns the
    # connection instead of raising a cancel that arrives as the connect
    # completes; the attempt then carried on to CONNECTED after close().
    # Injected here: the next connect swallows the first cancel it gets.
    bus = await connect(relay.url, name="dropped-cancel", connect_timeout=30)
    connected = asyncio.Event()
    dropped: list[bool] = []
    tcp_connect = TcpTransport.connect

    async def connect_dropping_a_cancel(self: TcpTransport, *args: Any, **kwargs: Any) -> None:
        await tcp_connect(self, *args, **kwargs)
        if dropped:
            return  # one dropped cancel is the race; more would make the task uncancellable
        dropped.append(True)
        connected.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()  # ends with close()'s cancel, which is then lost

    try:
        monkeypatch.setattr(TcpTransport, "connect", connect_dropping_a_cancel)
        await relay.cut()
        async with asyncio.timeout(_WITHIN):
            await connected.wait()
        await bus.close()
        reconnecting = bus.client._reconnection_task
        assert reconnecting is not None
        async with asyncio.timeout(_WITHIN):
            await asyncio.wait({reconnecting})
        assert bus.client.is_closed
        await _client_closes(relay.legs[-1])
    finally:
        await bus.close()
