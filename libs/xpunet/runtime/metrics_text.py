"""Renders the OpenTelemetry SDK's collected metrics as Prometheus text exposition (format 0.0.4).

Pure: SDK data in, text out.  We render ourselves instead of using
``opentelemetry-exporter-prometheus`` because that reader registers into
prometheus_client's process-global registry, and ``xpunetctl up`` runs several
services (each with its own MeterProvider and /metrics) in one process.

Mapping: a monotonic cumulative Sum is a ``counter`` (name suffixed ``_total``);
other Sums and Gauges are ``gauge``; an explicit-bucket Histogram is a
``histogram`` (``_bucket``/``_sum``/``_count``).  Exponential histograms are
skipped (none of our instruments use them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricsData,
    NumberDataPoint,
    Sum,
)

_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    out = _INVALID_NAME.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def label_name(name: str) -> str:
    out = _INVALID_LABEL.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _labels(attributes: Mapping[str, object] | None, extra: Iterable[tuple[str, str]] = ()) -> str:
    pairs = [(label_name(k), str(v)) for k, v in sorted((attributes or {}).items())]
    pairs.extend(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in pairs) + "}"


def render_prometheus(data: MetricsData | None) -> str:
    """Prometheus text for every metric in ``data`` (empty string for none)."""
    if data is None:
        return ""
    lines: list[str] = []
    seen: set[str] = set()  # one TYPE block per name even if several scopes report it
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                body = metric.data
                name = metric_name(metric.name)
                if isinstance(body, Sum):
                    counter = body.is_monotonic and (
                        body.aggregation_temporality == AggregationTemporality.CUMULATIVE
                    )
                    kind = "counter" if counter else "gauge"
                    if counter and not name.endswith("_total"):
                        name += "_total"
                    points: list[NumberDataPoint] = list(body.data_points)
                elif isinstance(body, Gauge):
                    kind = "gauge"
                    points = list(body.data_points)
                elif isinstance(body, Histogram):
                    kind = "histogram"
                    points = []
                else:
                    continue
                if name not in seen:
                    seen.add(name)
                    if metric.description:
                        lines.append(f"# HELP {name} {_escape_help(metric.description)}")
                    lines.append(f"# TYPE {name} {kind}")
                if isinstance(body, Histogram):
                    for hist_point in body.data_points:
                        lines.extend(_histogram_lines(name, hist_point))
                    continue
                for point in points:
                    lines.append(f"{name}{_labels(point.attributes)} {_format_value(point.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _histogram_lines(name: str, point: HistogramDataPoint) -> list[str]:
    lines: list[str] = []
    cumulative = 0
    bounds = [*(_format_value(b) for b in point.explicit_bounds), "+Inf"]
    for bound, count in zip(bounds, point.bucket_counts, strict=False):
        cumulative += count
        lines.append(f"{name}_bucket{_labels(point.attributes, [('le', bound)])} {cumulative}")
    lines.append(f"{name}_sum{_labels(point.attributes)} {_format_value(point.sum)}")
    lines.append(f"{name}_count{_labels(point.attributes)} {point.count}")
    return lines
