"""The shared compiler-service loop against a real nats-server, with a recording compiler behind the Protocol.

The policy and lb services' own integration tests cover their compilers through
this loop; here the loop's own rules: nothing is flushed before every watch is
in sync and every sync marker exists, objects reach the compiler decoded (bad
values and objects under another kind's key do not), status reports are
written before intents and both carry the change's written-at, and each flush
reports its timing and its churn to the heap freezer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from xpunet.bus.api import StateStore
from xpunet.bus.nats import NatsBus
from xpunet.bus.tracing import WRITTEN_AT_HEADER
from xpunet.model.objects import K8sObject, Kind, Labels, Namespace, Pod
from xpunet.runtime.compiler_service import CompilerService, FlushResult, FlushTiming, HeapFreezer
from xpunet.testing.nats import in_background, next_entry, unique_name
from xpunet.wire import WireError, encode_object

WATCHED = (Kind.POD, Kind.NAMESPACE)


class RecordingCompiler:
    """Writes ``out.<what happened>`` for every input; a pod named ``bad`` also yields a status report."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.pending: dict[str, bytes | None] = {}
        self.status: dict[str, bytes | None] = {}
        self.flushed_count = 0
        self.seen_at_flush: list[int] = []  # inputs seen when each flush compiled
        self._input = asyncio.Event()

    async def until_seen(self, what: str) -> None:
        async with asyncio.timeout(10):
            while what not in self.seen:
                self._input.clear()
                await self._input.wait()

    def upsert(self, kind: Kind, obj: K8sObject) -> None:
        assert isinstance(obj, Pod | Namespace)
        self.seen.append(f"upsert {kind.value} {obj.name}")
        self._input.set()
        self.pending[f"out.{kind.value}.{obj.name}"] = obj.name.encode()
        if obj.name == "bad":
            self.status[f"rejected.{obj.name}"] = b"why"

    def delete(self, kind: Kind, namespace: str | None, name: str) -> None:
        self.seen.append(f"delete {kind.value} {name}")
        self._input.set()
        self.pending[f"out.{kind.value}.{name}"] = None

    def undecodable(self, kind: Kind, namespace: str | None, name: str, error: WireError) -> None:
        self.seen.append(f"undecodable {kind.value} {name}")
        self._input.set()

    def flush(self) -> FlushResult:
        self.seen_at_flush.append(len(self.seen))
        intents, self.pending = self.pending, {}
        status, self.status = self.status, {}
        return FlushResult(intents=intents, status=status, rejected=len(status))

    def flushed(self) -> None:
        self.flushed_count += 1


def pod(name: str) -> Pod:
    return Pod("shop", name, f"uid-{name}", node="n1", ips=("10.0.0.1",), labels=Labels({"app": name}))


class Freezes:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1  # the real gc.freeze() would outlive this test in the pytest process


@asynccontextmanager
async def running(
    compiler: RecordingCompiler, k8s: StateStore, intents: StateStore, status: StateStore, heap: HeapFreezer
) -> AsyncIterator[CompilerService]:
    service = CompilerService(
        compiler,
        name="test",
        watched=WATCHED,
        k8s=k8s,
        intents=intents,
        status=status,
        flush_interval=0.0,
        heap=heap,
    )
    async with in_background(service):
        yield service


async def test_gating_inputs_writes_and_timings(bus: NatsBus, caplog: pytest.LogCaptureFixture) -> None:
    k8s, intents, status = [await bus.kv(unique_name("cs")) for _ in range(3)]
    compiler = RecordingCompiler()
    freezes = Freezes()
    heap = HeapFreezer(refreeze_churn=3, freeze=freezes, collect=lambda generation: None)
    timings: list[FlushTiming] = []
    try:
        await k8s.put("pod.shop.web", encode_object(pod("web")))
        out_watch = intents.watch("out.")
        async with running(compiler, k8s, intents, status, heap) as service:
            service.flush_observer = timings.append
            await k8s.put("sync.pod", b"\x80")  # one marker of two: still not in sync
            await k8s.put("namespace.shop", encode_object(Namespace("shop")))
            await compiler.until_seen("upsert namespace shop")
            assert not service.synced.is_set()
            assert service.flushes == 0
            assert await intents.get("out.pod.web") is None

            await k8s.put("sync.namespace", b"\x80")
            await next_entry(out_watch, "out.pod.web")
            await service.synced.wait()
            # One watch over every kind (one consumer): input comes in revision order.
            assert compiler.seen == ["upsert pod web", "upsert namespace shop"]
            assert freezes.calls == 1  # the in-sync flush

            # Bad input: undecodable goes to the compiler, another kind's object under a pod key does not.
            caplog.set_level(logging.WARNING, logger="xpunet.runtime.compiler_service")
            await k8s.put("pod.shop.junk", b"\x01not msgpack")
            await k8s.put("pod.shop.odd", encode_object(Namespace("odd")))
            await k8s.put("pod.shop.bad", encode_object(pod("bad")), headers={WRITTEN_AT_HEADER: "1.5"})
            entry = await next_entry(out_watch, "out.pod.bad")
            assert entry.headers.get(WRITTEN_AT_HEADER) == "1.500000"
            report = await status.get("rejected.bad")  # written before the intent
            assert report is not None
            assert report.value == b"why"
            assert "undecodable pod junk" in compiler.seen
            assert not any("odd" in s for s in compiler.seen)
            assert any("pod.shop.odd" in r.getMessage() for r in caplog.records)

            await k8s.delete("pod.shop.web")
            entry = await next_entry(out_watch, "out.pod.web")
            assert entry.value is None
        await out_watch.aclose()
        assert compiler.flushed_count == service.flushes
        assert len(timings) == service.flushes
        for t in timings:
            assert t.first_change is not None
            assert t.first_change <= t.started <= t.compiled <= t.written
        assert freezes.calls >= 2  # 4 inputs since the first freeze cross refreeze_churn=3
    finally:
        for store in (k8s, intents, status):
            await bus.delete_kv(store.bucket)


async def test_a_sync_marker_never_overtakes_the_objects_written_before_it(bus: NatsBus) -> None:
    """The watcher writes a kind's objects, then its marker: the first flush must see all of them."""
    k8s, intents, status = [await bus.kv(unique_name("cs")) for _ in range(3)]
    compiler = RecordingCompiler()
    heap = HeapFreezer(freeze=Freezes(), collect=lambda generation: None)
    pods = 6000
    values = {f"pod.shop.p{i}": encode_object(pod(f"p{i}")) for i in range(pods)}
    try:
        await k8s.put("sync.namespace", b"\x80")
        await k8s.put_many(dict(list(values.items())[: pods // 2]))
        # The service starts while the rest is written (a watcher and a service starting together):
        # its pod watch has a snapshot to deliver, then live pods; the marker comes after all of them.
        async with running(compiler, k8s, intents, status, heap) as service:
            await k8s.put_many(dict(list(values.items())[pods // 2 :]))
            await k8s.put("sync.pod", b"\x80")
            await service.synced.wait()
        assert compiler.seen_at_flush[0] == pods
    finally:
        for store in (k8s, intents, status):
            await bus.delete_kv(store.bucket)
