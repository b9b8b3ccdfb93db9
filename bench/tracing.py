"""Tracing overhead of the compilers: per-message ``CauseTracker.note`` and per-flush ``flush_span``.

The policy and lb services call ``note`` for every live ``xpunet-k8s`` change
and open one span per flush.  Cases:

* ``cold``: a watcher sync replayed live (50,000 changes in batches of 5,000,
  one trace context per batch, as the watcher writes them);
* ``distinct``: every change with its own context (the worst case: each is
  looked at once, parsed while under the cap);
* ``bare``: no headers at all (tracing off upstream).

    .venv/bin/python bench/tracing.py            # 50,000 changes, 2,000 flushes
    .venv/bin/python bench/tracing.py --quick    # small, well under a second
"""

from __future__ import annotations

import argparse
import json
import time

from opentelemetry.sdk.trace import TracerProvider

from xpunet.bus.tracing import MAX_CAUSES, CauseTracker, flush_span, inject_headers, written_at_headers


def _contexts(provider: TracerProvider, n: int) -> list[dict[str, str]]:
    tracer = provider.get_tracer("bench")
    out: list[dict[str, str]] = []
    for i in range(n):
        with tracer.start_as_current_span(f"w{i}"):
            headers = inject_headers()
        assert headers is not None
        out.append(headers)
    return out


def _note_ns(changes: list[tuple[str, dict[str, str]]]) -> float:
    tracker = CauseTracker()
    started = time.perf_counter_ns()
    for key, headers in changes:
        tracker.note(key, headers)
    elapsed = time.perf_counter_ns() - started
    tracker.take()
    return elapsed / len(changes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50_000)
    parser.add_argument("--flushes", type=int, default=2_000)
    parser.add_argument("--quick", action="store_true", help="1,000 changes, 100 flushes")
    args = parser.parse_args()
    changes, flushes = (1_000, 100) if args.quick else (args.changes, args.flushes)

    provider = TracerProvider()  # recording spans, no exporter: the SDK's own cost
    batch = 5_000
    per_batch = _contexts(provider, max(1, changes // batch))
    distinct = _contexts(provider, changes)
    keys = [f"pod.ns{i % 1000}.p{i}" for i in range(changes)]
    cold = [(k, per_batch[i // batch]) for i, k in enumerate(keys)]
    worst = list(zip(keys, distinct, strict=True))
    bare: list[tuple[str, dict[str, str]]] = [(k, {}) for k in keys]

    tracer = provider.get_tracer("bench-compiler")
    tracker = CauseTracker()
    for headers in distinct[:MAX_CAUSES]:
        tracker.note("pod.ns.p", headers)
    causes = tracker.take()
    started = time.perf_counter_ns()
    for _ in range(flushes):
        with flush_span(tracer, "policy.compile", causes, {"k8s.kind": "pod"}) as span:
            written_at_headers(causes, time.time())
            span.set_attribute("xpunet.intent.keys", 1)
    flush_us = (time.perf_counter_ns() - started) / flushes / 1000

    print(
        json.dumps(
            {
                "changes": changes,
                "note_ns_per_change": {
                    "cold": round(_note_ns(cold)),
                    "distinct": round(_note_ns(worst)),
                    "bare": round(_note_ns(bare)),
                },
                "flush_span_us_with_32_causes": round(flush_us, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
