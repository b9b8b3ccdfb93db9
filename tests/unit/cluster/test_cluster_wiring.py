"""The per-node datapath settings the local cluster passes: the attach server's, parsed by the real parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpunet.cluster import wiring
from xpunet.cluster.plan import Overlay, make_plan
from xpunet.datapath.service import Settings
from xpunet.runtime.settings import build_settings, cli_layer


@pytest.mark.parametrize(
    ("overlay", "mtu"),
    [pytest.param("none", 1500, id="routed"), pytest.param("vxlan", 1450, id="vxlan-ipv4-underlay")],
)
def test_attach_settings_of_a_node(tmp_path: Path, overlay: Overlay, mtu: int) -> None:
    plan = make_plan("t1", 2, overlay=overlay)
    node = plan.nodes[1]
    assignments = wiring.node_assignments(plan, node, node_dir=tmp_path, use_cni=True)
    settings = build_settings(Settings, [cli_layer(assignments)])
    attach = settings.attach
    assert attach.enabled
    assert attach.socket_path == str(tmp_path / "infra.sock")
    assert attach.cni_agent_socket == str(tmp_path / "cni-agent.sock")
    assert attach.host_netns == node.netns
    # The veth default: no stock, each pair made at Attach directly in the pod's namespace.
    assert (attach.backend, attach.stock) == ("veth", (0, 0))
    assert attach.mtu == mtu
    assert settings.datapath.route_next_hop == ("vxlan" if overlay == "vxlan" else "direct")


def test_no_attach_server_without_cni(tmp_path: Path) -> None:
    plan = make_plan("t1", 1)
    assignments = wiring.node_assignments(plan, plan.nodes[0], node_dir=tmp_path)
    assert not any(a.startswith("attach.") for a in assignments)


@pytest.mark.parametrize(
    ("underlay_mtu", "family", "expected"),
    [
        pytest.param(1500, 4, 1450, id="ipv4"),
        pytest.param(1500, 6, 1430, id="ipv6"),
        pytest.param(9000, 4, 8950, id="jumbo"),
    ],
)
def test_overlay_mtu(underlay_mtu: int, family: int, expected: int) -> None:
    assert wiring.overlay_mtu(underlay_mtu, family) == expected


def test_overlay_mtu_needs_a_family() -> None:
    with pytest.raises(ValueError, match="family 5"):
        wiring.overlay_mtu(1500, 5)
