"""``xpunet.watcher.service.run`` as the runtime calls it: settings, ready, stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from opentelemetry import metrics, trace

from xpunet.bus.nats import NatsBus
from xpunet.model import Kind
from xpunet.runtime.context import ServiceContext
from xpunet.testing.kubeapi import FakeKubeAPI, KVFollower, namespace_obj, pod
from xpunet.watcher.service import Settings, WatcherOptions, run
from xpunet.watcher.state import sync_key


async def test_run_mirrors_a_manifest_directory_reports_ready_and_stops(
    tmp_path: Path, bus: NatsBus, bucket_name: str
) -> None:
    (tmp_path / "m.yaml").write_text(
        yaml.safe_dump_all([namespace_obj("ns1"), pod("ns1", "a", ip="10.0.0.1")])
    )
    settings = Settings(
        watcher=WatcherOptions(
            source=f"dir:{tmp_path}", bucket=bucket_name, poll_interval=0.05, freeze_gc_after_sync=False
        )
    )
    ctx = ServiceContext(
        name="watcher",
        instance="watcher",
        settings=settings,
        bus=bus,
        node="n1",
        tracer=trace.get_tracer("test"),
        meter=metrics.get_meter("test"),
    )
    task = asyncio.create_task(run(ctx))
    async with asyncio.timeout(30):
        await ctx.ready.wait()
    store = await bus.kv(bucket_name)
    assert set(await store.keys("")) == {"namespace.ns1", "pod.ns1.a"} | {sync_key(k) for k in Kind}
    ctx.stopping.set()
    async with asyncio.timeout(30):
        await task
    await bus.delete_kv(bucket_name)


async def test_run_against_the_api_leads_mirrors_and_releases_the_lease_on_stop(
    tmp_path: Path, bus: NatsBus, bucket_name: str, fake_api: FakeKubeAPI
) -> None:
    fake_api.apply_many([namespace_obj("ns1"), pod("ns1", "a", ip="10.0.0.1")])
    kubeconfig = fake_api.write_kubeconfig(tmp_path / "kubeconfig")
    options = WatcherOptions(
        source=f"kube:{kubeconfig}",
        bucket=bucket_name,
        lease_identity="w1",
        lease_duration=2,
        renew_deadline=1.0,
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
        await kvf.until(lambda v: {"namespace.ns1", "pod.ns1.a", sync_key(Kind.POD)} <= set(v))
        lease = fake_api.get("Lease", "xpunet-system", "xpunet-watcher")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "w1"
        ctx.stopping.set()
        async with asyncio.timeout(30):
            await task
    lease = fake_api.get("Lease", "xpunet-system", "xpunet-watcher")
    assert lease is not None
    assert not lease["spec"].get("holderIdentity")  # released: a standby need not wait it out
    await bus.delete_kv(bucket_name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"source": "etcd:x"}, "watcher.source", id="bad-source"),
        pytest.param({"source": "dir:"}, "watcher.source", id="dir-without-path"),
        pytest.param({"renew_deadline": 20.0}, "renew_deadline", id="lease-timings"),
        pytest.param({"page_size": 0}, "page_size", id="page-size"),
    ],
)
def test_bad_settings_name_the_key(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WatcherOptions(**options)  # type: ignore[arg-type]  # deliberately loose for the table
