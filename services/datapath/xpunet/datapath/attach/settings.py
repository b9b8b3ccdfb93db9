"""Settings of the attach server (infra gRPC API, vNIC pool, IPAM, state file).

The vNIC stock defaults depend on the back-end (docs/cni.md "ADD latency"):
a stocked veth must be moved into the pod's namespace at Attach (~16 ms
under the kernel's RTNL lock, serialised), while a pair made at Attach with
its pod side already in the pod's namespace costs ~0.6 ms, so veth keeps no
stock.  VFs and sub-functions exist before any pod and are moved either way;
a stock of ready ones hides their discovery and reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xpunet.datapath.attach.vnic import VNIC_KINDS, VnicKind

DEFAULT_SOCKET = "/run/xpunet/infra.sock"
DEFAULT_STATE = "/var/lib/xpunet/attach-state.json"

# (pool_size, low_water) when the settings leave them out, per back-end.
POOL_DEFAULTS: Mapping[VnicKind, tuple[int, int]] = {
    "veth": (0, 0),
    "sriov-vf": (8, 2),
    "subfunction": (8, 2),
}
# pool_size / low_water value meaning "the back-end's default" (a field stays an int for its readers).
BACKEND_DEFAULT = -1


def default_stock(
    backend: VnicKind, pool_size: int | None, low_water: int | None, *, section: str = "attach "
) -> tuple[int, int]:
    """``(pool_size, low_water)`` with the unset ones (None) taken from the back-end's defaults.

    An unset ``low_water`` never exceeds the pool size it goes with, so ``pool_size: 1`` alone is valid.
    ``section`` prefixes the keys in error messages (``"attach."`` for the datapath's settings section).
    """
    defaults = POOL_DEFAULTS.get(backend)
    if defaults is None:
        raise ValueError(f"attach backend {backend!r} is not one of {', '.join(VNIC_KINDS)}")
    default_size, default_low = defaults
    size = default_size if pool_size is None else pool_size
    low = min(default_low, size) if low_water is None else low_water
    if size < 0:
        raise ValueError(f"{section}pool_size {size} must not be negative")
    if not 0 <= low <= size:
        raise ValueError(f"{section}low_water {low} must be within 0..{section}pool_size {size}")
    return size, low


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
    # vNICs kept in stock, and the stock level below which it is refilled.  BACKEND_DEFAULT:
    # POOL_DEFAULTS of the back-end (veth none, VFs and sub-functions 8, refilled below 2).
    pool_size: int = BACKEND_DEFAULT
    low_water: int = BACKEND_DEFAULT
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
        size, low = default_stock(
            self.backend,
            None if self.pool_size == BACKEND_DEFAULT else self.pool_size,
            None if self.low_water == BACKEND_DEFAULT else self.low_water,
        )
        # Frozen: the resolved stock is stored once, here, so every reader sees plain numbers.
        object.__setattr__(self, "pool_size", size)
        object.__setattr__(self, "low_water", low)
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
        for key in ("pool_size", "low_water"):
            if values.get(key, 0) is None:  # null: the back-end's default
                values[key] = BACKEND_DEFAULT
        if "pod_cidrs" in values:
            values["pod_cidrs"] = tuple(values["pod_cidrs"])
        if isinstance(values.get("tls"), dict):
            values["tls"] = TlsFiles(**values["tls"])
        return cls(**values)

    @property
    def sysfs(self) -> Path:
        return Path(self.sysfs_root)
