"""Causes of a compiler flush: trace contexts and the earliest change time, one span per flush (pure)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from xpunet.bus.tracing import (
    MAX_CAUSES,
    WRITTEN_AT_HEADER,
    CauseTracker,
    context_from_headers,
    flush_span,
    inject_headers,
    parse_written_at,
    source_attributes,
    written_at_headers,
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _producer_headers(provider: TracerProvider, name: str) -> tuple[dict[str, str], ReadableSpan]:
    """Headers as a producer's KV write carries them, and the producer's span."""
    with provider.get_tracer("producer").start_as_current_span(name) as span:
        headers = inject_headers()
    assert headers is not None
    assert isinstance(span, ReadableSpan)
    return headers, span


def _producer_trace_id(headers: dict[str, str]) -> int:
    return trace.get_current_span(context_from_headers(headers)).get_span_context().trace_id


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _parse(key: str) -> tuple[str, str | None, str] | None:
    kind, _, rest = key.partition(".")
    if kind == "sync":
        return None
    ns, _, name = rest.partition(".")
    return (kind, ns, name) if name else (kind, None, ns)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("1700000000.5", 1700000000.5, id="seconds"),
        pytest.param("garbage", None, id="malformed"),
        pytest.param("0", None, id="zero"),
        pytest.param("-3", None, id="negative"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
    ],
)
def test_parse_written_at(raw: str | None, expected: float | None) -> None:
    assert parse_written_at(raw) == expected


def test_earliest_is_first_arrival_or_an_older_written_at() -> None:
    clock = Clock(1000.0)
    tracker = CauseTracker(clock=clock)
    tracker.note("pod.a.b", {})
    clock.now = 1001.0
    tracker.note("pod.a.c", {WRITTEN_AT_HEADER: "990.25"})
    tracker.note("pod.a.d", {WRITTEN_AT_HEADER: "995"})
    causes = tracker.take()
    assert causes.count == 3
    assert causes.earliest == 990.25
    assert causes.traced == ()
    # The tracker starts over.
    empty = tracker.take()
    assert (empty.count, empty.earliest, empty.traced) == (0, None, ())
    assert empty.written_at(now=1234.0) == 1234.0


def test_a_batch_sharing_one_context_is_one_cause_and_causes_are_capped(provider: TracerProvider) -> None:
    shared, _ = _producer_headers(provider, "watcher.kv_write_batch")
    tracker = CauseTracker(clock=Clock(1.0))
    for i in range(1000):
        tracker.note(f"pod.ns.p{i}", shared)
    for i in range(2 * MAX_CAUSES):
        headers, _ = _producer_headers(provider, f"w{i}")
        # NATS keeps the sender's header spelling: look-ups ignore case.
        tracker.note(f"pod.ns.q{i}", {name.title(): value for name, value in headers.items()})
    causes = tracker.take()
    assert causes.count == 1000 + 2 * MAX_CAUSES
    assert len(causes.traced) == MAX_CAUSES
    assert causes.traced[0].key == "pod.ns.p0"
    assert causes.traced[0].span_context.trace_id == _producer_trace_id(shared)


def test_flush_span_continues_the_first_change_and_links_the_others(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    first_headers, first = _producer_headers(provider, "first")
    second_headers, second = _producer_headers(provider, "second")
    tracker = CauseTracker(clock=Clock(50.0))
    tracker.note("sync.pod", {"traceparent": "garbage"})  # malformed: neither parent nor link
    tracker.note("networkpolicy.shop.web", first_headers)
    tracker.note("namespace.shop", second_headers)
    causes = tracker.take()
    tracer = provider.get_tracer("compiler")
    with flush_span(tracer, "policy.compile", causes, source_attributes(causes, _parse)) as span:
        headers = written_at_headers(causes, now=60.0)
        span.set_attribute("xpunet.intent.keys", 2)
    (compile_span,) = (s for s in exporter.get_finished_spans() if s.name == "policy.compile")
    first_ctx, second_ctx = first.get_span_context(), second.get_span_context()
    assert first_ctx is not None
    assert second_ctx is not None
    assert compile_span.parent is not None
    assert compile_span.parent.span_id == first_ctx.span_id
    assert compile_span.context is not None
    assert compile_span.context.trace_id == first_ctx.trace_id
    assert [link.context.span_id for link in compile_span.links] == [second_ctx.span_id]
    assert compile_span.kind is SpanKind.CONSUMER
    attributes = dict(compile_span.attributes or {})
    # The first key with a valid context names the span (the malformed one is only counted).
    assert attributes["xpunet.source.key"] == "networkpolicy.shop.web"
    assert attributes["xpunet.sources"] == 3
    assert attributes["xpunet.intent.keys"] == 2
    # The writes carry the compile span's context and the first arrival as written-at.
    carried = trace.get_current_span(context_from_headers(headers)).get_span_context()
    assert carried.span_id == compile_span.context.span_id
    assert headers[WRITTEN_AT_HEADER] == "50.000000"


def test_flush_span_without_traced_input_is_a_root(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    causes = CauseTracker(clock=Clock(5.0)).take()
    with flush_span(provider.get_tracer("compiler"), "lb.compile", causes, {}):
        headers = written_at_headers(causes, now=7.5)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.links == ()
    assert headers[WRITTEN_AT_HEADER] == "7.500000"


def test_source_attributes_name_the_continued_change(provider: TracerProvider) -> None:
    headers, _ = _producer_headers(provider, "w")
    tracker = CauseTracker(clock=Clock(1.0))
    tracker.note("service.shop.web", headers)
    assert source_attributes(tracker.take(), _parse) == {
        "k8s.kind": "service",
        "k8s.namespace": "shop",
        "k8s.name": "web",
    }
    tracker.note("node.node-1", headers)
    assert source_attributes(tracker.take(), _parse) == {"k8s.kind": "node", "k8s.name": "node-1"}
    tracker.note("sync.pod", headers)
    assert source_attributes(tracker.take(), _parse) == {}
