"""The netlink adapter: xpunet's routes in a network namespace, over pyroute2.  I/O.

Every route xpunet writes carries route protocol ``RT_PROTO_XPUNET`` (93) in
the main table; reading back lists only those, so routes made by anyone else
(the kernel's connected routes, a CNI's host routes, an operator's static
routes) are never read as ours nor deleted.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any, cast

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xpunet.datapath.kernel.render import ROUTE, Items
from xpunet.datapath.kernel.ruleset import RT_PROTO_XPUNET
from xpunet.datapath.kernel.vxlan import RTNH_F_ONLINK

log = logging.getLogger(__name__)
MAIN_TABLE = 254


def _addr(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


class Routes:
    """Read and write xpunet-protocol routes in ``netns`` (empty: the caller's namespace)."""

    def __init__(self, netns: str = "") -> None:
        self._netns = netns
        self._ipr: Any = None

    async def _route(self) -> Any:
        if self._ipr is None:
            self._ipr = AsyncIPRoute(netns=self._netns) if self._netns else AsyncIPRoute()
        return self._ipr

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def read(self) -> Items:
        """Our routes as items: ``(ROUTE, (version, dst, prefix_len)) → (gateway or None, ifname)``.

        An on-link gateway (the overlay's IPv4 routes) adds a third part: ``"onlink"``.
        """
        ipr = await self._route()
        names = {int(m["index"]): str(m.get("ifname")) async for m in await ipr.link("dump")}
        out: Items = {}
        for version, fam in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            async for m in await ipr.route("dump", family=fam):
                if m["proto"] != RT_PROTO_XPUNET or m.get("table") != MAIN_TABLE:
                    continue
                dst = m.get("dst")
                gw = m.get("gateway")
                key = (version, int(ipaddress.ip_address(dst)) if dst else 0, int(m["dst_len"]))
                gateway = int(ipaddress.ip_address(gw)) if gw else None
                value: tuple[object, ...] = (gateway, names.get(int(m.get("oif") or 0), ""))
                if int(m.get("flags") or 0) & RTNH_F_ONLINK:
                    value += ("onlink",)
                out[(ROUTE, key)] = value
        return out

    async def apply(self, delete: Items, add: Items) -> list[str]:
        """Delete then replace routes; returns one message per route that failed (the rest still apply)."""
        ipr = await self._route()
        errors: list[str] = []
        for (_, key), _value in delete.items():
            if (ROUTE, key) in add:
                continue  # replaced below
            version, dst, plen = cast(tuple[int, int, int], key)
            try:
                await ipr.route("del", dst=f"{_addr(version, dst)}/{plen}", proto=RT_PROTO_XPUNET)
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    errors.append(f"delete route {_addr(version, dst)}/{plen}: {exc}")
        for (_, key), value in add.items():
            version, dst, plen = cast(tuple[int, int, int], key)
            gateway, ifname = cast(tuple[int | None, str], value)[:2]
            where = f"route {_addr(version, dst)}/{plen} dev {ifname}"
            try:
                idx = await ipr.link_lookup(ifname=ifname)
                if not idx:
                    errors.append(f"{where}: no interface {ifname}")
                    continue
                kw: dict[str, Any] = {
                    "dst": f"{_addr(version, dst)}/{plen}",
                    "oif": idx[0],
                    "proto": RT_PROTO_XPUNET,
                    "family": socket.AF_INET if version == 4 else socket.AF_INET6,
                }
                if gateway is not None:
                    kw["gateway"] = _addr(version, gateway)
                if "onlink" in cast(tuple[object, ...], value)[2:]:
                    kw["flags"] = RTNH_F_ONLINK
                await ipr.route("replace", **kw)
            except NetlinkError as exc:
                errors.append(f"{where}: {exc}")
        return errors
