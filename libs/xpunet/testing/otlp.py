"""A real OTLP/gRPC receiver for tests: services export to it exactly as to an OpenTelemetry collector.

It serves ``TraceService/Export`` and ``MetricsService/Export`` over grpc.aio on
a loopback port with the opentelemetry-proto messages (the wire format a
collector speaks), keeps what arrives in plain records and wakes waiters on
every export.  (rotel, a small collector on PyPI, was considered: it forwards
to OTLP, ClickHouse, Datadog or Kafka and can only print spans as a debug log,
so reading its output back would be parsing a log format, not OTLP.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

T = TypeVar("T")

Attr = str | int | float | bool


def _value(value: AnyValue) -> Attr:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    return str(value)  # arrays/maps/bytes: not used by xpunet's spans


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Attr]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    service: str  # resource service.name
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    attributes: dict[str, Attr] = field(hash=False)
    kind: int = 0


@dataclass(slots=True)
class OtlpReceiver:
    spans: list[ReceivedSpan] = field(default_factory=list)
    histogram_counts: dict[str, int] = field(default_factory=dict)  # metric name → data points' count
    metric_names: set[str] = field(default_factory=set)
    url: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.trace.v1.TraceService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            self._export_traces,
                            request_deserializer=ExportTraceServiceRequest.FromString,
                            response_serializer=ExportTraceServiceResponse.SerializeToString,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "opentelemetry.proto.collector.metrics.v1.MetricsService",
                    {
                        "Export": grpc.unary_unary_rpc_method_handler(
                            self._export_metrics,
                            request_deserializer=ExportMetricsServiceRequest.FromString,
                            response_serializer=ExportMetricsServiceResponse.SerializeToString,
                        )
                    },
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def _export_traces(
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                            attributes=_attributes(span.attributes),
                            kind=span.kind,
                        )
                    )
        async with self._changed:
            self._changed.notify_all()
        return ExportTraceServiceResponse()

    async def _export_metrics(
        self, request: ExportMetricsServiceRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> ExportMetricsServiceResponse:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    self.metric_names.add(metric.name)
                    if metric.WhichOneof("data") == "histogram":
                        count = sum(point.count for point in metric.histogram.data_points)
                        self.histogram_counts[metric.name] = max(
                            self.histogram_counts.get(metric.name, 0), count
                        )
        async with self._changed:
            self._changed.notify_all()
        return ExportMetricsServiceResponse()

    async def wait_for(self, found: Callable[[OtlpReceiver], T | None]) -> T:
        """Until ``found(self)`` returns something (re-checked on every export)."""
        async with self._changed:
            result = found(self)
            while result is None:
                await self._changed.wait()
                result = found(self)
        return result
