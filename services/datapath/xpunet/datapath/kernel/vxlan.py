"""VXLAN next hops → the kernel objects of the overlay: one vxlan device, FDB entries, neighbours.  Pure.

The pipeline's ``via_vxlan_vN(vtep_addr, vni, port)`` next hop says "encapsulate
towards that node's tunnel endpoint".  In the kernel (the way flannel's vxlan
backend does it, without a control plane to exchange MAC addresses):

* every node's vxlan device carries a MAC *derived from its own VTEP address*
  (:func:`vtep_mac`), so each node knows every other node's device MAC from the
  next hop alone;
* per remote VTEP an FDB entry ``<its MAC> dst <its VTEP>`` on the device
  (unicast, no flooding, no learning);
* per remote VTEP a permanent neighbour on the device for the route's gateway:
  IPv4 routes go ``via <VTEP> onlink``, IPv6 routes via the link-local address
  made from the remote MAC (EUI-64), both resolving to the remote MAC;
* the pod CIDR routes (``routes.py``, protocol 93) through the device.

The device is the one named ``vxlan0`` unless configured otherwise.  An
existing vxlan device of that name with the same VNI (the local cluster's
overlay mode makes ``vxlan0``, VNI 4096, ``local`` = the node's first address)
is adopted: only its MAC is set.  Otherwise the target creates it (and then
owns it: it carries the link alias ``xpunet``).  FDB entries and neighbours
are xpunet's when their MAC has xpunet's prefix (:data:`MAC_PREFIXES`).

This node's own VTEP is its first address, IPv4 preferred, as the routing
intent defines a node's underlay address: the lowest ``deliver_host`` address
of the node's own ``fib`` entries.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

from xpunet.pipeline.entries import TableEntry

LINK = "@link"
"""``(ifname,) → (vni, mac, uplink ifname, local version, local address)``."""
FDB = "@fdb"
"""``(ifname, mac) → (version, remote VTEP)``."""
NEIGH = "@neigh"
"""``(ifname, version, gateway) → mac``."""

DEFAULT_IFNAME = "vxlan0"
VXLAN_PORT = 4789
LINK_ALIAS = "xpunet"
MAC_PREFIXES = ("0e:78:", "0e:79:")  # locally administered unicast: "x" for IPv4 VTEPs, "y" for IPv6
RTNH_F_ONLINK = 4

Vtep = tuple[int, int]  # (IP version, address)


def vtep_mac(vtep: Vtep) -> str:
    """The MAC of the vxlan device of the node whose VTEP is ``vtep`` (equal on every node)."""
    version, addr = vtep
    if version == 4:
        tail = addr.to_bytes(4, "big")
        prefix = MAC_PREFIXES[0]
    else:
        tail = hashlib.blake2b(addr.to_bytes(16, "big"), digest_size=4).digest()
        prefix = MAC_PREFIXES[1]
    return prefix + ":".join(f"{b:02x}" for b in tail)


def link_local(mac: str) -> int:
    """fe80::/64 with the EUI-64 interface id of ``mac``: the IPv6 gateway behind that MAC."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return (0xFE80 << 112) | int.from_bytes(eui, "big")


def gateway(route_version: int, vtep: Vtep) -> int | None:
    """The gateway of a route of ``route_version`` through ``vtep``; None: cannot be expressed."""
    if route_version == 6:
        return link_local(vtep_mac(vtep))
    return vtep[1] if vtep[0] == 4 else None


def next_hop_vtep(nh: TableEntry) -> Vtep:
    return (6 if nh.action.endswith("_v6") else 4, nh.param("vtep_addr"))


def local_vtep(host_entries: Iterable[TableEntry]) -> Vtep | None:
    """This node's VTEP: its lowest IPv4 ``deliver_host`` address, else its lowest IPv6 one."""
    found: list[Vtep] = []
    for e in host_entries:
        m = e.match_of("dst_addr")
        value = getattr(m, "value", None)
        if isinstance(value, int):
            found.append((6 if e.table.endswith("_v6") else 4, value))
    return min(found) if found else None


def render_overlay(
    next_hops: Iterable[TableEntry],
    host_entries: Iterable[TableEntry],
    port_names: dict[int, str],
    ifname: str,
    problems: list[str],
) -> dict[tuple[str, tuple[object, ...]], object]:
    """The device, FDB entries and neighbours every ``via_vxlan`` next hop of the node needs."""
    vxlan = sorted(
        (nh for nh in next_hops if ".via_vxlan_" in nh.action or nh.action.startswith("via_vxlan_")),
        key=lambda nh: repr(nh.key),
    )
    if not vxlan:
        return {}
    local = local_vtep(host_entries)
    if local is None:
        problems.append(
            f"{ifname}: this node's own address (fib deliver_host) is unknown: no VTEP, no overlay"
        )
        return {}
    vnis = sorted({nh.param("vni") for nh in vxlan})
    vni = vnis[0]
    if len(vnis) > 1:
        problems.append(f"{ifname}: next hops use VNIs {vnis}; only VNI {vni} is programmed")
    ports = sorted({nh.param("port") for nh in vxlan if nh.param("vni") == vni})
    uplink = port_names.get(ports[0])
    if uplink is None:
        problems.append(f"{ifname}: uplink port {ports[0]} has no interface; no overlay")
        return {}
    out: dict[tuple[str, tuple[object, ...]], object] = {
        (LINK, (ifname,)): (vni, vtep_mac(local), uplink, local[0], local[1]),
        # Decapsulated packets from other nodes enter here: an uplink, like the underlay's.
        ("port_kind", (ifname,)): "goto:svc_check",
        # TCP SYNs leaving through it get the device's MSS (ruleset chain ``mss``).
        ("mss_clamp", (ifname,)): None,
    }
    for nh in vxlan:
        if nh.param("vni") != vni:
            continue
        vtep = next_hop_vtep(nh)
        if vtep[0] != local[0]:
            problems.append(
                f"next_hop {nh.origin or nh.key}: VTEP {_ip(vtep)} is not of this node's VTEP family"
            )
            continue
        mac = vtep_mac(vtep)
        out[(FDB, (ifname, mac))] = vtep
        for version in (4, 6):
            gw = gateway(version, vtep)
            if gw is not None:
                out[(NEIGH, (ifname, version, gw))] = mac
    return out


def _ip(vtep: Vtep) -> str:
    return str(ipaddress.ip_address(vtep[1]) if vtep[0] == 4 else ipaddress.IPv6Address(vtep[1]))
