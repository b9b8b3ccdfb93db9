"""The watcher as a pod runs it: in-cluster config, HTTPS with the service account's CA, a bearer token
that rotates under it.

The local API server is served over TLS with a throwaway CA and accepts only
the current token (401 ``Unauthorized`` otherwise, like kube-apiserver); the
service is started through its real config path (``watcher.source=kube`` with
``KUBERNETES_SERVICE_HOST``/``PORT`` set and the service-account directory
pointed at a temporary one).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from kubernetes_asyncio import client
from opentelemetry import metrics, trace

from xpunet.bus.nats import NatsBus
from xpunet.model import Kind
from xpunet.runtime.context import ServiceContext
from xpunet.testing.certs import Authority
from xpunet.testing.kubeapi import (
    FakeKubeAPI,
    KVFollower,
    endpoint_slice,
    namespace_obj,
    network_policy,
    node,
    pod,
    service,
)
from xpunet.watcher.kube import KubeConfigError, api_client
from xpunet.watcher.service import Settings, WatcherOptions, run
from xpunet.watcher.state import sync_key

ALL_SYNCED = {sync_key(k) for k in Kind}
KEYS = {
    "namespace.ns1",
    "node.n1",
    "pod.ns1.a",
    "pod.ns1.b",
    "service.ns1.web",
    "endpointslice.ns1.web-abc",
    "networkpolicy.ns1.allow-web",
}


def mint_server_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a 127.0.0.1 server certificate it signed: (ca.crt, server.crt, server.key)."""
    ca = Authority.create("test-kube-ca")
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.pem.cert)
    cert_file, key_file = ca.issue("kube-apiserver", server=True).write(directory, "server")
    return ca_file, cert_file, key_file


@dataclass(frozen=True, slots=True)
class InCluster:
    api: FakeKubeAPI
    service_account_dir: Path  # token, ca.crt, namespace: what the kubelet mounts

    def rotate_token(self, token: str) -> None:
        """Replace the token file atomically, as the kubelet does (a new file renamed over the old)."""
        staged = self.service_account_dir / ".token.new"
        staged.write_text(token)
        os.replace(staged, self.service_account_dir / "token")


@pytest.fixture
async def in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InCluster]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_file, cert_file, key_file = mint_server_pki(pki)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_bytes(ca_file.read_bytes())
    (sa / "namespace").write_text("xpunet-system")
    (sa / "token").write_text("token-1")
    async with FakeKubeAPI(ssl_context=server_tls, tokens={"token-1"}) as api:
        # What every pod's environment has; nothing points at a kubeconfig.
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        monkeypatch.delenv("KUBECONFIG", raising=False)
        yield InCluster(api, sa)


async def test_the_fixture_rejects_a_missing_or_wrong_token_like_the_api_server(
    in_cluster: InCluster,
) -> None:
    tls = ssl.create_default_context(cafile=str(in_cluster.service_account_dir / "ca.crt"))
    url = f"{in_cluster.api.url}/api/v1/pods"
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dG9rZW4tMQ=="}):
            async with session.get(url, headers=headers, ssl=tls) as resp:
                assert resp.status == 401
                body = await resp.json()
                assert (body["kind"], body["reason"], body["code"]) == ("Status", "Unauthorized", 401)
        async with session.get(url, headers={"Authorization": "Bearer token-1"}, ssl=tls) as resp:
            assert resp.status == 200
            assert (await resp.json())["kind"] == "PodList"
    assert in_cluster.api.unauthorized == 3
    assert in_cluster.api.token_uses == {"token-1": 1}


def _lease_version(api: FakeKubeAPI) -> str:
    lease = api.get("Lease", "xpunet-system", "xpunet-watcher")
    assert lease is not None
    return str(lease["metadata"]["resourceVersion"])


