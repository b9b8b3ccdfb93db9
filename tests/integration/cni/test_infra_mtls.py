"""The infra API's TCP listener is mutual TLS only: a client with a certificate from the datapath's CA is
served; a client without one, or with one from another CA, is refused with an error that says so."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import TlsFiles
from xpunet.datapath.cni import errors
from xpunet.datapath.cni.runtime import run_plugin
from xpunet.testing.certs import Authority

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = Authority.create("xpunet test CA")
    (tmp_path / "ca.crt").write_bytes(ca.pem.cert)
    server_cert, server_key = ca.issue("datapath", server=True).write(tmp_path, "server")
    client_cert, client_key = ca.issue("xpunet-cni", server=False).write(tmp_path, "client")
    rogue = Authority.create("someone else's CA").issue("xpunet-cni", server=False)
    rogue_cert, rogue_key = rogue.write(tmp_path, "rogue")
    return {
        "ca": str(tmp_path / "ca.crt"),
        "server_cert": str(server_cert),
        "server_key": str(server_key),
        "client_cert": str(client_cert),
        "client_key": str(client_key),
        "rogue_cert": str(rogue_cert),
        "rogue_key": str(rogue_key),
    }


def tcp_conf(port: int, tls: dict[str, str]) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": "xpunet",
        "type": "xpunet-cni",
        "timeoutSeconds": 5,
        "agentSocket": "",
        "datapath": {"address": f"127.0.0.1:{port}", "tls": tls},
    }


async def test_mtls_listener_requires_a_client_certificate_from_its_ca(
    start_server: ServerFactory, pki: dict[str, str]
) -> None:
    tls = TlsFiles(cert=pki["server_cert"], key=pki["server_key"], client_ca=pki["ca"])
    server = await start_server(socket_path="", tcp_address="127.0.0.1:0", tls=tls)
    port = server.tcp_port
    assert port > 0
    # The TCP listener is in the test's own namespace, so the plugin runs there (no host namespace).
    trusted = {
        "ca": pki["ca"],
        "cert": pki["client_cert"],
        "key": pki["client_key"],
        "serverName": "localhost",
    }
    ok = await run_plugin("", "STATUS", tcp_conf(port, trusted), ifname="")
    assert (ok.rc, ok.out) == (0, None), ok

    anonymous = {"ca": pki["ca"], "serverName": "localhost"}
    refused = await run_plugin("", "STATUS", tcp_conf(port, anonymous), ifname="")
    assert refused.out is not None, refused
    assert refused.out["code"] == errors.PLUGIN_NOT_AVAILABLE
    assert "client certificate" in refused.out["msg"], refused.out

    rogue = {"ca": pki["ca"], "cert": pki["rogue_cert"], "key": pki["rogue_key"], "serverName": "localhost"}
    refused = await run_plugin("", "STATUS", tcp_conf(port, rogue), ifname="")
    assert refused.out is not None, refused
    assert refused.out["code"] == errors.PLUGIN_NOT_AVAILABLE
    assert "client certificate" in refused.out["msg"], refused.out
