"""W3C trace context in NATS headers (``traceparent``/``tracestate`` via the global OpenTelemetry propagator).

Producers call ``inject_headers`` (the NATS adapter does it on every publish
and KV write); consumers call ``context_from_headers(entry.headers)`` and start
their span as a child of it, so one Kubernetes change is one trace.

Compilers that coalesce many inputs into one write (policy, lb) note each
live input in a ``CauseTracker`` (a few dict lookups per message, no parsing)
and, once per flush, open one span with ``flush_span``: a child of the first
input's context, linked to the other inputs' contexts, with the earliest
``xpunet-written-at`` of the inputs carried on to the writes so the datapath
measures convergence from the first change, not from the compiler's write.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

# Unix seconds (decimal text) of the change a write descends from: the
# datapath's convergence latency runs from it to the target's acknowledgement.
WRITTEN_AT_HEADER = "xpunet-written-at"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# Distinct input contexts kept per flush (the first is the parent, the rest
# links); a cold start of 50k objects carries only a few, one per watcher batch.
MAX_CAUSES = 32


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


def _lowercased(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Header names lowercased: NATS keeps the sender's spelling, and names are case-insensitive."""
    return {name.lower(): value for name, value in headers.items()}


def parse_written_at(raw: str | None) -> float | None:
    """A ``xpunet-written-at`` value as unix seconds; None when absent, malformed or not positive."""
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


@dataclass(frozen=True, slots=True)
class Cause:
    """One input that led to a flush: its KV key and the (valid, remote) span context it carried."""

    key: str
    span_context: trace.SpanContext


@dataclass(frozen=True, slots=True)
class Causes:
    """What led to one flush."""

    count: int  # inputs noted since the previous flush (with or without trace context)
    traced: tuple[
        Cause, ...
    ]  # distinct valid trace contexts among them, in arrival order, at most MAX_CAUSES
    earliest: float | None  # unix seconds: the earliest written-at header, else the first arrival

    def written_at(self, now: float) -> float:
        return now if self.earliest is None else min(self.earliest, now)


class CauseTracker:
    """Collects the trace contexts and the earliest change time of the inputs of the next flush."""

    __slots__ = ("_clock", "_count", "_earliest", "_limit", "_seen", "_traced")

    def __init__(self, *, clock: Callable[[], float] = time.time, limit: int = MAX_CAUSES) -> None:
        self._clock = clock
        self._limit = limit
        self._count = 0
        self._earliest: float | None = None
        self._traced: list[Cause] = []
        self._seen: set[str] = set()  # traceparents looked at: a watcher batch shares one context

    def note(self, key: str, headers: Mapping[str, str]) -> None:
        """One input applied (called per message: keep it cheap)."""
        if self._count == 0:
            self._earliest = self._clock()  # the first arrival bounds when the change happened
        self._count += 1
        if not headers:
            return
        parent = headers.get(TRACEPARENT)
        if parent is None:
            # Our producers write lowercase names (exact look-ups above are the fast path);
            # anything else is looked up case-insensitively.
            headers = _lowercased(headers)
            parent = headers.get(TRACEPARENT)
        raw_stamp = headers.get(WRITTEN_AT_HEADER)
        if raw_stamp is not None:
            stamped = parse_written_at(raw_stamp)
            if stamped is not None and (self._earliest is None or stamped < self._earliest):
                self._earliest = stamped
        if parent is None or parent in self._seen or len(self._seen) >= 4 * self._limit:
            return
        # Parsed once per distinct context (malformed ones included, so they are not re-parsed).
        self._seen.add(parent)
        if len(self._traced) >= self._limit:
            return
        carrier = {TRACEPARENT: parent}
        state = headers.get(TRACESTATE)
        if state:
            carrier[TRACESTATE] = state
        span_context = trace.get_current_span(context_from_headers(carrier)).get_span_context()
        if span_context.is_valid:
            self._traced.append(Cause(key, span_context))

    def take(self) -> Causes:
        """The causes noted so far; the tracker starts over."""
        causes = Causes(self._count, tuple(self._traced), self._earliest)
        self._count = 0
        self._earliest = None
        self._traced = []
        self._seen = set()
        return causes


@contextmanager
def flush_span(
    tracer: Tracer, name: str, causes: Causes, attributes: Mapping[str, AttributeValue]
) -> Iterator[Span]:
    """One span for one flush, current while the block runs (so KV writes inside it carry it).

    Parent: the first input with a valid context (the oldest traced change of
    the flush, named by ``xpunet.source.key``); every other traced input is a span
    link, so each Kubernetes change's trace reaches this flush.  No input
    context: a root span.
    """
    parent: otel_context.Context | None = None
    if causes.traced:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(causes.traced[0].span_context))
    links = [Link(c.span_context, {"xpunet.kv.key": c.key}) for c in causes.traced[1:]]
    all_attributes: dict[str, AttributeValue] = {"xpunet.sources": causes.count, **attributes}
    if causes.traced:
        all_attributes["xpunet.source.key"] = causes.traced[0].key
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, links=links, attributes=all_attributes
    ) as span:
        yield span


def written_at_headers(causes: Causes, now: float) -> dict[str, str]:
    """Headers for a flush's writes (call inside ``flush_span``): its trace context and written-at."""
    return inject_headers({WRITTEN_AT_HEADER: f"{causes.written_at(now):.6f}"}) or {}


def source_attributes(
    causes: Causes, parse_key: Callable[[str], tuple[str, str | None, str] | None]
) -> dict[str, AttributeValue]:
    """``k8s.kind``/``k8s.namespace``/``k8s.name`` of the change a flush span continues (the first traced)."""
    if not causes.traced:
        return {}
    parsed = parse_key(causes.traced[0].key)
    if parsed is None:
        return {}  # a sync marker, or a key the service does not read
    kind, namespace, name = parsed
    attributes: dict[str, AttributeValue] = {"k8s.kind": str(kind), "k8s.name": name}
    if namespace is not None:
        attributes["k8s.namespace"] = namespace
    return attributes
