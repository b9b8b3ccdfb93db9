"""W3C trace context in NATS headers (``traceparent``/``tracestate`` via the global OpenTelemetry propagator).

Producers call ``inject_headers`` (the NATS adapter does it on every publish
and KV write); consumers call ``context_from_headers(entry.headers)`` and start
their span as a child of it, so one Kubernetes change is one trace.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import propagate


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``headers`` plus the current trace context; ``None`` when both are empty (saves header parsing)."""
    carrier: dict[str, str] = dict(headers) if headers else {}
    propagate.inject(carrier)
    return carrier or None


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context carried in ``headers`` (an empty context when there is none or it is malformed)."""
    if not headers:
        return otel_context.Context()
    # Header names are case-insensitive on the wire; the propagator looks up lowercase names.
    # A malformed traceparent is ignored by the propagator: the result is then an empty context.
    carrier = {name.lower(): value for name, value in headers.items()}
    return propagate.extract(carrier, context=otel_context.Context())
