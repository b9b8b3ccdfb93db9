"""Host-mode vNICs: veth pairs made with pyroute2 (netlink).

A free pair is `xpv<id>` (host side: up, carrying the node's gateway address of
every family) and `xpp<id>` (the pod side, down, waiting in the host namespace
for the CNI plugin to move it into a pod).  A pair made for a given pod (no
stock: `create(pod_netns)`) has its `xpp<id>` side made directly inside the
pod's namespace, which spares the plugin the move (tens of milliseconds of
kernel time under the RTNL lock, see docs/cni.md).  Binding a pod installs a host route
per pod address through the host side; retiring deletes the pair (a veth is
not reused: the pod namespace may still hold its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute

from xpunet.datapath.attach import rtnl as rtnl_ops
from xpunet.datapath.attach.rtnl import Rtnl, RtnlError
from xpunet.datapath.attach.vnic import BackendError, PoolEmptyError, SeenVnic, Vnic, VnicKind
from xpunet.ipam.ranges import IpAddress

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST_PREFIX = "xpv"
POD_PREFIX = "xpp"
IFA_F_NODAD = 0x02  # the gateway must answer neighbour solicitations at once, not after DAD


def _random_mac() -> str:
    """A random unicast, locally administered MAC (what the kernel would pick for a veth)."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


class VethBackend:
    def __init__(
        self,
        *,
        gateways: Sequence[IpAddress],
        mtu: int = 1500,
        capacity: int | None = None,
        netns: str = "",
    ) -> None:
        self._gateways = tuple(gateways)
        self._mtu = mtu
        self._capacity = capacity
        self._netns = netns
        self._ipr: AsyncIPRoute | None = None
        self._lock = asyncio.Lock()
        self._indexes: dict[str, int] = {}  # host side name -> ifindex, of the pairs made here
        # The hot path (create, routes, delete) uses hand-encoded batched rtnetlink (rtnl.py): one
        # socket per thread; the worker threads take the calls that keep the kernel busy.
        self._local = threading.local()
        self._sockets: list[Rtnl] = []
        self._executor: ThreadPoolExecutor | None = None

    @property
    def kind(self) -> VnicKind:
        return "veth"

    @property
    def capacity(self) -> int | None:
        return self._capacity

    async def _route(self) -> Any:
        if self._ipr is None:
            # The socket is opened in the target namespace once; later calls reuse it.
            self._ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for rtnl in self._sockets:
            rtnl.close()
        self._sockets.clear()
        self._local = threading.local()

    async def discover(self) -> list[SeenVnic]:
        async with self._lock:
            ipr = await self._route()
            links = {str(m.get("ifname")): m async for m in await ipr.link("dump")}
        seen: list[SeenVnic] = []
        for name, msg in sorted(links.items()):
            if not name.startswith(HOST_PREFIX):
                continue
            suffix = name[len(HOST_PREFIX) :]
            peer = links.get(POD_PREFIX + suffix)
            vnic = Vnic(
                id=suffix,
                kind="veth",
                device=POD_PREFIX + suffix,
                host_ifname=name,
                mac=str(peer.get("address")) if peer is not None else "",
                mtu=int(msg.get("mtu") or self._mtu),
            )
            seen.append(SeenVnic(vnic=vnic, in_host=peer is not None))
        return seen

    async def create(self, pod_netns: str = "") -> Vnic:
        suffix = secrets.token_hex(4)
        host, pod = HOST_PREFIX + suffix, POD_PREFIX + suffix
        mac = _random_mac()  # chosen here: the pod side may be in a namespace we cannot query
        # In a worker thread: the kernel holds the caller a few milliseconds, the event loop goes on.
        index = await self._in_thread(self._create, host, pod, mac, pod_netns)
        self._indexes[host] = index
        return Vnic(id=suffix, kind="veth", device=pod, host_ifname=host, mac=mac, mtu=self._mtu)

    def _create(self, host: str, pod: str, mac: str, pod_netns: str) -> int:
        rtnl = self._rtnl()
        fd = -1
        if pod_netns:
            try:
                fd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise BackendError(f"cannot open the pod's network namespace {pod_netns}: {exc}") from exc
        try:
            made = rtnl.run(
                [
                    rtnl_ops.new_veth(host, pod, mtu=self._mtu, peer_mac=mac, peer_netns_fd=fd),
                    rtnl_ops.get_link(host),
                ]
            )[1]
            assert made is not None  # a created link answers its GETLINK
            rtnl.run(
                [
                    rtnl_ops.add_addr(
                        made.index, f"{g}/{g.max_prefixlen}", flags=IFA_F_NODAD if g.version == 6 else 0
                    )
                    for g in self._gateways
                ]
            )
        except RtnlError as exc:
            with contextlib.suppress(OSError):
                rtnl.run([rtnl_ops.del_link_named(host)])
            if exc.errno in (errno.ENOMEM, errno.ENOSPC):
                raise PoolEmptyError(f"cannot create a veth pair: {exc}") from exc
            where = f" with {pod} in {pod_netns}" if pod_netns else ""
            raise BackendError(f"creating veth pair {host}/{pod}{where} failed: {exc}") from exc
        finally:
            if fd >= 0:
                os.close(fd)
        return made.index

    async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        # Route changes are quick in the kernel: done on the event loop's thread, one batch.
        rtnl = self._rtnl()
        try:
            index = self._indexes.get(vnic.host_ifname) or self._index(rtnl, vnic.host_ifname)
            rtnl.run([rtnl_ops.replace_route(f"{a}/{a.max_prefixlen}", oif=index) for a in addresses])
        except RtnlError as exc:
            raise BackendError(f"host routes via {vnic.host_ifname} failed: {exc}") from exc

    async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        # A route already gone with its link (the pod's namespace was deleted first) is fine.
        try:
            self._rtnl().run([rtnl_ops.del_route(f"{a}/{a.max_prefixlen}") for a in addresses])
        except RtnlError as exc:
            raise BackendError(f"removing host routes via {vnic.host_ifname} failed: {exc}") from exc

    async def retire(self, vnic: Vnic) -> bool:
        self._indexes.pop(vnic.host_ifname, None)
        # Unregistering a netdev waits for RCU grace periods (~18 ms here): in a worker thread,
        # where concurrent deletions overlap their waits, instead of stalling the event loop.
        await self._in_thread(self._delete, vnic.host_ifname)
        return False

    def _delete(self, ifname: str) -> None:
        try:
            self._rtnl().run([rtnl_ops.del_link_named(ifname, tolerate=(errno.ENODEV, errno.ENOENT))])
        except RtnlError as exc:
            raise BackendError(f"deleting {ifname} failed: {exc}") from exc

    @staticmethod
    def _index(rtnl: Rtnl, ifname: str) -> int:
        # A targeted GETLINK: looking up by name would dump every link of the host.
        link = rtnl.get_link(ifname)
        if link is None:
            raise BackendError(f"link {ifname} does not exist")
        return link.index

    def _rtnl(self) -> Rtnl:
        """This thread's rtnetlink socket in the host sides' namespace."""
        rtnl: Rtnl | None = getattr(self._local, "rtnl", None)
        if rtnl is None:
            rtnl = Rtnl(rtnl_ops.socket_in(self._netns)) if self._netns else Rtnl()
            self._local.rtnl = rtnl
            self._sockets.append(rtnl)
        return rtnl

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="veth-netlink")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
