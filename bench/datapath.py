"""Benchmark: P4Runtime Write throughput into softipu over gRPC, single-update latency, and the
datapath service programming a node from empty and acknowledging one intent change.

softipu runs as its own process (``xpunet-softipu``), the client in this one,
over loopback TCP, like a datapath and its target on one node.  For each batch
size the table is emptied (pipeline re-committed), then N prebuilt INSERTs are
written with ``P4RuntimeClient.write`` (batch = max_batch); entries/s counts
only the Write calls.  Latency: one MODIFY per Write, sequentially, p50/p99.

Node section: a real nats-server (embedded) holds S services x E endpoints
(Maglev tables of ``--table`` buckets, lb's size for 10 backends) and the
policy intents of ``--policies`` rules over 100 IP sets on 50 local pods; a
DatapathService (in this process) programs the softipu process from empty
(timed from the service start to the target's last ack), then one service's
backends change ``--changes`` times: intent KV write → target ack, p50/p99, and
the share of each change spent in ``P4RuntimeTarget.apply`` (encode, Writes, acks).

    .venv/bin/python bench/datapath.py            # full size
    .venv/bin/python bench/datapath.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from p4.v1 import p4runtime_pb2

from xpunet.datapath.p4rt_target import P4RuntimeTarget
from xpunet.datapath.target import ApplyResult
from xpunet.p4rt.client import ClientSettings, P4RuntimeClient
from xpunet.p4rt.p4info import parse_text
from xpunet.p4rt.schema import encode_uint
from xpunet.pipeline.diff import Update

BENCH_P4INFO = """
tables {
  preamble { id: 0x02000001 name: "bench.service" }
  match_fields { id: 1 name: "vip" bitwidth: 32 match_type: EXACT }
  match_fields { id: 2 name: "port" bitwidth: 16 match_type: EXACT }
  match_fields { id: 3 name: "proto" bitwidth: 8 match_type: EXACT }
  action_refs { id: 0x01000001 }
  size: 4000000
}
actions {
  preamble { id: 0x01000001 name: "bench.set_backend" }
  params { id: 1 name: "addr" bitwidth: 32 }
  params { id: 2 name: "port" bitwidth: 16 }
}
"""
TABLE = 0x02000001
ACTION = 0x01000001


def make_updates(
    count: int, kind: p4runtime_pb2.Update.Type, backend_port: int = 8080
) -> list[p4runtime_pb2.Update]:
    out = []
    for i in range(count):
        update = p4runtime_pb2.Update(type=kind)
        entry = update.entity.table_entry
        entry.table_id = TABLE
        entry.match.add(field_id=1).exact.value = encode_uint(0x0A600000 + i // 4)
        entry.match.add(field_id=2).exact.value = encode_uint(80 + i % 4)
        entry.match.add(field_id=3).exact.value = b"\x06"
        action = entry.action.action
        action.action_id = ACTION
        action.params.add(param_id=1, value=encode_uint(0x0A000000 + i))
        action.params.add(param_id=2, value=encode_uint(backend_port))
        out.append(update)
    return out


async def connect(port: int, election_id: int, batch: int) -> P4RuntimeClient:
    """A primary client; each phase takes over with a higher election id and its own batch size."""
    settings = ClientSettings(address=f"127.0.0.1:{port}", election_id=election_id, max_batch=batch)
    client = P4RuntimeClient(settings)
    await client.start()
    async with asyncio.timeout(30):
        await client.wait_primary()
    # An empty table for every phase.
    await client.set_pipeline(parse_text(BENCH_P4INFO), keep_state=False)
    return client


async def throughput(port: int, election_id: int, batch: int, count: int) -> float:
    client = await connect(port, election_id, batch)
    try:
        inserts = make_updates(count, p4runtime_pb2.Update.INSERT)
        start = time.perf_counter()
        await client.write(inserts)
        return count / (time.perf_counter() - start)
    finally:
        await client.close()


async def latency(port: int, election_id: int, samples: int) -> dict[str, float]:
    client = await connect(port, election_id, 1000)
    try:
        await client.write(make_updates(10_000, p4runtime_pb2.Update.INSERT))
        times = []
        for i in range(samples):
            change = make_updates(1, p4runtime_pb2.Update.MODIFY, backend_port=9000 + i % 1000)
            start = time.perf_counter()
            await client.write(change)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        await client.close()
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 3),
        "samples": samples,
    }


def bench_intents(services: int, endpoints: int, table: int, policies: int) -> dict[str, bytes]:
    """Intent KV values of one node: services (global) and policy endpoints + IP sets (node n1)."""
    from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort, service_key
    from xpunet.ir.policy import (
        IPSet,
        PolicyEndpoint,
        PolicyRule,
        PortRange,
        RuleOrigin,
        endpoint_key,
        ipset_key,
    )
    from xpunet.wire import encode_object

    out: dict[str, bytes] = {}
    for s in range(services):
        backends = tuple(
            Backend(f"10.{64 + s // 4096}.{(s // 16) % 256}.{(s % 16) * 16 + e}", 8080)
            for e in range(endpoints)
        )
        svc = LbServicePort(
            id=s + 1,
            namespace="bench",
            service=f"s{s}",
            family="ipv4",
            protocol="TCP",
            port=80,
            frontends=(Frontend("cluster_ip", f"10.{96 + s // 65536}.{(s // 256) % 256}.{s % 256}", 80),),
            internal=BackendSet(backends, tuple(i % endpoints for i in range(table))),
        )
        out[service_key("bench", f"s{s}", "TCP", 80, "ipv4")] = encode_object(svc)
    sets = 100
    for k in range(sets):
        members = tuple(f"10.200.{k}.{m}/32" for m in range(20))
        out[ipset_key("n1", f"set{k}")] = encode_object(IPSet(f"set{k}", members))
    pods = 50
    for p in range(pods):
        rules = tuple(
            PolicyRule(
                RuleOrigin("bench", f"pol{r}", "ingress", 0),
                f"set{r % sets}",
                (PortRange("TCP", 1000 + r, 1000 + r),),
            )
            for r in range(p, policies, pods)
        )
        ep = PolicyEndpoint(
            "bench", f"pod{p}", f"u{p}", "n1", (f"10.1.{p // 200}.{p % 200 + 2}",), True, False, rules
        )
        out[endpoint_key("n1", "bench", f"pod{p}")] = encode_object(ep)
    return out


async def node_from_empty(
    port: int, election_id: int, args: argparse.Namespace, softipu_pid: int
) -> dict[str, object]:
    from xpunet.bus.nats import connect as bus_connect
    from xpunet.datapath.intents import WRITTEN_AT_HEADER
    from xpunet.datapath.service import DatapathOptions, DatapathService
    from xpunet.embedded.nats import NatsServer
    from xpunet.wire import encode_object

    values = bench_intents(args.services, args.endpoints, args.table, args.policies)
    with NatsServer(name="bench-datapath") as nats:
        bus = await bus_connect([nats.url], name="bench", initial_timeout=10)
        try:
            intents = await bus.kv("xpunet-intent")
            k8s = await bus.kv("xpunet-k8s")
            status = await bus.kv("xpunet-status")
            await intents.put_many(values)
            ports = {f"bench/pod{p}": 100 + p for p in range(50)}
            settings = ClientSettings(address=f"127.0.0.1:{port}", election_id=election_id, max_batch=1000)
            target = TimedTarget(settings)
            service = DatapathService(
                node="n1",
                options=DatapathOptions(coalesce=0.0, status_interval=1.0),
                target=target,
                intents=intents,
                k8s=k8s,
                status=status,
                ports=ports,
            )
            stopping = asyncio.Event()
            start = time.perf_counter()
            cpu_start = time.process_time()
            softipu_cpu_start = cpu_seconds(str(softipu_pid))
            programming_pauses = gc_pauses()
            task = asyncio.create_task(service.run(stopping))
            await service.wait_converged()
            from_empty = time.perf_counter() - start
            gc.callbacks.remove(programming_pauses.callback)
            from_empty_cpu = {
                "bench_s": round(time.process_time() - cpu_start, 2),  # the datapath runs in this process
                "softipu_s": round(cpu_seconds(str(softipu_pid)) - softipu_cpu_start, 2),
                "last_pass_by_stage_s": {k: round(v, 2) for k, v in service.last_pass_cpu.items()},
            }
            rss_peak_programming = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            entries = len(service.reconciler.applied)
            rss_after_programming = {"bench_mb": rss_mb("self"), "softipu_mb": rss_mb(str(softipu_pid))}
            times: list[float] = []
            one_backend: list[float] = []
            # The P4Runtime write's share of each change: time inside target.apply until the ack.
            apply_all: list[float] = []
            apply_one: list[float] = []
            pauses = gc_pauses()
            for i in range(2 * args.changes):
                # First one backend of a service moves (a pod rescheduled: ~1/E of its buckets change),
                # then every backend of a service is replaced (every bucket changes).
                whole = i >= args.changes
                key, svc = changed_service(i, args, whole=whole)
                t0 = time.perf_counter()
                applies_before = len(target.apply_ms)
                rev = await intents.put(
                    key,
                    encode_object(svc),
                    headers={WRITTEN_AT_HEADER: repr(time.time())},
                )
                await service.wait_converged(rev)
                (times if whole else one_backend).append((time.perf_counter() - t0) * 1000)
                (apply_all if whole else apply_one).append(sum(target.apply_ms[applies_before:]))
            gc.callbacks.remove(pauses.callback)
            stopping.set()
            await task
        finally:
            await bus.drain()
    return {
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "maglev_table": args.table,
        "policy_rules": args.policies,
        "entries": entries,
        "from_empty_s": round(from_empty, 2),
        "from_empty_entries_per_s": round(entries / from_empty),
        "from_empty_cpu": from_empty_cpu,
        "rss_peak_bench_mb_programming": rss_peak_programming,
        "gc_during_programming": programming_pauses.report(),
        "one_change_ack": percentiles(one_backend),  # one backend of one service replaced
        "all_backends_change_ack": percentiles(times),  # every backend of one service replaced
        "one_change_target_apply": percentiles(apply_one),  # of which in P4RuntimeTarget.apply
        "all_backends_change_target_apply": percentiles(apply_all),
        "rss_after_programming": rss_after_programming,
        "gc_during_changes": pauses.report(),
        "rss_peak_bench_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


class TimedTarget(P4RuntimeTarget):
    """The P4Runtime target, recording how long each apply (encode, Writes, acks) took."""

    def __init__(self, settings: ClientSettings) -> None:
        super().__init__(settings)
        self.apply_ms: list[float] = []

    async def apply(self, phases: Sequence[Sequence[Update]]) -> ApplyResult:
        start = time.perf_counter()
        try:
            return await super().apply(phases)
        finally:
            self.apply_ms.append((time.perf_counter() - start) * 1000)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50/p99 in ms (nearest rank) of one change → target ack."""
    times = sorted(samples)
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[max(0, math.ceil(len(times) * 0.99) - 1)], 2),
        "max_ms": round(times[-1], 2),
        "samples": len(times),
    }


