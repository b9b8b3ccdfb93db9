"""Named nft counters of one table, read with one nfnetlink dump (``NFT_MSG_GETOBJ``).  I/O.

libnftables answers any ``list`` command by first loading its whole cache,
set elements included: ``list counters table inet xpunet`` takes seconds
with 110k elements and would hold up the namespace's worker thread (every
transaction waits behind it).  The kernel can dump just the counter objects
of one table; this module asks for exactly that.  The socket is opened by the
calling thread, so call it on the namespace's worker thread.

Message layout (linux/netfilter/nfnetlink.h, nf_tables.h): nlmsghdr, then
nfgenmsg (family, version 0, resource id 0), then attributes; a counter comes
back as NFTA_OBJ_NAME plus NFTA_OBJ_DATA { NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS }
(64-bit, big-endian).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Final

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_NFTABLES: Final = 10
NFT_MSG_NEWOBJ: Final = 18
NFT_MSG_GETOBJ: Final = 19
NFTA_OBJ_TABLE: Final = 1
NFTA_OBJ_NAME: Final = 2
NFTA_OBJ_TYPE: Final = 3
NFTA_OBJ_DATA: Final = 4
NFT_OBJECT_COUNTER: Final = 1
NFTA_COUNTER_BYTES: Final = 1
NFTA_COUNTER_PACKETS: Final = 2
NFPROTO_INET: Final = 1
NLM_F_REQUEST: Final = 0x1
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian, 0 here)
_NLATTR = struct.Struct("=HH")  # len, type


class NetlinkError(OSError):
    """The kernel answered the dump with an error."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def counter_dump_request(table: str, *, seq: int, family: int = NFPROTO_INET) -> bytes:
    """The GETOBJ dump request for the counters of ``table``."""
    body = _NFGENMSG.pack(family, 0, 0)
    body += _attr(NFTA_OBJ_TABLE, table.encode() + b"\0")
    body += _attr(NFTA_OBJ_TYPE, struct.pack(">I", NFT_OBJECT_COUNTER))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _attrs(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while start + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, start)
        if length < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = data[start + _NLATTR.size : start + length]
        start += _align(length)
    return out


def parse_counter_dump(data: bytes, counters: dict[str, tuple[int, int]]) -> bool:
    """Add the counters in one received buffer to ``counters``; True once the dump is done."""
    pos = 0
    new_obj = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            raise NetlinkError(errno.EPROTO, "malformed netlink message")
        end = pos + length
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, pos + _NLMSGHDR.size)
            if code != 0:
                raise NetlinkError(-code, f"counter dump: {os.strerror(-code)}")
        elif kind == new_obj:
            attrs = _attrs(data, pos + _NLMSGHDR.size + _NFGENMSG.size, end)
            name = attrs.get(NFTA_OBJ_NAME, b"").rstrip(b"\0").decode()
            inner = attrs.get(NFTA_OBJ_DATA)
            if name and inner is not None:
                values = _attrs(inner, 0, len(inner))
                (nbytes,) = struct.unpack(">Q", values.get(NFTA_COUNTER_BYTES, bytes(8)))
                (packets,) = struct.unpack(">Q", values.get(NFTA_COUNTER_PACKETS, bytes(8)))
                counters[name] = (packets, nbytes)
        pos = _align(end)
    return False


def read_counters(table: str, *, family: int = NFPROTO_INET) -> dict[str, tuple[int, int]]:
    """name → (packets, bytes) of every named counter of ``table``, in the calling thread's namespace."""
    counters: dict[str, tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.sendall(counter_dump_request(table, seq=1, family=family))
        while True:
            if parse_counter_dump(sock.recv(1 << 17), counters):
                return counters
