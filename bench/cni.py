"""Benchmark of pod attachment: ADD+DEL cycles through the real `xpunet-cni` binary on veth pods.

Needs root.  An AttachServer (veth back-end, stocked pool) runs in this
process with its host sides in a private network namespace; each cycle execs
the plugin for ADD into a fresh pod namespace, then DEL, exactly as a
runtime would (CNI_* env, config on stdin).  Two modes: ``direct`` (the
exec'ed binary runs the verb itself: imports grpc and pyroute2) and
``agent`` (it forwards to the resident agent the AttachServer runs).
Reported per mode, as p50/p99 in ms:

* ``add_ms``/``del_ms``: wall time of the plugin process, exec to exit;
* ``server_attach_ms``: the Attach handler inside the datapath (pool take,
  IPAM, host routes, state write);
* ``exec_floor_ms``: `xpunet-cni` VERSION, i.e. interpreter start and the
  plugin's imports without any work: the floor under every ADD.

Pod namespaces are made before the clock starts and removed afterwards.

Usage: ``.venv/bin/python bench/cni.py [--sequential 100] [--concurrent 20] [--mode both] [--quick]``
(``--mode agent|direct|both``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from xpunet.datapath.attach.core import AttachmentRecord, PodRef
from xpunet.datapath.attach.server import AttachServer
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.cni.runtime import drop_ns, make_ns, netconf, run_plugin

# This process forks plugin processes while gRPC's server threads run; fork handlers are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

TARGET_ADD_P99_MS = 100.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 1)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "mean": round(statistics.fmean(values), 1)}


async def timed(work: Awaitable[Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await work
    return result, (time.perf_counter() - start) * 1000


async def cycle(host: str, conf: dict[str, Any], cid: str, pod: str) -> tuple[float, float]:
    add, add_ms = await timed(run_plugin(host, "ADD", conf, container_id=cid, netns_name=pod))
    if add.rc != 0:
        raise RuntimeError(f"ADD {cid} failed: {add.out} {add.stderr}")
    delete, del_ms = await timed(run_plugin(host, "DEL", conf, container_id=cid, netns_name=pod))
    if delete.rc != 0:
        raise RuntimeError(f"DEL {cid} failed: {delete.out} {delete.stderr}")
    return add_ms, del_ms


def instrument(server: AttachServer, samples: list[float]) -> None:
    """Time the Attach handler in the datapath (wraps the bound method on this instance only)."""
    original: Callable[[PodRef, str], Awaitable[AttachmentRecord]] = server.attacher.attach

    async def attach(pod: PodRef, network: str) -> AttachmentRecord:
        start = time.perf_counter()
        try:
            return await original(pod, network)
        finally:
            samples.append((time.perf_counter() - start) * 1000)

    server.attacher.attach = attach  # type: ignore[method-assign]  # benchmark instrumentation


async def measure(
    server: AttachServer,
    server_ms: list[float],
    host: str,
    conf: dict[str, Any],
    pods: list[str],
    args: argparse.Namespace,
    tag: str,
) -> dict[str, Any]:
    server_ms.clear()
    seq_add: list[float] = []
    seq_del: list[float] = []
    for n in range(args.sequential):
        await server.attacher.pool.wait_stocked()  # "with a stocked pool"
        add_ms, del_ms = await cycle(host, conf, f"{tag}s{n:04d}", pods[n])
        seq_add.append(add_ms)
        seq_del.append(del_ms)
    seq_server = list(server_ms)

    await server.attacher.pool.wait_stocked()
    server_ms.clear()
    start = time.perf_counter()
    results = await asyncio.gather(
        *(cycle(host, conf, f"{tag}c{n:04d}", pods[args.sequential + n]) for n in range(args.concurrent))
    )
    wall = time.perf_counter() - start
    return {
        "sequential": {
            "cycles": args.sequential,
            "add_ms": summary(seq_add),
            "del_ms": summary(seq_del),
            "server_attach_ms": summary(seq_server),
        },
        "concurrent": {
            "cycles": args.concurrent,
            "add_ms": summary([a for a, _ in results]),
            "del_ms": summary([d for _, d in results]),
            "server_attach_ms": summary(server_ms),
            "wall_s": round(wall, 2),
        },
        "target_met_sequential": pct(seq_add, 0.99) <= TARGET_ADD_P99_MS,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = make_ns("xpb-host")
    pods: list[str] = []
    out: dict[str, Any] = {"bench": "cni", "machine": f"{os.cpu_count()} cores"}
    modes = ["agent", "direct"] if args.mode == "both" else [args.mode]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = AttachSettings(
                pod_cidrs=("10.250.0.0/16", "fd00:250::/64"),
                socket_path=str(Path(tmp) / "infra.sock"),
                state_path=str(Path(tmp) / "state.json"),
                host_netns=host,
                pool_size=args.concurrent + 8,
                low_water=args.concurrent // 2,
                cni_agent_socket=str(Path(tmp) / "agent.sock"),
            )
            server = AttachServer(settings)
            await server.start()
            server_ms: list[float] = []
            instrument(server, server_ms)
            try:
                floor: list[float] = []
                for _ in range(args.floor):
                    _, ms = await timed(run_plugin("", "VERSION", {"cniVersion": "1.1.0"}, ifname=""))
                    floor.append(ms)
                out["exec_floor_ms"] = summary(floor)
                for mode in modes:
                    pods = [make_ns("xpb-pod") for _ in range(args.sequential + args.concurrent)]
                    agent = settings.cni_agent_socket if mode == "agent" else ""
                    conf = netconf(settings.socket_path, agent_socket=agent)
                    out[mode] = await measure(server, server_ms, host, conf, pods, args, mode[0])
                    for name in pods:
                        drop_ns(name)
                    pods = []
                out["leaked_attachments_after"] = len(server.attacher.list()) + len(
                    server.attacher.ipam.leases()
                )
            finally:
                await server.stop(grace=0)
    finally:
        for name in pods:
            drop_ns(name)
        drop_ns(host)
    out["target_add_p99_ms"] = TARGET_ADD_P99_MS
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--floor", type=int, default=20, help="VERSION runs for the exec floor")
    parser.add_argument("--mode", choices=["agent", "direct", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="10 sequential, 5 concurrent (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.sequential, args.concurrent, args.floor = 10, 5, 5
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (network namespaces)")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
