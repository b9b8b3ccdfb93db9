"""Benchmark: P4Runtime Write throughput into softipu over gRPC, and single-update latency.

softipu runs as its own process (``xpunet-softipu``), the client in this one,
over loopback TCP, like a datapath and its target on one node.  For each batch
size the table is emptied (pipeline re-committed), then N prebuilt INSERTs are
written with ``P4RuntimeClient.write`` (batch = max_batch); entries/s counts
only the Write calls.  Latency: one MODIFY per Write, sequentially, p50/p99.

    .venv/bin/python bench/datapath.py            # full size
    .venv/bin/python bench/datapath.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from p4.v1 import p4runtime_pb2

from xpunet.p4rt.client import ClientSettings, P4RuntimeClient
from xpunet.p4rt.p4info import parse_text
from xpunet.p4rt.schema import encode_uint

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


async def run(args: argparse.Namespace) -> dict[str, object]:
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
                results[f"write_entries_per_s_batch_{batch}"] = round(
                    await throughput(port, election_id, batch, count)
                )
                results[f"entries_batch_{batch}"] = count
            results["single_update_ack"] = await latency(port, election_id + 1, args.samples)
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
    args = parser.parse_args()
    if args.quick:
        args.n1, args.n100, args.n1000, args.samples = 500, 5_000, 20_000, 200
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
