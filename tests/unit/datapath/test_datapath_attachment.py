"""The datapath's side of pod attachment: ``attach:`` settings, vNIC port numbering, the sink's ordering.

The attach server, the kernel target and the service themselves run for real
in tests/e2e (pods attached through ``xpunet-cni`` carry real packets); here
the pure parts and the order in which the sink talks to the target and the
service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, cast

import pytest

from xpunet.datapath.attach.core import PodEndpoint
from xpunet.datapath.attachment import (
    VETH_PORT_BASE,
    AttachOptions,
    DatapathSink,
    PortNumbering,
)
from xpunet.datapath.service import DatapathService, Settings
from xpunet.datapath.target import Target
from xpunet.runtime.settings import SettingsError, build_settings, cli_layer


def endpoint(name: str, host_ifname: str = "", p4_port: int = 0) -> PodEndpoint:
    return PodEndpoint(
        namespace="ns",
        name=name,
        uid="u-" + name,
        container_id="c-" + name,
        ifname="eth0",
        addresses=(ipaddress.ip_address("10.244.1.5"),),
        mac="02:00:00:00:00:01",
        vnic_kind="veth" if host_ifname else "sriov-vf",
        host_ifname=host_ifname,
        p4_port=p4_port,
    )


def test_a_vf_keeps_its_port_and_a_veth_gets_one_from_its_name() -> None:
    numbering = PortNumbering(reserved=(1, 2))
    assert numbering.assign(endpoint("vf", p4_port=77)) == 77
    port = numbering.assign(endpoint("a", "xpv0001"))
    assert port >= VETH_PORT_BASE
    assert numbering.assign(endpoint("a", "xpv0001")) == port  # asked again: the same
    # A restarted datapath numbers the same interface the same way, with no record of it.
    assert PortNumbering(reserved=(1, 2)).assign(endpoint("a", "xpv0001")) == port


def test_veth_ports_never_clash_and_are_freed() -> None:
    numbering = PortNumbering()
    ports = {numbering.assign(endpoint(f"p{i}", f"xpv{i:05x}")) for i in range(500)}
    assert len(ports) == 500
    first = numbering.assign(endpoint("p0", "xpv00000"))
    numbering.release(endpoint("p0", "xpv00000"))
    assert numbering.assign(endpoint("q", "xpv00000")) == first


def test_a_taken_port_moves_the_next_veth_on() -> None:
    numbering = PortNumbering()
    port = numbering.assign(endpoint("a", "xpv0001"))
    clashing = PortNumbering(reserved=(port,))
    assert clashing.assign(endpoint("a", "xpv0001")) == port + 1


def test_attach_settings_off_by_default_and_checked() -> None:
    assert not AttachOptions().enabled
    assert AttachOptions(socket_path="/run/x.sock").enabled
    with pytest.raises(ValueError, match=r"attach\.tcp_address needs attach\.tls_cert"):
        AttachOptions(tcp_address="0.0.0.0:50151")
    with pytest.raises(ValueError, match=r"attach\.low_water 5"):
        AttachOptions(pool_size=2, low_water=5)


def test_server_settings_put_veths_in_the_kernel_targets_namespace() -> None:
    options = AttachOptions(socket_path="/run/x.sock", pool_size=4, low_water=1)
    server = options.server_settings(("10.244.1.0/24",), default_netns="node-1")
    assert (server.host_netns, server.pool_size, server.low_water) == ("node-1", 4, 1)
    assert server.pod_cidrs == ("10.244.1.0/24",)
    assert (
        AttachOptions(socket_path="/s", host_netns="own").server_settings(("10.0.0.0/24",)).host_netns
        == "own"
    )


def test_the_attach_section_is_part_of_the_datapath_settings() -> None:
    layer = cli_layer(
        [
            "attach.socket_path=/run/n1/infra.sock",
            "attach.pod_cidrs=10.244.1.0/24,fd00:10:244:1::/64",
            "datapath.kernel_uplinks=uplink0",
        ]
    )
    settings = build_settings(Settings, [layer])
    assert settings.attach.socket_path == "/run/n1/infra.sock"
    assert settings.attach.pod_cidrs == ("10.244.1.0/24", "fd00:10:244:1::/64")
    assert settings.datapath.kernel_uplinks == ("uplink0",)
    with pytest.raises(SettingsError, match=r"attach\.pool_sise"):
        build_settings(Settings, [cli_layer(["attach.pool_sise=3"])])


class Recorder:
    """Stands in for the service and the kernel target: records the calls in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def set_port_names(self, names: Mapping[int, str]) -> None:
        self.calls.append(("names", dict(names)))

    async def endpoint_attached(self, ep: PodEndpoint) -> None:
        self.calls.append(("attached", ep.p4_port))

    async def endpoint_detached(self, ep: PodEndpoint) -> None:
        self.calls.append(("detached", ep.p4_port))


async def test_the_sink_names_the_port_before_the_entries_and_forgets_it_after() -> None:
    sink = DatapathSink(PortNumbering(reserved=(2,)), uplinks={2: "uplink0"})
    rec = Recorder()
    await sink.bind(cast(DatapathService, rec), cast(Target, rec))
    assert rec.calls == [("names", {2: "uplink0"})]
    rec.calls.clear()
    ep = endpoint("a", "xpv0001")
    await sink.endpoint_attached(ep)
    port = sink.numbering.assign(ep)
    assert rec.calls == [("names", {2: "uplink0", port: "xpv0001"}), ("attached", port)]
    rec.calls.clear()
    await sink.endpoint_detached(ep)
    assert rec.calls == [("detached", port), ("names", {2: "uplink0"})]


def test_other_services_ignore_the_attach_section_of_a_shared_config() -> None:
    from xpunet.runtime.settings import Settings as BaseSettings

    build_settings(BaseSettings, [cli_layer(["attach.socket_path=/run/n1/infra.sock"])])


class Refusing(Recorder):
    async def endpoint_attached(self, ep: PodEndpoint) -> None:
        raise TimeoutError("no pass applied it")


async def test_a_failed_attach_forgets_the_port_again() -> None:
    sink = DatapathSink(PortNumbering(), uplinks={2: "uplink0"})
    rec = Refusing()
    await sink.bind(cast(DatapathService, rec), cast(Target, rec))
    with pytest.raises(TimeoutError):
        await sink.endpoint_attached(endpoint("a", "xpv0001"))
    assert sink.port_names() == {2: "uplink0"}
    assert rec.calls[-1] == ("names", {2: "uplink0"})
