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
import errno
import logging
import os
import secrets
from collections.abc import Sequence
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xpunet.datapath.attach.vnic import BackendError, PoolEmptyError, SeenVnic, Vnic, VnicKind
from xpunet.ipam.ranges import IpAddress

log = logging.getLogger(__name__)

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
        peer: dict[str, Any] = {"ifname": pod, "mtu": self._mtu, "address": mac}
        async with self._lock:
            ipr = await self._route()
            fd = -1
            try:
                if pod_netns:
                    try:
                        fd = os.open(pod_netns, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError as exc:
                        raise BackendError(
                            f"cannot open the pod's network namespace {pod_netns}: {exc}"
                        ) from exc
                    peer["net_ns_fd"] = fd
                await ipr.link("add", ifname=host, kind="veth", peer=peer, mtu=self._mtu, state="up")
                index = await self._index(ipr, host)
                for gateway in self._gateways:
                    await ipr.addr(
                        "add",
                        index=index,
                        address=str(gateway),
                        prefixlen=gateway.max_prefixlen,
                        flags=IFA_F_NODAD if gateway.version == 6 else 0,
                    )
            except NetlinkError as exc:
                await self._delete(ipr, host)
                if exc.code in (errno.ENOMEM, errno.ENOSPC):
                    raise PoolEmptyError(f"cannot create a veth pair: {exc}") from exc
                where = f" with {pod} in {pod_netns}" if pod_netns else ""
                raise BackendError(f"creating veth pair {host}/{pod}{where} failed: {exc}") from exc
            finally:
                if fd >= 0:
                    os.close(fd)
            self._indexes[host] = index
        return Vnic(id=suffix, kind="veth", device=pod, host_ifname=host, mac=mac, mtu=self._mtu)

    async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        async with self._lock:
            ipr = await self._route()
            try:
                index = self._indexes.get(vnic.host_ifname) or await self._index(ipr, vnic.host_ifname)
                for address in addresses:
                    await ipr.route("replace", dst=f"{address}/{address.max_prefixlen}", oif=index)
            except NetlinkError as exc:
                raise BackendError(f"host routes via {vnic.host_ifname} failed: {exc}") from exc

    async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        async with self._lock:
            ipr = await self._route()
            for address in addresses:
                try:
                    await ipr.route("del", dst=f"{address}/{address.max_prefixlen}")
                except NetlinkError as exc:
                    # Already gone with the link (the pod's namespace was deleted first).
                    if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        raise BackendError(f"removing host route to {address} failed: {exc}") from exc

    async def retire(self, vnic: Vnic) -> bool:
        self._indexes.pop(vnic.host_ifname, None)
        async with self._lock:
            await self._delete(await self._route(), vnic.host_ifname)
        return False

    async def _delete(self, ipr: Any, ifname: str) -> None:
        try:
            await ipr.link("del", ifname=ifname)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise BackendError(f"deleting {ifname} failed: {exc}") from exc

    @staticmethod
    async def _index(ipr: Any, ifname: str) -> int:
        # A targeted GETLINK: looking up by name would dump every link of the host.
        try:
            return int((await ipr.link("get", ifname=ifname))[0]["index"])
        except NetlinkError as exc:
            raise BackendError(f"link {ifname} does not exist ({exc})") from exc
