"""Kernel plumbing for the local cluster: ``ip``/``nft``/``sysctl`` commands, sockets inside a namespace.

Commands go through iproute2 (``ip -n NS -batch -`` for many at once): the
cluster is set up once per run and read by people, so the commands it runs are
the ones an operator would type.  A socket is opened *inside* a namespace by
switching one worker thread into it (``setns(2)`` acts on the calling thread
only) and back; the socket keeps its namespace for life, so probes run from
the event loop without a process per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import weakref
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class ClusterError(RuntimeError):
    """A kernel operation of the local cluster failed (names the command and the kernel's message)."""


async def run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a command; its stdout.  A non-zero exit raises ``ClusterError`` with the command and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)}: exit {proc.returncode}: {err.decode().strip()}")
    return out.decode()


async def ip_batch(netns: str, commands: Sequence[str]) -> None:
    """Several ``ip`` commands in one process in ``netns`` ("" = this namespace); stops at an error."""
    if not commands:
        return
    argv = ["ip", *(("-n", netns) if netns else ()), "-batch", "-"]
    await run(*argv, stdin="\n".join(commands) + "\n")


async def sysctls(netns: str, values: dict[str, str]) -> None:
    """Set sysctls inside ``netns`` (net.* are per namespace)."""
    args = [f"{k}={v}" for k, v in values.items()]
    await run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args)


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns(prefix: str) -> list[str]:
    with contextlib.suppress(FileNotFoundError):
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    return []


_netns_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


async def add_netns(name: str) -> None:
    # Concurrent `ip netns add` race on setting up /run/netns and can crash (SIGSEGV seen): one at a time.
    lock = _netns_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    async with lock:
        await run("ip", "netns", "add", name)
    # Loopback up: responders and the datapath talk to themselves on 127.0.0.1.
    await run("ip", "-n", name, "link", "set", "lo", "up")
    # No duplicate address detection on interfaces made here later: a tentative link-local
    # address delays the first IPv6 neighbour discovery by a second or more.
    await sysctls(name, {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"})


async def delete_netns(name: str) -> bool:
    """Delete a named namespace; False when it did not exist (idempotent)."""
    if not netns_exists(name):
        return False
    out = await run("ip", "netns", "del", name, check=False)
    del out
    return not netns_exists(name)


# --- sockets inside a namespace ---------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _socket_in(netns: str, family: int, kind: int, proto: int) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / netns, os.O_RDONLY)
        try:
            _setns(target)
            try:
                return socket.socket(family, kind, proto)
            finally:
                # Back to where the thread came from; a thread stranded elsewhere would poison the pool.
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


async def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A non-blocking socket created in ``netns`` (needs CAP_SYS_ADMIN)."""
    if not netns_exists(netns):
        raise ClusterError(f"network namespace {netns} does not exist")
    sock = await asyncio.to_thread(_socket_in, netns, family, kind, proto)
    sock.setblocking(False)
    return sock
