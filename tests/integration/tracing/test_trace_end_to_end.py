"""One Kubernetes change is one trace: watcher → policy/lb → datapath → target write, exported over OTLP.

The watcher (manifest directory source), policy and lb run through the ctl
stack on its embedded nats-server; one datapath (softipu target over real
gRPC, pods given vNIC ports) runs beside them on the same bus.  All export over
OTLP/gRPC to a real receiver (xpunet.testing.otlp).
A NetworkPolicy (then a Service with its EndpointSlice) is added to the
manifest directory once everything is in sync; the spans that come back must
form one trace with the right parents:

    watcher.kv_write (xpunet-watcher, key of the object)
      └ policy.compile / lb.compile (xpunet-policy / xpunet-lb)
          └ datapath.apply (xpunet-datapath)
              └ datapath.target_write
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from opentelemetry import trace

from xpunet.bus.api import BUCKET_INTENT, BUCKET_K8S, BUCKET_STATUS, StateStore
from xpunet.bus.nats import NatsBus, connect
from xpunet.bus.tracing import WRITTEN_AT_HEADER, context_from_headers, parse_written_at
from xpunet.ctl.stack import Stack, StackOptions
from xpunet.datapath.service import DatapathOptions, DatapathService, build_target
from xpunet.ir.policy import endpoint_key
from xpunet.runtime.settings import TelemetrySettings
from xpunet.runtime.telemetry import Telemetry, setup_telemetry
from xpunet.testing.otlp import OtlpReceiver, ReceivedSpan

WITHIN = 60.0  # generous bound on a 2-core CI machine; a hang fails instead of blocking
PORTS = {"shop/web-1": 10, "shop/client": 11}  # vNIC ports of the pods on node-1

BASE = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: shop}}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24]}
status:
  addresses: [{type: InternalIP, address: 192.0.2.1}]
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: web-1, uid: u-web-1, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}],
         conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: client, uid: u-client, labels: {app: client}}
spec:
  nodeName: node-1
  containers: [{name: client}]
status: {phase: Running, podIP: 10.244.1.11, podIPs: [{ip: 10.244.1.11}],
         conditions: [{type: Ready, status: "True"}]}
"""

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: web-from-client}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: http}]
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {namespace: shop, name: web, uid: u-svc-web}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: shop
  name: web-abcde
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
  - addresses: [10.244.1.10]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-1
    targetRef: {kind: Pod, namespace: shop, name: web-1}
ports: [{name: http, port: 8080, protocol: TCP}]
"""


@dataclass(slots=True)
class System:
    stack: Stack
    datapath: DatapathService
    datapath_task: asyncio.Task[None]
    datapath_stopping: asyncio.Event
    datapath_bus: NatsBus
    datapath_bus_intents: StateStore
    datapath_telemetry: Telemetry
    stopped: bool = False

    async def stop(self) -> None:
        """Stop everything; telemetry is flushed (spans and a last metric export reach the receiver)."""
        if self.stopped:
            return
        self.stopped = True
        self.datapath_stopping.set()
        try:
            await self.datapath_task
        finally:
            await self.datapath_bus.drain()
            await self.stack.stop()
            await asyncio.to_thread(self.datapath_telemetry.shutdown)


@pytest.fixture
async def system(
    tmp_path: Path, otlp: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[System]:
    # Spans leave each service within milliseconds, so the test waits on what arrives, not on a timer.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}
    (tmp_path / "base.yaml").write_text(BASE)
    stack = Stack(
        StackOptions(
            services=("watcher", "policy", "lb"),
            manifests=tmp_path,
            environ=environ,
            assignments=("watcher.poll_interval=0.05",),
        )
    )
    # The datapath is built here rather than by the stack: its pods need vNIC ports, which only the
    # attach server hands out, and the stack's datapath does not serve attachment (yet).
    telemetry = setup_telemetry("xpunet-datapath", TelemetrySettings(), environ)
    await stack.start()
    bus = await connect(stack.nats_urls, name="xpunet-datapath.node-1")
    options = DatapathOptions(target="softipu")
    intents = await bus.kv(BUCKET_INTENT)
    datapath = DatapathService(
        node="node-1",
        options=options,
        target=build_target(options),
        intents=intents,
        k8s=await bus.kv(BUCKET_K8S),
        status=await bus.kv(BUCKET_STATUS),
        tracer=telemetry.tracer("xpunet.datapath"),
        meter=telemetry.meter("xpunet.datapath"),
        ports=PORTS,
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(datapath.run(stopping), name="datapath.node-1")
    system = System(stack, datapath, running, stopping, bus, intents, telemetry)
    try:
        async with asyncio.timeout(WITHIN):
            assert await stack.wait_ready()
            await datapath.wait_converged()
        yield system
    finally:
        await system.stop()


def _one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, f"expected one {what}, got {spans}"
    return spans[0]


def _chain_below(
    receiver: OtlpReceiver, start: ReceivedSpan, compile_name: str
) -> tuple[ReceivedSpan, ReceivedSpan, ReceivedSpan] | None:
    """compile → datapath.apply → datapath.target_write under ``start``'s compile span, once all arrived."""
    spans = receiver.spans
    compiles = [
        s
        for s in spans
        if s.name == compile_name
        and (s.parent_span_id == start.span_id or (start.trace_id, start.span_id) in s.links)
    ]
    for compiled in compiles:
        applies = [s for s in spans if s.name == "datapath.apply" and s.parent_span_id == compiled.span_id]
        for applied in applies:
            writes = [
                s for s in spans if s.name == "datapath.target_write" and s.parent_span_id == applied.span_id
            ]
            if writes:
                return compiled, applied, writes[0]
    return None


