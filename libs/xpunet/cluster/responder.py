"""The tiny server each local-cluster pod runs: says who it is, then echoes.  Started inside the pod netns.

``python -m xpunet.cluster.responder --name ns/pod --tcp 80,8080 --udp 5353 [--sctp 7777]``

* TCP (and SCTP): on accept, send ``<ns/pod>\\n``, then echo every line back
  (so a test can hold a connection open and check it still works later);
* UDP: answer each datagram with ``<ns/pod> <datagram>``.

Listens on every address of both families.  Prints ``ready`` on stdout once
every socket is bound (the cluster waits for that line), and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from typing import Any

IPPROTO_SCTP = 132


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # a datagram transport (uvloop's is no DatagramTransport subclass)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(self.name + b" " + data, addr)


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def _dual_stack(kind: int, port: int, proto: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind, proto)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    return sock


async def serve(name: str, tcp: list[int], udp: list[int], sctp: list[int]) -> None:
    banner = name.encode()

    async def on_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(banner + b"\n")
            await writer.drain()
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    for port in tcp:
        sock = _dual_stack(socket.SOCK_STREAM, port)
        servers.append(await asyncio.start_server(on_stream, sock=sock, backlog=256))
    for port in sctp:
        sock = _dual_stack(socket.SOCK_STREAM, port, IPPROTO_SCTP)
        servers.append(await asyncio.start_server(on_stream, sock=sock, backlog=64))
    transports = []
    for port in udp:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(banner), sock=_dual_stack(socket.SOCK_DGRAM, port)
        )
        transports.append(transport)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.close()  # nobody reads further; a vanished reader must not kill us
    await stop.wait()
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xpunet-responder", description=__doc__)
    parser.add_argument("--name", required=True, help="what to answer with (ns/pod)")
    parser.add_argument("--tcp", default="", help="comma-separated TCP ports")
    parser.add_argument("--udp", default="", help="comma-separated UDP ports")
    parser.add_argument("--sctp", default="", help="comma-separated SCTP ports")
    parser.add_argument("--run-dir", default="", help="the cluster run this belongs to (for `down`)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.name, _ports(args.tcp), _ports(args.udp), _ports(args.sctp)))


if __name__ == "__main__":
    main()
