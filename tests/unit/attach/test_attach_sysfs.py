"""SR-IOV VF and sub-function discovery against a fake sysfs tree (the layout the kernel exposes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpunet.datapath.attach.sysfs import SysfsBackend, discover_subfunctions, discover_vfs
from xpunet.datapath.attach.vnic import PoolEmptyError


def add_netdev(device: Path, name: str, mac: str) -> None:
    (device / "net" / name).mkdir(parents=True)
    (device / "net" / name / "address").write_text(mac + "\n")


def fake_sriov(root: Path, pf: str, vfs: dict[int, tuple[str, str] | None]) -> Path:
    """PF netdev -> its PCI device with virtfnN links to the VFs' PCI devices (netdev or None)."""
    pci = root / "bus" / "pci" / "devices"
    pf_dev = pci / "0000:3b:00.0"
    pf_dev.mkdir(parents=True)
    (root / "class" / "net").mkdir(parents=True)
    (root / "class" / "net" / pf).mkdir()
    (root / "class" / "net" / pf / "device").symlink_to(pf_dev)
    for index, netdev in vfs.items():
        vf_dev = pci / f"0000:3b:02.{index}"
        vf_dev.mkdir()
        (pf_dev / f"virtfn{index}").symlink_to(vf_dev)
        if netdev is not None:
            add_netdev(vf_dev, *netdev)
    return root


def test_vfs_are_discovered_in_index_order_with_pci_mac_and_port(tmp_path: Path) -> None:
    root = fake_sriov(
        tmp_path,
        "ens1f0",
        {
            2: ("ens1f0v2", "02:00:00:00:02:02"),
            0: ("ens1f0v0", "02:00:00:00:02:00"),
            10: None,  # its netdev is in a pod's namespace
        },
    )
    seen = discover_vfs(root, "ens1f0", port_base=16)
    assert [(s.vnic.pci_address, s.vnic.device, s.vnic.mac, s.vnic.p4_port, s.in_host) for s in seen] == [
        ("0000:3b:02.0", "ens1f0v0", "02:00:00:00:02:00", 16, True),
        ("0000:3b:02.2", "ens1f0v2", "02:00:00:00:02:02", 18, True),
        ("0000:3b:02.10", "", "", 26, False),
    ]
    assert {s.vnic.kind for s in seen} == {"sriov-vf"}


def test_missing_pf_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ens9"):
        discover_vfs(tmp_path, "ens9")


def test_subfunctions_use_sfnum_for_the_port(tmp_path: Path) -> None:
    devices = tmp_path / "bus" / "auxiliary" / "devices"
    for name, sfnum, netdev in (
        ("mlx5_core.sf.3", "103", ("enp3s0f0s3", "02:00:00:00:03:03")),
        ("mlx5_core.sf.1", None, ("enp3s0f0s1", "02:00:00:00:03:01")),
        ("mlx5_core.eth.0", None, ("ignored", "02:00:00:00:03:ff")),
    ):
        device = devices / name
        device.mkdir(parents=True)
        if sfnum is not None:
            (device / "sfnum").write_text(sfnum)
        add_netdev(device, *netdev)
    seen = discover_subfunctions(tmp_path, port_base=1000)
    assert [(s.vnic.id, s.vnic.device, s.vnic.p4_port) for s in seen] == [
        ("mlx5_core.sf.1", "enp3s0f0s1", 1001),
        ("mlx5_core.sf.3", "enp3s0f0s3", 1103),
    ]


async def test_sysfs_backend_is_a_fixed_inventory(tmp_path: Path) -> None:
    root = fake_sriov(tmp_path, "ens1f0", {0: ("ens1f0v0", "02:00:00:00:02:00"), 1: None})
    backend = SysfsBackend(kind="sriov-vf", sysfs=root, pf="ens1f0")
    seen = await backend.discover()
    assert backend.capacity == 2
    assert [s.in_host for s in seen] == [True, False]
    with pytest.raises(PoolEmptyError, match="VFs of ens1f0"):
        await backend.create()
    assert await backend.retire(seen[0].vnic) is True


def test_sysfs_backend_config_errors() -> None:
    with pytest.raises(ValueError, match="physical function"):
        SysfsBackend(kind="sriov-vf")
    with pytest.raises(ValueError, match="VethBackend"):
        SysfsBackend(kind="veth")
