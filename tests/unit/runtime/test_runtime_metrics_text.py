"""Prometheus text rendering of real OpenTelemetry SDK metric data."""

from __future__ import annotations

import logging
import sys

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from xpunet.runtime.logs import LineFormatter
from xpunet.runtime.metrics_text import label_name, metric_name, render_prometheus


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


def _meter(reader: InMemoryMetricReader) -> MeterProvider:
    return MeterProvider(metric_readers=[reader])


def test_counter_updown_gauge_histogram(reader: InMemoryMetricReader) -> None:
    provider = _meter(reader)
    meter = provider.get_meter("t")
    writes = meter.create_counter("xpunet.writes", description="table writes")
    writes.add(3, {"table": "acl", "result": "ok"})
    writes.add(2, {"table": "acl", "result": "ok"})
    inflight = meter.create_up_down_counter("xpunet.inflight")
    inflight.add(5)
    inflight.add(-7)

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(0.25, {"node": 'n"1'})]

    meter.create_observable_gauge("xpunet.occupancy", callbacks=[observe])
    latency = meter.create_histogram("xpunet.latency", unit="s")
    for value in (0.5, 3.0, 12.0, 20000.0):
        latency.record(value)
    text = render_prometheus(reader.get_metrics_data())
    lines = text.splitlines()
    assert "# HELP xpunet_writes_total table writes" in lines
    assert "# TYPE xpunet_writes_total counter" in lines
    assert 'xpunet_writes_total{result="ok",table="acl"} 5' in lines
    assert "# TYPE xpunet_inflight gauge" in lines
    assert "xpunet_inflight -2" in lines
    assert 'xpunet_occupancy{node="n\\"1"} 0.25' in lines
    assert "# TYPE xpunet_latency histogram" in lines
    # The SDK's default bounds start 0, 5, 10, 25, ...; buckets are cumulative and end at +Inf.
    assert 'xpunet_latency_bucket{le="0"} 0' in lines
    assert 'xpunet_latency_bucket{le="5"} 2' in lines
    assert 'xpunet_latency_bucket{le="25"} 3' in lines
    assert 'xpunet_latency_bucket{le="+Inf"} 4' in lines
    assert "xpunet_latency_sum 20015.5" in lines
    assert "xpunet_latency_count 4" in lines
    assert text.endswith("\n")
    provider.shutdown()


def test_nothing_recorded_renders_empty(reader: InMemoryMetricReader) -> None:
    provider = _meter(reader)
    assert render_prometheus(reader.get_metrics_data()) == ""
    assert render_prometheus(None) == ""
    provider.shutdown()


@pytest.mark.parametrize(
    ("raw", "metric", "label"),
    [
        pytest.param("a.b-c", "a_b_c", "a_b_c", id="punctuation"),
        pytest.param("9lives", "_9lives", "_9lives", id="leading-digit"),
        pytest.param("ns:name", "ns:name", "ns_name", id="colon-only-in-metric"),
    ],
)
def test_names(raw: str, metric: str, label: str) -> None:
    assert metric_name(raw) == metric
    assert label_name(raw) == label


def test_log_line_is_single_line_with_fields() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("xpunet.x", logging.ERROR, "f.py", 1, 'said "%s"', ("hi",), None)
        record.exc_info = sys.exc_info()
    record.svc = "lb"
    line = LineFormatter().format(record)
    assert "\n" not in line
    assert ' level=error svc=lb logger=xpunet.x msg="said \\"hi\\""' in line
    assert 'exc="Traceback' in line
    assert "ValueError: bad\\nthing" in line