class _GcPauses:
    """Cyclic-GC pauses of the bench process (the datapath runs in it), per generation."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append((time.perf_counter() - self.started) * 1000)

    def report(self) -> dict[str, object]:
        return {
            f"gen{g}": {
                "count": len(p),
                "max_ms": round(max(p, default=0.0), 2),
                "total_ms": round(sum(p), 1),
            }
            for g, p in self.pauses.items()
        }


def gc_pauses() -> _GcPauses:
    pauses = _GcPauses()
    gc.callbacks.append(pauses.callback)
    return pauses


def rss_mb(pid: str) -> float:
    """Resident set size of a process (``self`` or a pid) in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_seconds(pid: str) -> float:
    """User + system CPU seconds of a process (``self`` or a pid), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def changed_service(i: int, args: argparse.Namespace, *, whole: bool) -> tuple[str, object]:
    """Change ``i``: one backend of service ``i % S`` moves, or (``whole``) all of its backends."""
    from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort, service_key

    s = i % args.services
    backends = tuple(
        Backend(
            f"10.250.{i // 256 % 256}.{i % 256 + e}"
            if whole or e == i % args.endpoints
            else f"10.{64 + s // 4096}.{(s // 16) % 256}.{(s % 16) * 16 + e}",
            8080,
        )
        for e in range(args.endpoints)
    )
    svc = LbServicePort(
        id=s + 1,
        namespace="bench",
        service=f"s{s}",
        family="ipv4",
        protocol="TCP",
        port=80,
        frontends=(Frontend("cluster_ip", f"10.{96 + s // 65536}.{(s // 256) % 256}.{s % 256}", 80),),
        internal=BackendSet(backends, tuple(b % args.endpoints for b in range(args.table))),
    )
    return service_key("bench", f"s{s}", "TCP", 80, "ipv4"), svc


def lowering_only(args: argparse.Namespace) -> dict[str, object]:
    """The datapath's own share, in process, no target: lowering from empty, then per change
    incremental lowering + plan + record (what one change costs the datapath before the write)."""
    from xpunet.datapath.reconcile import Reconciler
    from xpunet.datapath.target import ApplyResult, TargetEntries
    from xpunet.pipeline.incremental import NodeLowering
    from xpunet.pipeline.lowering import NodePorts
    from xpunet.wire import decode_object

    values = {
        k: decode_object(v)
        for k, v in bench_intents(args.services, args.endpoints, args.table, args.policies).items()
    }
    ports = NodePorts({f"bench/pod{p}": 100 + p for p in range(50)}, host=1, uplinks=(2,))
    rss_before = rss_mb("self")
    start = time.perf_counter()
    lowering = NodeLowering("n1", ports)
    for k, v in values.items():
        lowering.set_intent(k, v)
    lowering.flush()
    from_empty = time.perf_counter() - start
    reconciler = Reconciler()
    reconciler.reset(TargetEntries(tuple(lowering.desired.values())))  # as if read back
    del values
    gc.collect()
    rss = rss_mb("self")
    out: dict[str, object] = {
        "services": args.services,
        "entries": len(lowering.desired),
        "lowering_from_empty_s": round(from_empty, 2),
        "rss_mb": rss,
        "rss_per_entry_bytes": round((rss - rss_before) * 1024 * 1024 / max(1, len(lowering.desired))),
    }
    for whole in (False, True):
        times = []
        for i in range(args.changes):
            key, svc = changed_service(i, args, whole=whole)
            t0 = time.perf_counter()
            lowering.set_intent(key, svc)
            changed = lowering.flush()
            batch = reconciler.plan(lowering.desired, sweep=True, now=0.0, changed=changed)
            reconciler.record(batch, ApplyResult(len(batch)), now=0.0)
            times.append((time.perf_counter() - t0) * 1000)
        out["all_backends_change_cpu" if whole else "one_change_cpu"] = percentiles(times)
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    if args.lowering_only:
        return {"lowering_only": lowering_only(args)}
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("xpunet-softipu")),
            "--listen=127.0.0.1:0",
            f"--port-file={port_file}",
            "--log-level=WARNING",
            env=os.environ.copy(),
        )
        try:
            for _ in range(200):
                if port_file.exists() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            port = int(port_file.read_text())
            results: dict[str, object] = {}
            election_id = 1
            for batch, count in ((1, args.n1), (100, args.n100), (1000, args.n1000)):
                election_id += 1
                if args.skip_write:
                    continue
                results[f"write_entries_per_s_batch_{batch}"] = round(
                    await throughput(port, election_id, batch, count)
                )
                results[f"entries_batch_{batch}"] = count
            if not args.skip_write:
                results["single_update_ack"] = await latency(port, election_id + 1, args.samples)
            if args.services:
                results["node"] = await node_from_empty(port, election_id + 2, args, server.pid)
            return results
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in seconds")
    parser.add_argument("--n1", type=int, default=5_000, help="entries written with batch size 1")
    parser.add_argument("--n100", type=int, default=100_000, help="entries written with batch size 100")
    parser.add_argument("--n1000", type=int, default=500_000, help="entries written with batch size 1000")
    parser.add_argument("--samples", type=int, default=2_000, help="single-update latency samples")
    parser.add_argument("--services", type=int, default=1_000, help="node section: services (0 skips it)")
    parser.add_argument("--endpoints", type=int, default=10, help="node section: endpoints per service")
    parser.add_argument("--table", type=int, default=1009, help="node section: Maglev buckets per service")
    parser.add_argument("--policies", type=int, default=2_000, help="node section: policy rules")
    parser.add_argument("--changes", type=int, default=200, help="node section: timed single changes")
    parser.add_argument(
        "--skip-write", action="store_true", help="only the node section (no Write/latency runs)"
    )
    parser.add_argument(
        "--lowering-only",
        action="store_true",
        help="no target, no NATS: the datapath's lowering/plan CPU and RSS",
    )
    args = parser.parse_args()
    if args.quick:
        args.n1, args.n100, args.n1000, args.samples = 500, 5_000, 20_000, 200
        args.services, args.table, args.policies, args.changes = 100, 251, 200, 50
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
