"""xPU vNICs found in sysfs: SR-IOV virtual functions and CDQ/sub-function netdevs.

These are a fixed inventory made by the device (firmware, `sriov_numvfs`,
devlink), not by us: `create` never makes one, a retired vNIC is handed out
again once its netdev is back in the host namespace (the kernel returns a
physical netdev to the initial namespace when its pod's namespace dies; the
CNI plugin moves it back on DEL).

* SR-IOV: `<sysfs>/class/net/<pf>/device/virtfn<N>` links to the VF's PCI
  device; its netdev (while in the host namespace) is the one entry of
  `<vf>/net/`, with its MAC in `<vf>/net/<name>/address`.  P4 port id:
  `port_base + N`.
* Sub-functions (mlx5 SFs, IPU CDQ netdevs on the auxiliary bus):
  `<sysfs>/bus/auxiliary/devices/<drv>.sf.<N>/net/<name>`; `sfnum` when the
  device has it, else N, gives the P4 port id `port_base + sfnum`.

Sysfs reads are tiny and local; they run inline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from xpunet.datapath.attach.vnic import PoolEmptyError, SeenVnic, Vnic, VnicKind
from xpunet.ipam.ranges import IpAddress

log = logging.getLogger(__name__)

_VIRTFN = re.compile(r"^virtfn(\d+)$")
_SF = re.compile(r"\.sf\.(\d+)$")


def _netdev(device_dir: Path) -> tuple[str, str] | None:
    """(name, mac) of the netdev under a device directory, when it is in this namespace."""
    net = device_dir / "net"
    if not net.is_dir():
        return None
    names = sorted(p.name for p in net.iterdir())
    if not names:
        return None
    address = net / names[0] / "address"
    mac = address.read_text().strip() if address.exists() else ""
    return names[0], mac


def discover_vfs(sysfs: Path, pf: str, *, port_base: int = 0, mtu: int = 1500) -> list[SeenVnic]:
    """The VFs of physical function `pf`, by VF index."""
    device = sysfs / "class" / "net" / pf / "device"
    if not device.is_dir():
        raise FileNotFoundError(f"no SR-IOV physical function {pf!r}: {device} does not exist")
    found: list[tuple[int, SeenVnic]] = []
    for entry in device.iterdir():
        match = _VIRTFN.match(entry.name)
        if match is None:
            continue
        index = int(match.group(1))
        vf_dir = entry.resolve()
        netdev = _netdev(vf_dir)
        vnic = Vnic(
            id=vf_dir.name,
            kind="sriov-vf",
            device=netdev[0] if netdev else "",
            mac=netdev[1] if netdev else "",
            mtu=mtu,
            pci_address=vf_dir.name,
            p4_port=port_base + index,
        )
        found.append((index, SeenVnic(vnic=vnic, in_host=netdev is not None)))
    return [seen for _, seen in sorted(found, key=lambda item: item[0])]


def discover_subfunctions(sysfs: Path, *, port_base: int = 0, mtu: int = 1500) -> list[SeenVnic]:
    """Sub-function netdevs on the auxiliary bus, by sub-function number."""
    bus = sysfs / "bus" / "auxiliary" / "devices"
    if not bus.is_dir():
        return []
    found: list[tuple[int, SeenVnic]] = []
    for entry in bus.iterdir():
        match = _SF.search(entry.name)
        if match is None:
            continue
        device = entry.resolve()
        sfnum_file = device / "sfnum"
        number = int(sfnum_file.read_text().strip()) if sfnum_file.exists() else int(match.group(1))
        netdev = _netdev(device)
        vnic = Vnic(
            id=entry.name,
            kind="subfunction",
            device=netdev[0] if netdev else "",
            mac=netdev[1] if netdev else "",
            mtu=mtu,
            p4_port=port_base + number,
        )
        found.append((number, SeenVnic(vnic=vnic, in_host=netdev is not None)))
    return [seen for _, seen in sorted(found, key=lambda item: item[0])]


class SysfsBackend:
    """A fixed inventory of vNICs discovered in sysfs (SR-IOV VFs of one PF, or sub-functions)."""

    def __init__(
        self,
        *,
        kind: VnicKind,
        sysfs: Path = Path("/sys"),
        pf: str = "",
        port_base: int = 0,
        mtu: int = 1500,
    ) -> None:
        if kind == "sriov-vf" and not pf:
            raise ValueError("the SR-IOV back-end needs the physical function's netdev name (pf)")
        if kind == "veth":
            raise ValueError("veth pairs are not found in sysfs: use VethBackend")
        self._kind: VnicKind = kind
        self._sysfs = sysfs
        self._pf = pf
        self._port_base = port_base
        self._mtu = mtu
        self._capacity: int | None = None

    @property
    def kind(self) -> VnicKind:
        return self._kind

    @property
    def capacity(self) -> int | None:
        return self._capacity

    async def discover(self) -> list[SeenVnic]:
        if self._kind == "sriov-vf":
            seen = discover_vfs(self._sysfs, self._pf, port_base=self._port_base, mtu=self._mtu)
        else:
            seen = discover_subfunctions(self._sysfs, port_base=self._port_base, mtu=self._mtu)
        self._capacity = len(seen)
        return seen

    async def create(self, pod_netns: str = "") -> Vnic:
        what = f"VFs of {self._pf}" if self._kind == "sriov-vf" else "sub-functions"
        raise PoolEmptyError(f"all {self._capacity or 0} {what} are in use (they are made by the device)")

    async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        # The xPU steers by port: the endpoint entries installed by the datapath do the work.
        return None

    async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        return None

    async def retire(self, vnic: Vnic) -> bool:
        return True

    async def close(self) -> None:
        return None
