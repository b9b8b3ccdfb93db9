"""Core NATS subjects through the bus (publish/subscribe/request) and W3C trace context across them and KV."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from xpunet.bus.api import InSync, KVEntry, Message
from xpunet.bus.errors import BusUnavailable
from xpunet.bus.nats import NatsBus, NatsStateStore, connect
from xpunet.bus.tracing import context_from_headers
from xpunet.testing.nats import take, unique_name


@pytest.fixture
def tracing() -> tuple[Tracer, InMemorySpanExporter]:
    # A private provider: the propagator only needs the current span, not a global provider.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("xpunet-test"), exporter


async def test_publish_subscribe_with_headers(bus: NatsBus) -> None:
    subject = f"xpunet.test.{unique_name('s')}"
    async with await bus.subscribe(subject) as sub:
        await bus.publish(subject, b"one", headers={"x-kind": "nudge"})
        await bus.publish(subject, b"two")
        first, second = await take(sub, 2)
    assert (first.subject, first.data, dict(first.headers)) == (subject, b"one", {"x-kind": "nudge"})
    assert second.data == b"two"


async def test_request_reply(bus: NatsBus) -> None:
    subject = f"xpunet.test.{unique_name('r')}"
    sub = await bus.subscribe(subject)

    async def responder() -> None:
        async for msg in sub:
            await bus.publish(msg.reply, msg.data.upper())

    task = asyncio.create_task(responder())
    try:
        reply = await bus.request(subject, b"ping", timeout=5)
        assert reply.data == b"PING"
    finally:
        await sub.unsubscribe()
        await task


async def test_request_without_responder_is_unavailable(bus: NatsBus) -> None:
    with pytest.raises(BusUnavailable, match="no responders"):
        await bus.request(f"xpunet.test.{unique_name('none')}", b"?", timeout=2)


async def test_connect_to_nothing_times_out_with_a_clear_error() -> None:
    with pytest.raises(BusUnavailable, match=r"cannot connect to nats://127\.0\.0\.1:1"):
        await connect("nats://127.0.0.1:1", name="nowhere", initial_timeout=0.5)


async def test_trace_context_across_publish_subscribe(
    bus: NatsBus, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    subject = f"xpunet.test.{unique_name('t')}"
    async with await bus.subscribe(subject) as sub:
        with tracer.start_as_current_span("produce"):
            await bus.publish(subject, b"x")
        (msg,) = await take(sub, 1)
    assert "traceparent" in msg.headers
    _consume(tracer, msg)
    produce, consume = _spans(exporter)
    assert consume.parent is not None
    assert consume.parent.span_id == produce.context.span_id
    assert consume.context.trace_id == produce.context.trace_id


async def test_trace_context_across_kv_put_and_watch(
    kv: NatsStateStore, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    async with contextlib.aclosing(kv.watch()) as watch:
        assert await take(watch, 1) == [InSync(0)]
        with tracer.start_as_current_span("produce"):
            await kv.put("traced", b"v", headers={"x-extra": "kept"})
        (entry,) = await take(watch, 1)
    assert isinstance(entry, KVEntry)
    assert entry.headers["x-extra"] == "kept"
    # get() returns the stored headers too.
    stored = await kv.get("traced")
    assert stored is not None
    assert stored.headers == entry.headers
    _consume(tracer, entry)
    produce, consume = _spans(exporter)
    assert consume.parent is not None
    assert consume.parent.span_id == produce.context.span_id


async def test_put_many_carries_trace_context(
    kv: NatsStateStore, tracing: tuple[Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = tracing
    with tracer.start_as_current_span("produce"):
        await kv.put_many({"a": b"1", "b": None})
    entry = await kv.get("a")
    assert entry is not None
    _consume(tracer, entry)
    produce, consume = _spans(exporter)
    assert consume.parent is not None
    assert consume.parent.span_id == produce.context.span_id


def _consume(tracer: Tracer, item: Message | KVEntry) -> None:
    with tracer.start_as_current_span("consume", context=context_from_headers(item.headers)):
        pass


def _spans(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ReadableSpan]:
    spans = {span.name: span for span in exporter.get_finished_spans()}
    return spans["produce"], spans["consume"]
