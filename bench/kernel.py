"""Benchmark: the kernel target programming services into a node namespace (needs root).

For each size (services x 10 endpoints each, one TCP ClusterIP port): a fresh
node namespace with a client pod and a web pod on veth pairs; the entries come
from the pipeline's lowering of lb intents; then

* **from empty**: ``KernelTarget.apply`` of every entry (render + one nft
  transaction + routes), wall clock and CPU time of the process (nft runs
  in-process), with the render and encode parts alone beside it and the
  datapath's diff from empty timed separately;
* **one endpoint change**: one service's backend set loses one endpoint and
  gains another; the entries of that service are re-lowered and diffed, and
  the ``apply`` (render of the touched frontend + one nft transaction) timed,
  p50/p99 over ``--changes`` changes;
* **connect latency**: TCP connects from the client pod to a service VIP whose
  only backend is the web pod (and to the web pod directly), p50/p99 over
  ``--connects`` connects, measured inside the client namespace.

The Maglev tables are built with 11 buckets (the smallest prime ≥ 10
backends) instead of the lb's ~1,009: the kernel target keeps one element per
distinct backend whatever the bucket count (see docs/kernel-target.md), so
only the lowering in front of it would grow, not the kernel's work.

    .venv/bin/python bench/kernel.py              # 100, 1,000, 10,000 services
    .venv/bin/python bench/kernel.py --quick      # 100 and 1,000, fewer samples
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time

from xpunet.datapath.kernel.codec import script
from xpunet.datapath.kernel.nft import BackendName
from xpunet.datapath.kernel.render import KernelState
from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.kernel.testbed import Topology, in_ns
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort
from xpunet.ir.policy import PolicyEndpoint
from xpunet.lb.maglev import build_table
from xpunet.pipeline.diff import diff
from xpunet.pipeline.entries import TableEntry
from xpunet.pipeline.lowering import NodeIntents, NodePorts, lower

ENDPOINTS = 10
BUCKETS = 11
CLIENT = ("10.0.1.2", "fd00:1::2")
WEB = ("10.0.1.3", "fd00:1::3")
PORTS = NodePorts({"d/client": 11, "d/web": 12}, host=1)

CONNECT = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket(); s.settimeout(5)
    t = time.perf_counter(); s.connect((host, port)); out.append(time.perf_counter() - t)
    s.recv(100); s.close()
print(json.dumps(out))
"""


def vip(i: int) -> str:
    return f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}"


def backend_set(addrs: list[str]) -> BackendSet:
    bs = tuple(Backend(a, 8080) for a in sorted(addrs))
    return BackendSet(bs, build_table([b.identity for b in bs], size=BUCKETS))


def service(i: int, addrs: list[str]) -> LbServicePort:
    return LbServicePort(
        i + 1,
        "bench",
        f"s{i}",
        "ipv4",
        "TCP",
        80,
        frontends=(Frontend("cluster_ip", vip(i), 80),),
        internal=backend_set(addrs),
    )


def fake_backends(i: int, shift: int = 0) -> list[str]:
    """Ten addresses for service ``i``; ``shift`` slides the window by one (one endpoint out, one in)."""
    out = []
    for k in range(ENDPOINTS):
        n = i * 16 + k + shift  # 16 > 10 endpoints + the few shifts a run makes
        out.append(f"10.{200 + n // 65536}.{n // 256 % 256}.{n % 256}")
    return out


def lowered(services: list[LbServicePort], *, pods: bool = True) -> tuple[TableEntry, ...]:
    eps = (
        (
            PolicyEndpoint("d", "client", "u1", "n1", CLIENT),
            PolicyEndpoint("d", "web", "u2", "n1", WEB),
        )
        if pods
        else ()
    )
    low = lower(NodeIntents("n1", eps, (), tuple(services)), PORTS)
    if low.problems:
        raise SystemExit(f"lowering problems: {low.problems[:3]}")
    return low.entries


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def connects(topo: Topology, host: str, n: int) -> list[float]:
    port = "8080" if host == WEB[0] else "80"
    out = in_ns(topo.pods["client"].ns, sys.executable, "-c", CONNECT, host, port, str(n))
    result: list[float] = json.loads(out.stdout)
    return result


