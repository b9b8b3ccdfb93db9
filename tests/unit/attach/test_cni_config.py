"""xpunet-cni without I/O: invocation parsing, version negotiation, result shapes per CNI version."""

from __future__ import annotations

import json
from typing import Any

import pytest

from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb
from xpunet.datapath.cni import errors
from xpunet.datapath.cni.config import SUPPORTED_VERSIONS, parse_args, parse_invocation
from xpunet.datapath.cni.errors import CniError
from xpunet.datapath.cni.verbs import build_result, run

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0"}


def conf(**extra: Any) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "xpunet", "type": "xpunet-cni", **extra}).encode()


def test_version_needs_no_datapath() -> None:
    code, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert code == 0
    assert json.loads(out) == {"cniVersion": "1.0.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_invocation_carries_pod_identity() -> None:
    env = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u-1"}
    inv = parse_invocation(env, conf(socket="/tmp/x.sock", timeoutSeconds=3))
    assert (inv.pod_namespace, inv.pod_name, inv.pod_uid) == ("shop", "web-0", "u-1")
    assert (inv.container_id, inv.netns, inv.ifname) == ("abc", "/run/netns/p", "eth0")
    assert inv.conf.socket == "/tmp/x.sock"
    assert inv.conf.timeout == 3.0


def test_gc_reads_valid_attachments() -> None:
    inv = parse_invocation(
        {"CNI_COMMAND": "GC"}, conf(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    )
    assert inv.conf.valid_attachments == (("a", "eth0"),)


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        pytest.param({**ENV, "CNI_NETNS": ""}, conf(), errors.INVALID_ENVIRONMENT, id="add-no-netns"),
        pytest.param({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, conf(), None, id="del-no-netns-ok"),
        pytest.param({**ENV, "CNI_ARGS": "oops"}, conf(), errors.INVALID_ENVIRONMENT, id="bad-args"),
        pytest.param(ENV, conf(timeoutSeconds=-1), errors.INVALID_CONFIG, id="bad-timeout"),
        pytest.param(ENV, conf(dns=[1]), errors.INVALID_CONFIG, id="bad-dns"),
        pytest.param(ENV, conf(prevResult=3), errors.INVALID_CONFIG, id="bad-prev"),
        pytest.param(ENV, conf(name="-bad"), errors.INVALID_CONFIG, id="bad-name"),
        pytest.param(
            {**ENV, "CNI_COMMAND": "GC"}, conf(**{"cni.dev/valid-attachments": [{}]}), 7, id="bad-gc"
        ),
        pytest.param(
            ENV, conf(datapath={"address": "h:1", "tls": {}}), errors.INVALID_CONFIG, id="tls-no-ca"
        ),
    ],
)
def test_invocation_errors(env: dict[str, str], stdin: bytes, code: int | None) -> None:
    if code is None:
        parse_invocation(env, stdin)
        return
    with pytest.raises(CniError) as caught:
        parse_invocation(env, stdin)
    assert caught.value.code == code


def test_parse_args_skips_empty_parts() -> None:
    assert parse_args("A=1;;B=x=y") == {"A": "1", "B": "x=y"}


def attachment(kind: str = "veth") -> pb.Attachment:
    return pb.Attachment(
        vnic=pb.Vnic(
            kind=kind,
            device="xpp1",
            host_ifname="xpv1" if kind == "veth" else "",
            mac="02:00:00:00:00:01",
            mtu=1450,
            pci_address="0000:3b:02.0" if kind != "veth" else "",
        ),
        ips=[
            pb.IpConfig(address="10.0.0.2/32", gateway="10.0.0.1"),
            pb.IpConfig(address="fd00::2/128", gateway="fd00::1"),
        ],
        routes=[pb.Route(dst="10.0.0.1/32"), pb.Route(dst="0.0.0.0/0", gw="10.0.0.1")],
    )


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_result_shape_per_version(version: str) -> None:
    inv = parse_invocation(ENV, conf(cniVersion=version, dns={"nameservers": ["10.96.0.10"]}))
    result = build_result(inv, attachment())
    assert result["cniVersion"] == version
    assert result["interfaces"][0] == {"name": "xpv1"}
    pod = result["interfaces"][1]
    assert pod["sandbox"] == "/run/netns/p"
    assert ("mtu" in pod) == (version == "1.1.0")
    assert all(ip["interface"] == 1 for ip in result["ips"])
    assert [ip.get("version") for ip in result["ips"]] == (["4", "6"] if version == "0.4.0" else [None, None])
    assert {"dst": "0.0.0.0/0", "gw": "10.0.0.1"} in result["routes"]
    assert result["dns"] == {"nameservers": ["10.96.0.10"]}


def test_vf_result_has_pci_id_and_no_host_interface() -> None:
    result = build_result(parse_invocation(ENV, conf()), attachment("sriov-vf"))
    assert result["interfaces"] == [
        {
            "name": "eth0",
            "mac": "02:00:00:00:00:01",
            "sandbox": "/run/netns/p",
            "mtu": 1450,
            "pciID": "0000:3b:02.0",
        }
    ]