def _watcher_write(key: str) -> Callable[[OtlpReceiver], ReceivedSpan | None]:
    def found(receiver: OtlpReceiver) -> ReceivedSpan | None:
        spans = [
            s
            for s in receiver.spans
            if s.name == "watcher.kv_write" and s.attributes.get("xpunet.kv.key") == key
        ]
        return spans[-1] if spans else None

    return found


async def test_a_network_policy_is_one_trace_from_watcher_to_target_write(
    system: System, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    async with asyncio.timeout(WITHIN):
        written = await otlp.wait_for(_watcher_write("networkpolicy.shop.web-from-client"))
        compiled, applied, target_write = await otlp.wait_for(
            lambda r: _chain_below(r, written, "policy.compile")
        )

    assert written.service == "xpunet-watcher"
    assert written.attributes["k8s.kind"] == "networkpolicy"
    assert written.parent_span_id == ""  # the change starts the trace

    assert compiled.service == "xpunet-policy"
    assert compiled.trace_id == written.trace_id
    assert compiled.parent_span_id == written.span_id  # a change alone in its flush is the parent
    assert compiled.attributes["k8s.kind"] == "networkpolicy"
    assert compiled.attributes["k8s.namespace"] == "shop"
    assert compiled.attributes["k8s.name"] == "web-from-client"
    assert isinstance(compiled.attributes["xpunet.intent.keys"], int)
    assert compiled.attributes["xpunet.intent.keys"] >= 1

    assert applied.service == "xpunet-datapath"
    assert applied.trace_id == written.trace_id
    assert applied.attributes["xpunet.node"] == "node-1"
    assert target_write.trace_id == written.trace_id
    assert target_write.service == "xpunet-datapath"

    # The intent as stored in KV: the compile span's context and the change's time in its headers.
    entry = await system.datapath_bus_intents.get(endpoint_key("node-1", "shop", "web-1"))
    assert entry is not None
    carried = trace.get_current_span(context_from_headers(entry.headers)).get_span_context()
    assert format(carried.span_id, "016x") == compiled.span_id
    stamped = parse_written_at(entry.headers.get(WRITTEN_AT_HEADER))
    assert stamped is not None
    assert stamped <= time.time()

    # Convergence (event → target ack) and the compile step are measured and exported too.
    await system.stop()
    assert otlp.histogram_counts.get("xpunet_datapath_convergence_seconds", 0) >= 1
    assert otlp.histogram_counts.get("xpunet_policy_change_to_intent_seconds", 0) >= 1


async def test_a_service_and_its_endpoint_slice_reach_the_target_in_their_traces(
    system: System, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "service.yaml").write_text(SERVICE)
    async with asyncio.timeout(WITHIN):
        service_write = await otlp.wait_for(_watcher_write("service.shop.web"))
        slice_write = await otlp.wait_for(_watcher_write("endpointslice.shop.web-abcde"))
        # Both changes reach an lb.compile span: as its parent or, coalesced into one flush, a link.
        compiled_service = await otlp.wait_for(lambda r: _compile_of(r, service_write, "lb.compile"))
        compiled_slice = await otlp.wait_for(lambda r: _compile_of(r, slice_write, "lb.compile"))
        # Coalesced or not, a flush these changes caused programs the target in the same trace.
        compiled, applied, target_write = await otlp.wait_for(
            lambda r: (
                _chain_below(r, slice_write, "lb.compile") or _chain_below(r, service_write, "lb.compile")
            )
        )

    assert compiled_service.service == compiled_slice.service == "xpunet-lb"
    for compiled_span, written in ((compiled_service, service_write), (compiled_slice, slice_write)):
        if compiled_span.parent_span_id == written.span_id:
            assert compiled_span.trace_id == written.trace_id
        else:
            assert (written.trace_id, written.span_id) in compiled_span.links
    assert compiled.trace_id == applied.trace_id == target_write.trace_id
    assert applied.service == "xpunet-datapath"
    assert compiled.attributes["k8s.namespace"] == "shop"
    assert compiled.attributes["k8s.kind"] in ("service", "endpointslice")


def _compile_of(receiver: OtlpReceiver, written: ReceivedSpan, name: str) -> ReceivedSpan | None:
    for s in receiver.spans:
        if s.name == name and (
            s.parent_span_id == written.span_id or (written.trace_id, written.span_id) in s.links
        ):
            return s
    return None