async def one_size(n: int, changes: int, n_connects: int, backend: BackendName | None) -> dict[str, object]:
    # Service 0 is the measured one: its only backend is the real web pod.
    services = [service(0, [WEB[0]])] + [service(i, fake_backends(i)) for i in range(1, n)]
    t0 = time.perf_counter()
    entries = lowered(services)
    lower_s = time.perf_counter() - t0
    topo = Topology()
    try:
        topo.create_node()
        topo.add_pod("client", 11, *CLIENT)
        topo.add_pod("web", 12, *WEB)
        topo.serve("web", "tcp/8080")
        kt = KernelTarget(netns=topo.node, port_names={11: "xv11", 12: "xv12"}, nft_backend=backend)
        await kt.start()
        # The Python parts alone, on a scratch copy of the state (same transaction as the real run).
        # The garbage collector is off as in KernelTarget.apply.
        scratch = KernelState({11: "xv11", 12: "xv12"})
        gc.collect()
        gc.disable()
        t0 = time.perf_counter()
        delta = scratch.update(diff((), entries).updates)
        render_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = script(delta)
        encode_s = time.perf_counter() - t0
        gc.enable()
        del scratch, text
        gc.collect()
        # The diff (the datapath's work, xpunet.pipeline.diff) is timed on its own.
        t0 = time.perf_counter()
        batch = diff((), entries)
        diff_s = time.perf_counter() - t0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        result = await kt.apply(batch)
        program_s = time.perf_counter() - t0
        program_cpu_s = time.process_time() - cpu0  # this process, both threads (nft runs in-process)
        if result.problems or result.route_errors:
            raise SystemExit(f"apply problems: {result.problems[:3]} {result.route_errors[:3]}")
        # One endpoint change at a time on rotating services.
        lat: list[float] = []
        for c in range(changes):
            i = 1 + c % max(1, n - 1)
            old = [service(i, fake_backends(i, shift=c // max(1, n - 1)))]
            new = [service(i, fake_backends(i, shift=c // max(1, n - 1) + 1))]
            batch = diff(lowered(old, pods=False), lowered(new, pods=False))
            t0 = time.perf_counter()
            await kt.apply(batch)
            lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        await kt.drop_counters()
        counters_s = time.perf_counter() - t0
        connects(topo, vip(0), 20)  # warm up neighbours and the path
        via_service = connects(topo, vip(0), n_connects)
        direct = connects(topo, WEB[0], n_connects)
        await kt.close()
    finally:
        topo.close()
    return {
        "services": n,
        "endpoints_per_service": ENDPOINTS,
        "entries": len(entries),
        "kernel_items": len(delta),
        "lowering_s": round(lower_s, 3),
        "render_s": round(render_s, 3),
        "encode_s": round(encode_s, 3),
        "diff_s": round(diff_s, 3),
        "program_from_empty_s": round(program_s, 3),
        "program_from_empty_cpu_s": round(program_cpu_s, 3),
        "change_applied_p50_ms": round(pct(lat, 50) * 1e3, 2),
        "change_applied_p99_ms": round(pct(lat, 99) * 1e3, 2),
        "read_counters_ms": round(counters_s * 1e3, 2),
        "connect_service_p50_us": round(pct(via_service, 50) * 1e6, 1),
        "connect_service_p99_us": round(pct(via_service, 99) * 1e6, 1),
        "connect_direct_p50_us": round(pct(direct, 50) * 1e6, 1),
        "connect_direct_p99_us": round(pct(direct, 99) * 1e6, 1),
        "connect_service_mean_us": round(statistics.fmean(via_service) * 1e6, 1),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="100 and 1,000 services, fewer samples")
    ap.add_argument("--sizes", default="", help="comma-separated service counts (default 100,1000,10000)")
    ap.add_argument("--changes", type=int, default=0)
    ap.add_argument("--connects", type=int, default=0)
    ap.add_argument(
        "--nft", choices=["lib", "process"], default=None, help="nft backend (default: lib if present)"
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/kernel.py needs root (network namespaces and nftables)")
    default = [100, 1000] if args.quick else [100, 1000, 10000]
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else default
    changes = args.changes or (20 if args.quick else 200)
    n_connects = args.connects or (100 if args.quick else 1000)
    load_before = os.getloadavg()
    results = [await one_size(n, changes, n_connects, args.nft) for n in sizes]
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    print(
        json.dumps(
            {"bench": "kernel", "nft": args.nft or "auto", "load_average": load, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
