"""A few rtnetlink requests, encoded by hand and sent in batches: the per-pod hot path of ADD and DEL.

pyroute2 spends about a quarter of a millisecond of CPU encoding, sending and
parsing each request (its generic NLA machinery); an ADD needs about twenty of
them between the datapath and the CNI agent, all in one Python process, so on
a 2-core node twenty concurrent ADDs queued behind ~100 ms of pyroute2 alone
(docs/cni.md "ADD latency").  Here each request is a `struct.pack` of the
fixed header and a few attributes, and a whole step (set the link up, add the
addresses, add the routes) goes to the kernel in one `sendmsg`; the kernel
handles the messages in order and acknowledges each.  The rest of the
datapath's netlink work (dumps, discovery, the rare paths) stays on pyroute2.

Requests are built as `Request` values and run with `Rtnl.run(requests)`,
which returns the answers in order (for GETLINK the link, else None) or
raises `RtnlError` for the first request the kernel refused (the errno and
the request's description).  Blocking; each call is one or two system calls.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # what pyroute2 marks its routes with: the same routes either way
RTN_UNICAST = 1
SCOPE_LINK = 253
SCOPE_NOWHERE = 255
CLONE_NEWNET = 0x40000000

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, proto, scope, type, flags
_ATTR = struct.Struct("=HH")


class RtnlError(OSError):
    """The kernel refused a request: `errno` and which request."""


def _attr(kind: int, data: bytes) -> bytes:
    size = _ATTR.size + len(data)
    return _ATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def _name(value: str) -> bytes:
    return value.encode() + b"\0"


def _mac(value: str) -> bytes:
    return bytes.fromhex(value.replace(":", ""))


@dataclass(frozen=True, slots=True)
class Request:
    kind: int  # RTM_*
    flags: int  # NLM_F_* besides REQUEST and ACK
    body: bytes
    what: str  # for errors: "add route 10.0.0.5/32"
    tolerate: tuple[int, ...] = ()  # errnos that count as done (e.g. ENODEV when deleting)


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    flags: int
    ifname: str = ""
    mac: str = ""
    mtu: int = 0


def _new_socket() -> socket.socket:
    # Netlink treats DGRAM like RAW; DGRAM lets pyroute2's asyncio transport take the socket too.
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_ROUTE)


def _setns(fd: int) -> None:
    import ctypes  # os.setns is Python 3.12+

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def socket_in(netns: str) -> socket.socket:
    """An rtnetlink socket in network namespace `netns` (a path, or a name under /run/netns).

    The calling thread enters the namespace just long enough to make the socket (a socket stays
    in the namespace it was made in), then returns to its own."""
    path = netns if "/" in netns else f"/run/netns/{netns}"
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                return _new_socket()
            finally:
                _setns(saved)
        finally:
            os.close(saved)
    finally:
        os.close(target)


@dataclass(slots=True)
class Rtnl:
    """One rtnetlink socket (made by the caller in the namespace it should act in, or here)."""

    sock: socket.socket = field(default_factory=_new_socket)
    seq: int = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, requests: list[Request]) -> list[Link | None]:
        """Send every request in one batch; the answers in order.  RtnlError for the first refused."""
        first = self.seq + 1
        chunks = []
        for request in requests:
            self.seq += 1
            flags = NLM_F_REQUEST | NLM_F_ACK | request.flags
            chunks.append(
                _HDR.pack(_HDR.size + len(request.body), request.kind, flags, self.seq, 0) + request.body
            )
        self.sock.settimeout(10.0)
        self.sock.sendall(b"".join(chunks))
        answers: list[Link | None] = [None] * len(requests)
        failures: dict[int, int] = {}
        pending = set(range(len(requests)))
        while pending:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HDR.size <= len(data):
                size, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
                if size < _HDR.size:
                    break
                at = seq - first
                payload = data[offset + _HDR.size : offset + size]
                offset += (size + 3) & ~3
                if not 0 <= at < len(requests):
                    continue  # not ours (an earlier, abandoned exchange)
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    if code and code not in requests[at].tolerate:
                        failures[at] = code
                    pending.discard(at)
                elif kind == RTM_NEWLINK:
                    answers[at] = _parse_link(payload)
                elif kind == NLMSG_DONE:
                    pending.discard(at)
        if failures:
            at = min(failures)
            code = failures[at]
            raise RtnlError(code, f"{requests[at].what}: {os.strerror(code)}")
        return answers

    def get_link(self, ifname: str) -> Link | None:
        """The link called `ifname` in this socket's namespace, or None."""
        [link] = self.run([get_link(ifname, tolerate=(errno.ENODEV,))])
        return link


