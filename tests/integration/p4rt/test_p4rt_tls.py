"""TLS and mutual TLS between the P4Runtime client and softipu, with a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import AsyncIterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xpunet.datapath.softipu.server import SoftIpu, TlsFiles
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient, Role, TlsOptions
from xpunet.p4rt.errors import RetryableTargetError

Pem = tuple[bytes, bytes]  # (certificate, private key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *, server: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        san = x509.SubjectAlternativeName(
            [x509.DNSName("softipu.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


@pytest.fixture(scope="module")
def pki() -> dict[str, Pem]:
    ca = _issue("xpunet test CA", None)
    server = _issue("softipu", ca, server=True)
    client = _issue("datapath", ca)
    other_ca = _issue("someone else's CA", None)
    stranger = _issue("stranger", other_ca)

    def pem(pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> Pem:
        return pair[0].public_bytes(serialization.Encoding.PEM), _key_pem(pair[1])

    return {"ca": pem(ca), "server": pem(server), "client": pem(client), "stranger": pem(stranger)}


@pytest.fixture
async def mtls_softipu(pki: dict[str, Pem]) -> AsyncIterator[SoftIpu]:
    server = SoftIpu(device_id=1)
    cert, key = pki["server"]
    await server.start("127.0.0.1:0", tls=TlsFiles(cert_chain=cert, private_key=key, client_ca=pki["ca"][0]))
    yield server
    await server.stop()


async def test_tls_server_only(pki: dict[str, Pem]) -> None:
    server = SoftIpu(device_id=1)
    cert, key = pki["server"]
    await server.start("127.0.0.1:0", tls=TlsFiles(cert_chain=cert, private_key=key))
    try:
        tls = TlsOptions(ca_cert=pki["ca"][0], server_name="softipu.test")
        settings = ClientSettings(address=f"127.0.0.1:{server.port}", election_id=1, tls=tls)
        async with P4RuntimeClient(settings) as client:
            async with asyncio.timeout(10):
                await client.wait_primary()
            assert await client.api_version()
    finally:
        await server.stop()


async def test_mutual_tls_accepts_a_client_cert_from_the_ca(
    mtls_softipu: SoftIpu, pki: dict[str, Pem]
) -> None:
    cert, key = pki["client"]
    tls = TlsOptions(ca_cert=pki["ca"][0], client_cert=cert, client_key=key, server_name="softipu.test")
    settings = ClientSettings(address=f"127.0.0.1:{mtls_softipu.port}", election_id=1, tls=tls)
    async with P4RuntimeClient(settings) as client:
        async with asyncio.timeout(10):
            await client.wait_primary()


@pytest.mark.parametrize("who", ["none", "stranger"])
async def test_mutual_tls_refuses_clients_without_a_valid_cert(
    mtls_softipu: SoftIpu, pki: dict[str, Pem], who: str
) -> None:
    cert, key = pki["stranger"] if who == "stranger" else (None, None)
    tls = TlsOptions(ca_cert=pki["ca"][0], client_cert=cert, client_key=key, server_name="softipu.test")
    settings = ClientSettings(address=f"127.0.0.1:{mtls_softipu.port}", election_id=1, tls=tls, rpc_timeout=5)
    async with P4RuntimeClient(settings) as client:
        with pytest.raises(RetryableTargetError) as info:
            await client.api_version()
        assert info.value.code == "UNAVAILABLE"
        assert client.arbitration.role is Role.DISCONNECTED