async def test_in_cluster_watcher_mirrors_every_kind_and_follows_a_rotated_token(
    in_cluster: InCluster, bus: NatsBus, bucket_name: str
) -> None:
    api = in_cluster.api
    api.apply_many(
        [
            namespace_obj("ns1"),
            node("n1", ip="192.168.0.1", pod_cidr="10.64.0.0/24"),
            pod("ns1", "a", ip="10.0.0.1", node="n1"),
            pod("ns1", "b", ip="10.0.0.2", node="n1"),
            service("ns1", "web", cluster_ip="10.96.0.10"),
            endpoint_slice("ns1", "web-abc", service_name="web", ips=["10.0.0.1", "10.0.0.2"]),
            network_policy("ns1", "allow-web", app="web"),
        ]
    )
    options = WatcherOptions(
        source="kube",  # the default: in a pod this is the in-cluster config
        service_account_dir=str(in_cluster.service_account_dir),
        bucket=bucket_name,
        lease_identity="w1",
        lease_duration=3,
        renew_deadline=2.0,
        retry_period=0.1,
        freeze_gc_after_sync=False,  # process-wide; not in the test session
    )
    ctx = ServiceContext(
        name="watcher",
        instance="watcher",
        settings=Settings(watcher=options),
        bus=bus,
        node="n1",
        tracer=trace.get_tracer("test"),
        meter=metrics.get_meter("test"),
    )
    store = await bus.kv(bucket_name)
    async with KVFollower(store) as kvf:
        task = asyncio.create_task(run(ctx))
        try:
            await kvf.until(lambda v: set(v) >= KEYS | ALL_SYNCED)
            lease = api.get("Lease", "xpunet-system", "xpunet-watcher")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "w1"
            assert api.token_uses["token-1"] > 0

            # The kubelet rotates the token; from now on the server knows only the new one.
            in_cluster.rotate_token("token-2")
            api.tokens = {"token-2"}
            rotated_at = _lease_version(api)
            # Force every watch to reconnect; the changes below reach the watcher only through
            # the new watches (the old streams are aborted before these events are queued).
            api.drop_watches()
            api.apply(pod("ns1", "c", ip="10.0.0.3", node="n1"))
            api.delete("Pod", "ns1", "b")
            api.apply(namespace_obj("ns1", {"team": "blue"}))
            await kvf.until(lambda v: "pod.ns1.c" in v and "pod.ns1.b" not in v)
            assert api.token_uses["token-2"] > 0
            # The leader keeps renewing its Lease with the new token (only token-2 can write now).
            await api.until(lambda: _lease_version(api) != rotated_at)
            lease = api.get("Lease", "xpunet-system", "xpunet-watcher")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "w1"
            assert not task.done()
        finally:
            ctx.stopping.set()
            async with asyncio.timeout(30):
                await task
    await bus.delete_kv(bucket_name)


async def test_in_cluster_without_the_token_mount_fails_naming_the_file(
    in_cluster: InCluster, bus: NatsBus, bucket_name: str
) -> None:
    (in_cluster.service_account_dir / "token").unlink()
    ctx = ServiceContext(
        name="watcher",
        instance="watcher",
        settings=Settings(
            watcher=WatcherOptions(
                source="kube", service_account_dir=str(in_cluster.service_account_dir), bucket=bucket_name
            )
        ),
        bus=bus,
        node="n1",
        tracer=trace.get_tracer("test"),
        meter=metrics.get_meter("test"),
    )
    with pytest.raises(KubeConfigError, match=r"serviceaccount/token missing.*automountServiceAccountToken"):
        await run(ctx)
    await bus.delete_kv(bucket_name)


async def test_a_kubeconfig_with_a_ca_reaches_the_same_tls_server(
    in_cluster: InCluster, tmp_path: Path
) -> None:
    """An explicit kubeconfig wins over the pod's environment (which the fixture has set)."""
    api = in_cluster.api
    api.apply(namespace_obj("ns1"))
    path = api.write_kubeconfig(tmp_path / "kubeconfig", ca_file=in_cluster.service_account_dir / "ca.crt")
    kube = await api_client(str(path), service_account_dir=str(tmp_path / "not-used"))
    try:
        namespaces = await client.CoreV1Api(kube).list_namespace()
        assert [n.metadata.name for n in namespaces.items] == ["ns1"]
    finally:
        await kube.close()
    assert api.token_uses == {"token-1": 1}
    with pytest.raises(ValueError, match="ca_file"):
        api.write_kubeconfig(tmp_path / "kc2")
