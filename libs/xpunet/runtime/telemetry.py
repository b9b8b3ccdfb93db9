"""OpenTelemetry set-up: a TracerProvider and a MeterProvider per service.

Metrics are always readable in-process (for ``/metrics``); traces and metrics are
exported over OTLP gRPC only when an endpoint is configured (``telemetry.otlp_endpoint``
or ``OTEL_EXPORTER_OTLP_ENDPOINT``).  ``shutdown`` flushes both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer

from xpunet.runtime.settings import TelemetrySettings

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Telemetry:
    service_name: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    metric_reader: InMemoryMetricReader  # what /metrics renders
    otlp_endpoint: str  # "" when nothing is exported

    def tracer(self, name: str) -> Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> Meter:
        return self.meter_provider.get_meter(name)

    def shutdown(self) -> None:
        """Flush pending spans and a last metric export, then stop the providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(service_name: str, settings: TelemetrySettings, environ: Mapping[str, str]) -> Telemetry:
    endpoint = settings.otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    resource = Resource.create({"service.name": settings.service_name or service_name})
    in_memory = InMemoryMetricReader()
    readers: list[MetricReader] = [in_memory]
    tracer_provider = TracerProvider(resource=resource)
    if endpoint:
        # Imported here: the gRPC exporter is only needed (and only pays its import) when exporting.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        readers.append(
            PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint),
                export_interval_millis=settings.metric_export_interval * 1000,
            )
        )
        log.info("exporting traces and metrics over OTLP to %s", endpoint)
    else:
        log.debug("no OTLP endpoint configured; telemetry is not exported")
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    return Telemetry(
        service_name=settings.service_name or service_name,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metric_reader=in_memory,
        otlp_endpoint=endpoint,
    )
