"""The netlink adapter of the overlay: the vxlan device, its FDB entries and neighbours, over pyroute2.  I/O.

What is xpunet's (see ``vxlan``): the device it was told to use (created by it
and then carrying the alias ``xpunet``, or adopted), and on that device only
the FDB entries and permanent neighbours whose MAC has xpunet's prefix.
Nothing else is read as ours, changed or deleted; an adopted device is never
deleted.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from typing import Any, cast

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xpunet.datapath.kernel.render import Items
from xpunet.datapath.kernel.vxlan import FDB, LINK, LINK_ALIAS, MAC_PREFIXES, NEIGH, VXLAN_PORT

log = logging.getLogger(__name__)
_PERMANENT = 0x80  # NUD_PERMANENT
_ENOENT, _ESRCH = 2, 3


def _addr(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _ours(mac: object) -> bool:
    return isinstance(mac, str) and mac.lower().startswith(MAC_PREFIXES)


class Overlay:
    """xpunet's overlay objects in ``netns`` (empty: the caller's namespace) for device ``ifname``."""

    def __init__(self, netns: str = "", ifname: str = "vxlan0") -> None:
        self._netns = netns
        self._ifname = ifname
        self._ipr: Any = None

    async def _route(self) -> Any:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def _links(self) -> dict[str, Any]:
        ipr = await self._route()
        return {str(m.get("ifname")): m async for m in await ipr.link("dump")}

    async def read(self) -> Items:
        """The device (if it is a vxlan device), xpunet's FDB entries and neighbours on it, as items."""
        links = await self._links()
        dev = links.get(self._ifname)
        if dev is None or _kind(dev) != "vxlan":
            return {}
        names = {int(m["index"]): name for name, m in links.items()}
        data = _vxlan_data(dev)
        local4, local6 = data.get("IFLA_VXLAN_LOCAL"), data.get("IFLA_VXLAN_LOCAL6")
        local = (4, int(ipaddress.ip_address(local4))) if local4 else (6, int(ipaddress.ip_address(local6)))
        if not local4 and not local6:
            local = (0, 0)
        uplink = names.get(int(data.get("IFLA_VXLAN_LINK") or 0), "")
        out: Items = {
            (LINK, (self._ifname,)): (
                int(data.get("IFLA_VXLAN_ID") or 0),
                str(dev.get("address")),
                uplink,
                *local,
            )
        }
        ipr = await self._route()
        index = int(dev["index"])
        async for m in await ipr.fdb("dump", ifindex=index):
            mac, dst = m.get("NDA_LLADDR"), m.get("NDA_DST")
            if int(m.get("ifindex", 0)) == index and _ours(mac) and dst:
                ip = ipaddress.ip_address(dst)
                out[(FDB, (self._ifname, str(mac)))] = (ip.version, int(ip))
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            async for m in await ipr.neigh("dump", family=family, ifindex=index):
                mac, dst = m.get("NDA_LLADDR"), m.get("NDA_DST")
                if int(m.get("ifindex", 0)) == index and _ours(mac) and m["state"] & _PERMANENT and dst:
                    key = (self._ifname, version, int(ipaddress.ip_address(dst)))
                    out[(NEIGH, key)] = str(mac)
        return out

    async def apply_adds(self, add: Items, delete: Items) -> list[str]:
        """The device first, then FDB entries and neighbours (before the routes that use them)."""
        errors: list[str] = []
        for (kind, key), value in add.items():
            if kind == LINK:
                await self._ensure_link(str(key[0]), cast(tuple[Any, ...], value), errors)
        idx = await self._index()
        for (kind, key), value in add.items():
            if kind not in (FDB, NEIGH):
                continue
            if idx is None:
                errors.append(f"{kind[1:]} {key}: no device {self._ifname}")
                continue
            ipr = await self._route()
            try:
                if kind == FDB:
                    version, vtep = cast(tuple[int, int], value)
                    if (kind, key) in delete:  # a changed VTEP: the old entry goes first
                        await self._fdb_del(idx, str(key[1]), delete[(kind, key)])
                    await ipr.fdb("append", ifindex=idx, lladdr=str(key[1]), dst=_addr(version, vtep))
                else:
                    version, gw = cast(tuple[int, int], key[1:])
                    await ipr.neigh(
                        "replace", ifindex=idx, dst=_addr(version, gw), lladdr=str(value), state=_PERMANENT
                    )
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there
                    errors.append(f"{kind[1:]} {key} on {self._ifname}: {exc}")
        return errors

    async def apply_deletes(self, delete: Items, add: Mapping[Any, object]) -> list[str]:
        """Neighbours and FDB entries no longer needed, then the device if xpunet made it."""
        errors: list[str] = []
        idx = await self._index()
        ipr = await self._route()
        for (kind, key), value in delete.items():
            if (kind, key) in add or idx is None:
                continue
            try:
                if kind == FDB:
                    await self._fdb_del(idx, str(key[1]), value)
                elif kind == NEIGH:
                    version, gw = cast(tuple[int, int], key[1:])
                    await ipr.neigh("del", ifindex=idx, dst=_addr(version, gw), lladdr=str(value))
            except NetlinkError as exc:
                if exc.code not in (_ENOENT, _ESRCH):
                    errors.append(f"delete {kind[1:]} {key} on {self._ifname}: {exc}")
        for (kind, key), _value in delete.items():
            if kind == LINK and (kind, key) not in add:
                await self._drop_link(errors)
        return errors

    async def _fdb_del(self, idx: int, mac: str, value: object) -> None:
        version, vtep = cast(tuple[int, int], value)
        ipr = await self._route()
        try:
            await ipr.fdb("del", ifindex=idx, lladdr=mac, dst=_addr(version, vtep))
        except NetlinkError as exc:
            if exc.code not in (_ENOENT, _ESRCH):
                raise

    async def _index(self) -> int | None:
        ipr = await self._route()
        found = await ipr.link_lookup(ifname=self._ifname)
        return int(found[0]) if found else None

    async def _ensure_link(self, name: str, value: tuple[Any, ...], errors: list[str]) -> None:
        vni, mac, uplink, local_version, local = value
        ipr = await self._route()
        dev = (await self._links()).get(name)
        try:
            if dev is None:
                up = await ipr.link_lookup(ifname=uplink)
                if not up:
                    errors.append(f"{name}: no uplink {uplink} to carry the overlay")
                    return
                local_key = "vxlan_local" if local_version == 4 else "vxlan_local6"
                await ipr.link(
                    "add",
                    ifname=name,
                    kind="vxlan",
                    vxlan_id=vni,
                    vxlan_port=VXLAN_PORT,
                    vxlan_link=up[0],
                    vxlan_learning=0,
                    **{local_key: _addr(local_version, local)},
                )
                log.info("overlay %s: created %s (VNI %d over %s)", self._netns or "(own)", name, vni, uplink)
                idx = (await ipr.link_lookup(ifname=name))[0]
                await ipr.link("set", index=idx, ifalias=LINK_ALIAS)
            elif _kind(dev) != "vxlan" or int(_vxlan_data(dev).get("IFLA_VXLAN_ID") or 0) != vni:
                errors.append(f"{name} exists but is not a vxlan device of VNI {vni}: left alone, no overlay")
                return
            else:
                idx = int(dev["index"])
                if str(dev.get("address")) != mac:
                    where = self._netns or "(own)"
                    log.info("overlay %s: adopting %s (VNI %d), MAC %s", where, name, vni, mac)
            await ipr.link("set", index=idx, address=mac, state="up")
        except NetlinkError as exc:
            errors.append(f"{name}: {exc}")

    async def _drop_link(self, errors: list[str]) -> None:
        dev = (await self._links()).get(self._ifname)
        if dev is None or dev.get("ifalias") != LINK_ALIAS:
            return  # adopted (or gone): not ours to delete
        ipr = await self._route()
        try:
            await ipr.link("del", index=int(dev["index"]))
        except NetlinkError as exc:
            if exc.code != 19:  # ENODEV: already gone
                errors.append(f"delete {self._ifname}: {exc}")


def _kind(link: Any) -> str:
    info = link.get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND")) if info is not None else ""


def _vxlan_data(link: Any) -> Any:
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info is not None else None
    return data if data is not None else {}
