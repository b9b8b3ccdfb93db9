"""Settings of the attach server (infra gRPC API, vNIC pool, IPAM, state file)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xpunet.datapath.attach.vnic import VNIC_KINDS, VnicKind

DEFAULT_SOCKET = "/run/xpunet/infra.sock"
DEFAULT_STATE = "/var/lib/xpunet/attach-state.json"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of the TCP listener: its certificate and key, and the CA client certificates chain to."""

    cert: str
    key: str
    client_ca: str


@dataclass(frozen=True, slots=True)
class AttachSettings:
    pod_cidrs: tuple[str, ...] = ()  # Node.spec.podCIDRs of this node (one per family)
    socket_path: str = DEFAULT_SOCKET  # "" = no unix listener
    tcp_address: str = ""  # e.g. "0.0.0.0:50151" on an xPU; requires tls
    tls: TlsFiles | None = None
    state_path: str = DEFAULT_STATE
    backend: VnicKind = "veth"
    pool_size: int = 8  # vNICs kept in stock
    low_water: int = 2  # replenish when the stock drops below this
    capacity: int = 0  # veth: most pairs at once (0 = unbounded)
    mtu: int = 1500
    host_netns: str = ""  # veth: namespace holding the host sides ("" = the datapath's own)
    sysfs_root: str = "/sys"
    sriov_pf: str = ""  # SR-IOV: the physical function's netdev
    p4_port_base: int = 0  # P4 port id of VF/sub-function 0
    cni_agent_socket: str = ""  # serve the resident CNI agent here ("" = no agent; see docs/cni.md)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.backend not in VNIC_KINDS:
            raise ValueError(f"attach backend {self.backend!r} is not one of {', '.join(VNIC_KINDS)}")
        if self.tcp_address and self.tls is None:
            raise ValueError("attach tcp_address needs tls (the TCP listener is mutual TLS only)")
        if not self.socket_path and not self.tcp_address:
            raise ValueError("attach server needs socket_path or tcp_address")
        if not 0 <= self.low_water <= self.pool_size:
            raise ValueError(
                f"attach low_water {self.low_water} must be within 0..pool_size {self.pool_size}"
            )
        if not 576 <= self.mtu <= 65535:
            raise ValueError(f"attach mtu {self.mtu} is out of range")

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> AttachSettings:
        """Build from a config mapping; an unknown key is an error naming it."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown attach setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "pod_cidrs" in values:
            values["pod_cidrs"] = tuple(values["pod_cidrs"])
        if isinstance(values.get("tls"), dict):
            values["tls"] = TlsFiles(**values["tls"])
        return cls(**values)

    @property
    def sysfs(self) -> Path:
        return Path(self.sysfs_root)
