"""Trace context into and out of header maps (pure: no NATS involved)."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from xpunet.bus.tracing import context_from_headers, inject_headers

_tracer = TracerProvider().get_tracer("xpunet-test")


def test_no_span_no_headers() -> None:
    assert inject_headers() is None
    assert inject_headers({"x": "1"}) == {"x": "1"}


def test_round_trip_keeps_trace_and_parent() -> None:
    with _tracer.start_as_current_span("producer") as span:
        headers = inject_headers({"x": "1"})
    assert headers is not None
    assert headers["x"] == "1"
    parent = trace.get_current_span(context_from_headers(headers)).get_span_context()
    assert parent.trace_id == span.get_span_context().trace_id
    assert parent.span_id == span.get_span_context().span_id
    assert parent.is_remote


def test_header_names_are_case_insensitive() -> None:
    with _tracer.start_as_current_span("producer") as span:
        headers = inject_headers()
    assert headers is not None
    upper = {name.upper(): value for name, value in headers.items()}
    parent = trace.get_current_span(context_from_headers(upper)).get_span_context()
    assert parent.span_id == span.get_span_context().span_id


def test_missing_or_malformed_context_is_empty() -> None:
    for headers in (
        None,
        {},
        {"traceparent": "garbage"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},
    ):
        assert not trace.get_current_span(context_from_headers(headers)).get_span_context().is_valid
