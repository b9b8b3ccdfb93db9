"""The pod side of an attachment: move the vNIC into the pod's namespace and set it up.

The plugin opens a netlink socket inside the pod's namespace by entering it
on the calling thread just long enough to create the socket (a socket keeps
the namespace it was made in); that avoids the helper process pyroute2 forks
for `netns=`, which costs tens of milliseconds per ADD.  The namespace path
is checked first: pyroute2 would create a missing named namespace.

`plumb` (every ADD) sends hand-encoded rtnetlink batches (attach/rtnl.py):
pyroute2's per-request CPU was most of an ADD's cost in the agent.  The rare
paths (`unplumb` of VFs and failed ADDs, `inspect` for CHECK) use pyroute2.

Every step is idempotent, so a repeated ADD (or one after an interrupted
ADD) converges on the same interface.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xpunet.datapath.attach import rtnl

IFA_F_NODAD = 0x02  # addresses usable at once, not after duplicate address detection
SCOPE_LINK = 253
IFF_UP = 0x1
NETLINK_ROUTE = 0


class NetnsError(Exception):
    """Setting up the pod interface failed; the message names the step."""


class MissingNetnsError(NetnsError):
    """The pod's network namespace does not exist."""


@dataclass(frozen=True, slots=True)
class Plan:
    device: str  # the vNIC's name in the host namespace
    ifname: str  # its name in the pod
    mac: str
    mtu: int
    addresses: tuple[str, ...]  # CIDRs
    routes: tuple[tuple[str, str], ...]  # (dst CIDR, gateway or "" for on-link)


@dataclass(slots=True)
class Observed:
    exists: bool = False
    up: bool = False
    mac: str = ""
    mtu: int = 0
    addresses: set[str] = field(default_factory=set)
    routes: set[tuple[str, str]] = field(default_factory=set)


def _socket_in(path: str) -> socket.socket:
    if not os.path.exists(path):
        raise MissingNetnsError(f"network namespace {path} does not exist")
    try:
        return rtnl.socket_in(path)  # per thread: the agent runs verbs in threads
    except OSError as exc:
        raise MissingNetnsError(f"cannot enter network namespace {path}: {exc}") from exc


def pod_route(path: str) -> Any:
    return AsyncIPRoute(fileno=_socket_in(path).detach())


async def _get(ipr: Any, ifname: str) -> Any | None:
    """The link called `ifname`, by a targeted GETLINK (a lookup by name dumps every link)."""
    try:
        return (await ipr.link("get", ifname=ifname))[0]  # "get" answers a list, "dump" a stream
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise


async def _lookup(ipr: Any, ifname: str) -> int | None:
    link = await _get(ipr, ifname)
    return int(link["index"]) if link is not None else None


def _mac(link: Any) -> str:
    return str(link.get("address") or "").lower()


async def _ours(ipr: Any, plan: Plan) -> int | None:
    """Our vNIC in the pod: under the pod's ifname only if it has our MAC (the name may be the pod's
    own interface), else still under its host name (an ADD interrupted before the rename)."""
    link = await _get(ipr, plan.ifname)
    if link is not None and _mac(link) == plan.mac.lower():
        return int(link["index"])
    return await _lookup(ipr, plan.device)


def plumb(plan: Plan, netns_path: str, *, host_netns: str = "") -> None:
    """Move the vNIC into the pod and configure it (rename, MAC, MTU, up, addresses, routes).

    Two or three batches of rtnetlink requests in the pod's namespace (rtnl.py): look up the
    interface under both names, then everything else at once.  `host_netns`: where a vNIC not yet
    in the pod is ("": this thread's namespace)."""
    with rtnl.Rtnl(_socket_in(netns_path)) as pod:
        try:
            existing, stray = pod.run(
                [
                    rtnl.get_link(plan.ifname, tolerate=(errno.ENODEV,)),
                    rtnl.get_link(plan.device, tolerate=(errno.ENODEV,)),
                ]
            )
            steps: list[rtnl.Request] = []
            if existing is not None:
                if existing.mac != plan.mac.lower():
                    raise NetnsError(
                        f"interface {plan.ifname} already exists in {netns_path} (MAC {existing.mac})"
                    )
                index = existing.index  # a repeated ADD: already moved and renamed
                if not existing.flags & IFF_UP:
                    steps.append(rtnl.set_link(index, up=True))
            else:
                if stray is None:
                    # Not made in the pod (a vNIC from stock, a VF): moved from the host, renamed.
                    _move(plan, netns_path, host_netns)
                    stray = pod.get_link(plan.ifname)
                    if stray is None:
                        raise NetnsError(
                            f"vNIC {plan.device} did not arrive in {netns_path} as {plan.ifname}"
                        )
                index = stray.index
                if stray.flags & IFF_UP and stray.ifname != plan.ifname:
                    steps.append(rtnl.set_link(index, up=False))  # a netdev is renamed only when down
                # The kernel renames before it applies the flags: rename and up in one message.
                steps.append(rtnl.set_link(index, ifname=plan.ifname, mac=plan.mac, mtu=plan.mtu, up=True))
            for cidr in plan.addresses:
                v6 = ipaddress.ip_interface(cidr).version == 6
                steps.append(rtnl.replace_addr(index, cidr, flags=IFA_F_NODAD if v6 else 0))
            for dst, gateway in plan.routes:
                scope = 0 if gateway else SCOPE_LINK
                steps.append(rtnl.replace_route(dst, oif=index, gateway=gateway, scope=scope))
            pod.run(steps)
        except OSError as exc:
            raise NetnsError(f"configuring {plan.ifname} in {netns_path} failed: {exc}") from exc


