"""The infra API's TCP listener is mutual TLS only: a client with a certificate from the datapath's CA is
served; a client without one, or with one from another CA, is refused with an error that says so."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import TlsFiles
from xpunet.datapath.cni import errors
from xpunet.datapath.cni.runtime import run_plugin

pytestmark = pytest.mark.root

ServerFactory = Callable[..., Awaitable[AttachServer]]
Pem = tuple[bytes, bytes]  # certificate, key


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def mint_ca(common: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def mint_leaf(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], common: str, *, server: bool) -> Pem:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write(directory: Path, name: str, pem: Pem) -> tuple[str, str]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(pem[0])
    key.write_bytes(pem[1])
    return str(cert), str(key)


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, str]:
    ca = mint_ca("xpunet test CA")
    rogue = mint_ca("someone else's CA")
    (tmp_path / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = write(tmp_path, "server", mint_leaf(ca, "datapath", server=True))
    client_cert, client_key = write(tmp_path, "client", mint_leaf(ca, "xpunet-cni", server=False))
    rogue_cert, rogue_key = write(tmp_path, "rogue", mint_leaf(rogue, "xpunet-cni", server=False))
    return {
        "ca": str(tmp_path / "ca.crt"),
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "rogue_cert": rogue_cert,
        "rogue_key": rogue_key,
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
