"""OTLP export: a service process sends its metrics over real gRPC to a collector when the endpoint is set."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

BIN = Path(sys.executable).parent


class Collector(metrics_service_pb2_grpc.MetricsServiceServicer):
    """The receiving end of OTLP/gRPC metrics: keeps every export request."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []

    async def Export(  # noqa: N802  # the gRPC method name
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: object
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    servicer = Collector()
    # The generated gRPC module has no annotations.
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(None)


async def test_metrics_exported_over_otlp_on_shutdown(
    collector: tuple[Collector, int], nats_url: str
) -> None:
    servicer, port = collector
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPUNET_", "OTEL_"))}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "xpunet-routing"),
        *("--nats", nats_url, "--health-port", "0"),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    log: list[str] = []
    while not any(' ready"' in line for line in log[-1:]):
        line = (await proc.stderr.readline()).decode()
        assert line, "".join(log)
        log.append(line)
    assert any("exporting traces and metrics over OTLP" in line for line in log)
    proc.send_signal(signal.SIGTERM)
    rest, _ = await proc.communicate()
    assert proc.returncode == 0, "".join(log) + rest.decode()
    # Shutdown flushed a final export; it carries the resource and the runtime's ready gauge.
    assert servicer.requests
    resource_metrics = [rm for req in servicer.requests for rm in req.resource_metrics]
    names = {
        a.value.string_value
        for rm in resource_metrics
        for a in rm.resource.attributes
        if a.key == "service.name"
    }
    assert names == {"xpunet-routing"}
    metric_names = {m.name for rm in resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "xpunet.service.ready" in metric_names