async def plumb_on_loop(plan: Plan, netns_path: str, *, host_netns: str = "") -> None:
    """`plumb` from an event loop's thread: right here when the vNIC is already in the pod (a few
    quick requests), in a worker thread when it must be moved (the kernel holds the caller ~16 ms
    under its RTNL lock: the loop must not wait on that)."""
    try:
        with rtnl.Rtnl(_socket_in(netns_path)) as pod:
            here = pod.run(
                [
                    rtnl.get_link(plan.ifname, tolerate=(errno.ENODEV,)),
                    rtnl.get_link(plan.device, tolerate=(errno.ENODEV,)),
                ]
            )
    except OSError as exc:
        raise NetnsError(f"looking for {plan.device} in {netns_path} failed: {exc}") from exc
    if any(link is not None for link in here):
        plumb(plan, netns_path, host_netns=host_netns)
    else:
        await asyncio.to_thread(plumb, plan, netns_path, host_netns=host_netns)


def _move(plan: Plan, netns_path: str, host_netns: str) -> None:
    """Move the vNIC from the host into the pod namespace, renamed and with its MAC and MTU, in one
    RTM_NEWLINK.  The kernel does this under its RTNL lock with an RCU barrier (~16 ms here): the
    veth back-end avoids it by making the pod side in the pod (docs/cni.md "ADD latency")."""
    with rtnl.Rtnl(rtnl.socket_in(host_netns)) if host_netns else rtnl.Rtnl() as host:
        link = host.get_link(plan.device)
        if link is None:
            raise NetnsError(f"vNIC {plan.device} is in neither the host namespace nor {netns_path}")
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            steps = [rtnl.set_link(link.index, up=False)] if link.flags & IFF_UP else []  # a VF may be up
            steps.append(
                rtnl.set_link(link.index, netns_fd=fd, ifname=plan.ifname, mac=plan.mac, mtu=plan.mtu)
            )
            host.run(steps)
        finally:
            os.close(fd)


async def unplumb(plan: Plan, netns_path: str, *, move_back: bool, host_netns: str = "") -> None:
    """Undo `plumb`: a VF or sub-function goes back to the host under its own name; a veth end
    is deleted (its host side goes with it).  Missing pieces are fine: DEL is idempotent.
    `host_netns`: the host's namespace ("": this thread's)."""
    if not netns_path:
        return
    try:
        pod = pod_route(netns_path)
    except MissingNetnsError:
        return
    try:
        index = await _ours(pod, plan)
        if index is None:
            return
        if not move_back:
            await pod.link("del", index=index)
            return
        await pod.link("set", index=index, state="down")
        await pod.link("set", index=index, ifname=plan.device)
        host = (host_netns if "/" in host_netns else f"/run/netns/{host_netns}") if host_netns else ""
        fd = os.open(host or "/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            await pod.link("set", index=index, net_ns_fd=fd)
        finally:
            os.close(fd)
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise NetnsError(f"removing {plan.ifname} from {netns_path} failed: {exc}") from exc
    finally:
        pod.close()


async def inspect(netns_path: str, ifname: str) -> Observed:
    pod = pod_route(netns_path)
    seen = Observed()
    try:
        link = await _get(pod, ifname)
        if link is None:
            return seen
        index = int(link["index"])
        seen.exists = True
        seen.up = bool(link["flags"] & IFF_UP)
        seen.mac = str(link.get("address") or "")
        seen.mtu = int(link.get("mtu") or 0)
        async for msg in await pod.addr("dump", index=index):
            seen.addresses.add(f"{msg.get('address')}/{msg['prefixlen']}")
        for family in (socket.AF_INET, socket.AF_INET6):
            async for msg in await pod.route("dump", family=family, oif=index):
                default = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
                dst = f"{msg.get('dst')}/{msg['dst_len']}" if msg.get("dst") else default
                seen.routes.add((dst, str(msg.get("gateway") or "")))
    except NetlinkError as exc:
        raise NetnsError(f"reading {ifname} in {netns_path} failed: {exc}") from exc
    finally:
        pod.close()
    return seen
