"""vNICs and the one interface every vNIC back-end implements (veth, SR-IOV VF, sub-function).

A back-end knows how to find the vNICs that exist on the host (`discover`),
make new ones where it can (`create`: veth pairs; VFs and sub-functions are a
fixed inventory), wire a vNIC's host side for a pod's addresses (`bind`) and
undo it, and dispose of a vNIC after its pod is gone (`retire`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from xpunet.ipam.ranges import IpAddress

VnicKind = Literal["veth", "sriov-vf", "subfunction"]
VNIC_KINDS: tuple[VnicKind, ...] = ("veth", "sriov-vf", "subfunction")


class PoolEmptyError(Exception):
    """No free vNIC, and the back-end cannot make one."""


class BackendError(Exception):
    """A back-end operation on the host failed (netlink, sysfs)."""


@dataclass(frozen=True, slots=True)
class Vnic:
    id: str  # stable: veth pair suffix, VF PCI address, sub-function netdev
    kind: VnicKind
    device: str  # netdev moved into the pod (its name in the host namespace)
    host_ifname: str = ""  # veth: the side that stays on the host
    mac: str = ""
    mtu: int = 1500
    pci_address: str = ""
    p4_port: int = 0

    def to_data(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Vnic:
        kind = next((k for k in VNIC_KINDS if k == data["kind"]), None)
        if kind is None:
            raise ValueError(f"unknown vNIC kind {data['kind']!r}")
        return cls(
            id=str(data["id"]),
            kind=kind,
            device=str(data["device"]),
            host_ifname=str(data.get("host_ifname", "")),
            mac=str(data.get("mac", "")),
            mtu=int(data.get("mtu", 1500)),
            pci_address=str(data.get("pci_address", "")),
            p4_port=int(data.get("p4_port", 0)),
        )


@dataclass(frozen=True, slots=True)
class SeenVnic:
    """A vNIC found on the host; `in_host` is False when its device sits in some pod's namespace."""

    vnic: Vnic
    in_host: bool


class VnicBackend(Protocol):
    @property
    def kind(self) -> VnicKind: ...

    @property
    def capacity(self) -> int | None:
        """Most vNICs this back-end can have; None when it creates them without bound."""
        ...

    async def discover(self) -> list[SeenVnic]: ...

    async def create(self, pod_netns: str = "") -> Vnic:
        """A new vNIC, ready to hand out; PoolEmptyError when the back-end cannot make one.

        With `pod_netns` (a namespace path; veth only, others ignore it) the pod side is made
        directly inside the pod's namespace, under its `device` name: moving a netdev between
        namespaces costs far more than creating it there (docs/cni.md "ADD latency")."""
        ...

    async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        """Wire the host side for the pod's addresses (veth: host routes); idempotent."""
        ...

    async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None: ...

    async def retire(self, vnic: Vnic) -> bool:
        """Dispose of a vNIC whose pod is gone; True when it can be handed out again as is."""
        ...

    async def close(self) -> None: ...
