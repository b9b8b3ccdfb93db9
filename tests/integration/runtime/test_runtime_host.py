"""The service host in-process against a real nats-server: failures, early returns, slow stops."""

from __future__ import annotations

import asyncio

import pytest

from xpunet.runtime.context import RunFn, ServiceContext
from xpunet.runtime.health import http_get
from xpunet.runtime.host import ServiceFailedError, ServiceHost
from xpunet.runtime.settings import Settings, build_settings, cli_layer
from xpunet.runtime.telemetry import setup_telemetry


def _settings(nats_url: str, *extra: str) -> Settings:
    return build_settings(Settings, [cli_layer([f"bus.urls={nats_url}", "health.port=0", *extra])])


def _host(name: str, run_fn: RunFn[Settings], settings: Settings) -> ServiceHost[Settings]:
    telemetry = setup_telemetry(f"xpunet-{name}", settings.telemetry, {})
    return ServiceHost(name, run_fn, settings, telemetry, instance=f"test-{name}")


async def test_failing_service_raises_service_failed(nats_url: str) -> None:
    async def run(ctx: ServiceContext[Settings]) -> None:
        ctx.mark_ready()
        raise RuntimeError("boom")

    host = _host("failing", run, _settings(nats_url))
    with pytest.raises(ServiceFailedError, match="boom"):
        await host.run(asyncio.Event())


async def test_early_return_is_a_failure(nats_url: str) -> None:
    async def run(ctx: ServiceContext[Settings]) -> None:
        return

    host = _host("early", run, _settings(nats_url))
    with pytest.raises(ServiceFailedError, match="returned before a stop"):
        await host.run(asyncio.Event())


async def test_service_that_ignores_stop_is_cancelled(nats_url: str) -> None:
    entered = asyncio.Event()

    async def run(ctx: ServiceContext[Settings]) -> None:
        ctx.mark_ready()
        entered.set()
        await asyncio.Event().wait()  # never looks at ctx.stopping

    host = _host("stubborn", run, _settings(nats_url, "runtime.shutdown_timeout=0.2"))
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    await entered.wait()
    stop.set()
    with pytest.raises(ServiceFailedError, match=r"did not stop within 0\.2s"):
        await task


async def test_readiness_follows_the_service_and_stop(nats_url: str) -> None:
    marked = asyncio.Event()
    proceed = asyncio.Event()
    flushed: list[str] = []

    async def run(ctx: ServiceContext[Settings]) -> None:
        marked.set()
        await proceed.wait()
        ctx.mark_ready()
        await ctx.stopping.wait()
        flushed.append("flushed")  # the service still runs code after the stop

    host = _host("ready", run, _settings(nats_url))
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    await marked.wait()
    url = host.health_url
    assert url is not None
    assert await http_get(f"{url}/readyz") == (503, "not ready: starting\n")
    proceed.set()
    assert host.ctx is not None
    await host.ctx.ready.wait()
    assert await http_get(f"{url}/readyz") == (200, "ready\n")
    assert await http_get(f"{url}/nope") == (404, "not found\n")
    stop.set()
    await task
    assert flushed == ["flushed"]
    assert host.ready_at is not None


async def test_health_endpoint_rejects_bad_requests(nats_url: str) -> None:
    async def run(ctx: ServiceContext[Settings]) -> None:
        ctx.mark_ready()
        await ctx.stopping.wait()

    host = _host("http", run, _settings(nats_url))
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    await host.health_bound.wait()
    assert host.health_url is not None
    _, port = host.health_url.rsplit(":", 1)
    for request, status in [
        (b"POST /healthz HTTP/1.1\r\n\r\n", b"405"),
        (b"nonsense\r\n\r\n", b"400"),
        (b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(request)
        await writer.drain()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert reply.split(b" ", 2)[1] == status, reply
    stop.set()
    await task
