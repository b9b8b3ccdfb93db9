"""Which teammates' pieces the cluster can use right now, and the per-node settings that wire them.

The cluster plugs in the kernel target, the datapath's attach server and the
``xpunet-cni`` plugin as they land, by looking at what is importable and which
settings keys exist, never by version numbers.  Each check returns the reason
it failed, which the demo prints and e2e skips quote.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpunet.cluster.plan import UPLINK_IF, ClusterPlan, NodePlan

# Every link of the cluster (fabric veths, uplinks) has the Ethernet default.
UNDERLAY_MTU = 1500
# What VXLAN adds to a pod's packet: outer IPv4 (20) or IPv6 (40) header, UDP (8), VXLAN (8) and the
# inner Ethernet header (14).
VXLAN_OVERHEAD = {4: 50, 6: 70}
# topology.py makes vxlan0 with the node's IPv4 uplink address as its local (outer) address.
VXLAN_UNDERLAY_FAMILY = 4


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def is_root() -> Check:
    if os.geteuid() != 0:
        return Check(False, "not root: network namespaces need CAP_SYS_ADMIN")
    return Check(True)


def kernel_tools() -> Check:
    missing = [t for t in ("ip", "nft", "bridge") if shutil.which(t) is None]
    if missing:
        return Check(False, f"missing tools: {', '.join(missing)} (apt packages iproute2, nftables)")
    return is_root()


def _datapath_settings_cls() -> type[Any] | None:
    try:
        module = importlib.import_module("xpunet.datapath.service")
    except ImportError:
        return None
    cls = getattr(module, "Settings", None)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None


def settings_keys(cls: type[Any] | None) -> set[str]:
    """``section.key`` for every key of a service's Settings dataclass."""
    if cls is None:
        return set()
    keys: set[str] = set()
    for section in dataclasses.fields(cls):
        sub = section.default_factory() if section.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            keys.update(f"{section.name}.{f.name}" for f in dataclasses.fields(sub))
    return keys


def datapath_service() -> Check:
    """The datapath runs its logic (not the runtime's idle stand-in)."""
    if importlib.util.find_spec("xpunet.datapath.service") is None:
        return Check(False, "the datapath service (xpunet.datapath.service, helper K) is not there yet")
    if not hasattr(importlib.import_module("xpunet.datapath.service"), "run"):
        return Check(False, "xpunet.datapath.service has no run()")
    return Check(True)


def kernel_target() -> Check:
    """The datapath can program a node namespace: ``datapath.target=kernel`` with a usable KernelTarget."""
    base = datapath_service()
    if not base:
        return base
    if "datapath.kernel_netns" not in settings_keys(_datapath_settings_cls()):
        return Check(False, "the datapath has no datapath.kernel_netns setting (helper K)")
    try:
        module = importlib.import_module("xpunet.datapath.kernel_adapter")
    except ImportError as exc:
        return Check(False, f"the kernel target does not import: {exc}")
    cls = getattr(module, "KernelTargetAdapter", None)
    # The datapath drives a target through wait_ready/read_entries/apply (xpunet.datapath.target).
    needed = ("wait_ready", "read_entries", "apply", "is_ready", "wait_changed")
    if cls is None or not all(hasattr(cls, m) for m in needed):
        return Check(
            False,
            "the kernel target adapter does not implement the datapath's Target protocol "
            f"({', '.join(needed)})",
        )
    return kernel_tools()


def kernel_vxlan() -> Check:
    """The kernel target renders VXLAN next hops (asked of its pure renderer, not assumed)."""
    try:
        from xpunet.datapath.kernel.render import KernelState
        from xpunet.ir.routes import NodeRoute
        from xpunet.pipeline.diff import Update
        from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower
    except ImportError as exc:
        return Check(False, f"the kernel target does not import: {exc}")
    # The probe node needs a route of its own: the target takes its VTEP address from it.
    own = NodeRoute("probe", ("10.0.1.0/24",), (), ("192.0.2.2",), "vxlan")
    route = NodeRoute("peer", ("10.0.0.0/24",), (), ("192.0.2.1",), "vxlan")
    lowered = lower(NodeIntents(node="probe", routes=(own, route)), NodePorts(host=1, uplinks=(2,)))
    state = KernelState({2: UPLINK_IF})
    state.update([Update("INSERT", e) for e in lowered.entries])
    problems = [p for ps in state.problems.values() for p in ps]
    if problems:
        return Check(False, f"the kernel target cannot route over the overlay: {problems[0]}")
    return Check(True)


def cni_binary() -> Path:
    return Path(sys.executable).parent / "xpunet-cni"


def attach_section() -> str | None:
    """The datapath settings section that configures its attach server, if it has one."""
    keys = settings_keys(_datapath_settings_cls())
    for section in ("attach", "datapath"):
        if f"{section}.socket_path" in keys:
            return section
    return None


def cni() -> Check:
    """Pods can be attached through the real plugin: the binary, and a datapath that serves the infra API."""
    if importlib.util.find_spec("xpunet.datapath.cni.main") is None or not cni_binary().exists():
        return Check(False, f"the CNI plugin {cni_binary()} (helper I) is not installed")
    if attach_section() is None:
        return Check(
            False,
            "the datapath does not serve the infra API yet (no attach socket_path setting; helpers I/K)",
        )
    return kernel_tools()


def overlay_mtu(underlay_mtu: int = UNDERLAY_MTU, underlay_family: int = VXLAN_UNDERLAY_FAMILY) -> int:
    """The pods' MTU over VXLAN: what fits in one underlay packet (1450 over IPv4, 1430 over IPv6).

    The kernel target clamps TCP's MSS; UDP and other protocols would otherwise rely on fragmentation
    of the outer packet (or on PMTU discovery, which a pod's non-TCP socket rarely does).
    """
    if underlay_family not in VXLAN_OVERHEAD:
        raise ValueError(f"underlay family {underlay_family} is not 4 or 6")
    return underlay_mtu - VXLAN_OVERHEAD[underlay_family]


def node_assignments(
    plan: ClusterPlan, node: NodePlan, *, node_dir: Path, p4rt_address: str = "", use_cni: bool = False
) -> list[str]:
    """``--set`` values for node's datapath: its target, namespace and attach server (only known keys)."""
    keys = settings_keys(_datapath_settings_cls())
    out: list[str] = []

    def put(key: str, value: str) -> None:
        if key in keys:
            out.append(f"{key}={value}")

    if plan.target == "kernel":
        put("datapath.target", "kernel")
        put("datapath.kernel_netns", node.netns)
        put("datapath.kernel_uplinks", UPLINK_IF)
    else:
        put("datapath.target", "p4rt")
        put("datapath.p4rt_address", p4rt_address)
    put("datapath.route_next_hop", "vxlan" if plan.overlay == "vxlan" else "direct")
    section = attach_section()
    if use_cni and section is not None:
        put(f"{section}.socket_path", str(node_dir / "infra.sock"))
        put(f"{section}.cni_agent_socket", str(node_dir / "cni-agent.sock"))
        put(f"{section}.state_path", str(node_dir / "attach-state.json"))
        put(f"{section}.host_netns", node.netns)
        # No pool settings: the veth default (no stock; each pair made at Attach in the pod's namespace).
        if plan.overlay == "vxlan":
            put(f"{section}.mtu", str(overlay_mtu()))
    return out