def _parse_link(payload: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFO.unpack_from(payload)
    ifname, mac, mtu = "", "", 0
    offset = _IFINFO.size
    while offset + _ATTR.size <= len(payload):
        size, kind = _ATTR.unpack_from(payload, offset)
        if size < _ATTR.size:
            break
        data = payload[offset + _ATTR.size : offset + size]
        kind &= 0x3FFF  # without the nested/byte-order bits
        if kind == IFLA_IFNAME:
            ifname = data.rstrip(b"\0").decode()
        elif kind == IFLA_ADDRESS:
            mac = ":".join(f"{b:02x}" for b in data)
        elif kind == IFLA_MTU and len(data) >= 4:
            mtu = struct.unpack_from("=I", data)[0]
        offset += (size + 3) & ~3
    return Link(index=index, flags=flags, ifname=ifname, mac=mac, mtu=mtu)


# -- requests ---------------------------------------------------------------------------------


def get_link(ifname: str, *, tolerate: tuple[int, ...] = ()) -> Request:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
    return Request(RTM_GETLINK, 0, body, f"get link {ifname}", tolerate)


def new_veth(host: str, peer: str, *, mtu: int, peer_mac: str, peer_netns_fd: int = -1) -> Request:
    """A veth pair, the `host` side up; the `peer` side down, with its MAC, made in `peer_netns_fd`."""
    peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_MTU, struct.pack("=I", mtu))
    peer_attrs += _attr(IFLA_ADDRESS, _mac(peer_mac))
    if peer_netns_fd >= 0:
        peer_attrs += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd))
    info = _attr(IFLA_INFO_KIND, b"veth") + _attr(
        IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + peer_attrs)
    )
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, IFF_UP, IFF_UP)
    body += (
        _attr(IFLA_IFNAME, _name(host)) + _attr(IFLA_MTU, struct.pack("=I", mtu)) + _attr(IFLA_LINKINFO, info)
    )
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {host}/{peer}")


def set_link(
    index: int, *, ifname: str = "", mac: str = "", mtu: int = 0, up: bool | None = None, netns_fd: int = -1
) -> Request:
    """Change a link; with `netns_fd` also move it to that namespace (the kernel applies the
    move first, then the name, MAC and MTU, then the flags)."""
    flags = IFF_UP if up else 0
    change = IFF_UP if up is not None else 0
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)
    if netns_fd >= 0:
        body += _attr(IFLA_NET_NS_FD, struct.pack("=I", netns_fd))
    if ifname:
        body += _attr(IFLA_IFNAME, _name(ifname))
    if mac:
        body += _attr(IFLA_ADDRESS, _mac(mac))
    if mtu:
        body += _attr(IFLA_MTU, struct.pack("=I", mtu))
    return Request(RTM_NEWLINK, 0, body, f"set link {ifname or index}")


def del_link(index: int, what: str, *, tolerate: tuple[int, ...] = (errno.ENODEV,)) -> Request:
    return Request(
        RTM_DELLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0), f"delete link {what}", tolerate
    )


def del_link_named(ifname: str, *, tolerate: tuple[int, ...] = (errno.ENODEV,)) -> Request:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, _name(ifname))
    return Request(RTM_DELLINK, 0, body, f"delete link {ifname}", tolerate)


def replace_addr(index: int, cidr: str, *, flags: int = 0) -> Request:
    iface = ipaddress.ip_interface(cidr)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    packed = iface.ip.packed
    body = _IFADDR.pack(family, iface.network.prefixlen, flags, 0, index)
    if iface.version == 4:
        body += _attr(IFA_LOCAL, packed)
    body += _attr(IFA_ADDRESS, packed)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body, f"add address {cidr}")


def add_addr(index: int, cidr: str, *, flags: int = 0) -> Request:
    request = replace_addr(index, cidr, flags=flags)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, request.body, request.what)


def _route_body(
    dst: str,
    *,
    oif: int = 0,
    gateway: str = "",
    scope: int = 0,
    proto: int = RTPROT_STATIC,
    kind: int = RTN_UNICAST,
) -> bytes:
    net = ipaddress.ip_network(dst)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, proto, scope, kind, 0)
    if net.prefixlen:
        body += _attr(RTA_DST, net.network_address.packed)
    if gateway:
        body += _attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if oif:
        body += _attr(RTA_OIF, struct.pack("=I", oif))
    return body


def replace_route(dst: str, *, oif: int, gateway: str = "", scope: int = 0) -> Request:
    body = _route_body(dst, oif=oif, gateway=gateway, scope=scope)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"add route {dst} via {gateway or oif}")


def del_route(dst: str, *, tolerate: tuple[int, ...] = (errno.ESRCH, errno.ENOENT, errno.ENODEV)) -> Request:
    # Any protocol, scope ("nowhere" matches every scope) and type: the route to `dst` in main.
    body = _route_body(dst, scope=SCOPE_NOWHERE, proto=0, kind=0)
    return Request(RTM_DELROUTE, 0, body, f"delete route {dst}", tolerate)
