"""TLS and mutual TLS between the P4Runtime client and softipu, with a throwaway CA."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from xpunet.datapath.softipu.server import SoftIpu, TlsFiles
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient, Role, TlsOptions
from xpunet.p4rt.errors import RetryableTargetError
from xpunet.testing.certs import Authority, Pem


@pytest.fixture(scope="module")
def pki() -> dict[str, Pem]:
    ca = Authority.create("xpunet test CA")
    return {
        "ca": ca.pem,
        "server": ca.issue("softipu", server=True, dns_names=("softipu.test",)),
        "client": ca.issue("datapath", server=False),
        "stranger": Authority.create("someone else's CA").issue("stranger", server=False),
    }


@pytest.fixture
async def mtls_softipu(pki: dict[str, Pem]) -> AsyncIterator[SoftIpu]:
    server = SoftIpu(device_id=1)
    cert, key = pki["server"].cert, pki["server"].key
    await server.start(
        "127.0.0.1:0", tls=TlsFiles(cert_chain=cert, private_key=key, client_ca=pki["ca"].cert)
    )
    yield server
    await server.stop()


async def test_tls_server_only(pki: dict[str, Pem]) -> None:
    server = SoftIpu(device_id=1)
    cert, key = pki["server"].cert, pki["server"].key
    await server.start("127.0.0.1:0", tls=TlsFiles(cert_chain=cert, private_key=key))
    try:
        tls = TlsOptions(ca_cert=pki["ca"].cert, server_name="softipu.test")
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
    cert, key = pki["client"].cert, pki["client"].key
    tls = TlsOptions(ca_cert=pki["ca"].cert, client_cert=cert, client_key=key, server_name="softipu.test")
    settings = ClientSettings(address=f"127.0.0.1:{mtls_softipu.port}", election_id=1, tls=tls)
    async with P4RuntimeClient(settings) as client:
        async with asyncio.timeout(10):
            await client.wait_primary()


@pytest.mark.parametrize("who", ["none", "stranger"])
async def test_mutual_tls_refuses_clients_without_a_valid_cert(
    mtls_softipu: SoftIpu, pki: dict[str, Pem], who: str
) -> None:
    cert, key = (pki["stranger"].cert, pki["stranger"].key) if who == "stranger" else (None, None)
    tls = TlsOptions(ca_cert=pki["ca"].cert, client_cert=cert, client_key=key, server_name="softipu.test")
    settings = ClientSettings(address=f"127.0.0.1:{mtls_softipu.port}", election_id=1, tls=tls, rpc_timeout=5)
    async with P4RuntimeClient(settings) as client:
        with pytest.raises(RetryableTargetError) as info:
            await client.api_version()
        assert info.value.code == "UNAVAILABLE"
        assert client.arbitration.role is Role.DISCONNECTED
