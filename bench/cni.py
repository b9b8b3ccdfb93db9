"""Benchmark of pod attachment: ADD+DEL cycles through the real `xpunet-cni` binary on veth pods.

Needs root.  The datapath side (an AttachServer with the resident CNI agent,
veth back-end, host sides in a private "node" network namespace) runs in a
child process, as the datapath does on a node; this process is the container
runtime: it enters the node namespace once and execs the plugin directly for
each verb (CNI_* env, config on stdin, a fresh pod network namespace per
cycle), as containerd does (`--wrap` puts `ip netns exec` around every exec
instead, like the first version of this benchmark).  The plugin is the C shim
(`.venv/bin/xpunet-cni-shim`, `make cni-shim`) when built, else the Python
console script.

Plugin modes: ``agent`` (the binary forwards to the resident agent) and
``direct`` (the binary runs the verb itself: a Python process importing grpc
and pyroute2).  Pool modes: ``in-pod`` (`pool_size` 0: each veth is made at
Attach with its pod side directly in the pod's namespace) and ``stock`` (a
stocked pool, `wait_stocked()` before each sequential cycle: the plugin moves
the stocked pod side into the pod, which the kernel does under its RTNL lock
with an RCU barrier, ~16 ms each here).

Reported per combination (p50/p99/mean in ms): ``add_ms``/``del_ms``, wall
time of the plugin process from exec to exit; ``server_attach_ms``, the
Attach handler in the datapath; ``datapath_cpu_ms_per_cycle`` (the datapath
process: agent, Attach/Detach, netlink, state writes) and
``plugin_cpu_ms_per_cycle`` (the exec'ed processes); load averages.

Usage: ``.venv/bin/python bench/cni.py [--sequential 100] [--concurrent 20] [--mode agent|direct|both]
[--pool in-pod|stock|both] [--wrap] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpunet.datapath.cni.runtime import CNI_BIN, drop_ns, make_ns, netconf

TARGET_ADD_P99_MS = 100.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 1)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "mean": round(statistics.fmean(values), 1)}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the datapath process --------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """The child: an AttachServer with the agent; answers `stocked`, `reset`, `stats`, `stop` on stdin."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from xpunet.datapath.attach.core import AttachmentRecord, PodRef
    from xpunet.datapath.attach.server import AttachServer
    from xpunet.datapath.attach.settings import AttachSettings

    settings = AttachSettings(
        pod_cidrs=("10.250.0.0/16", "fd00:250::/64"),
        socket_path=f"{args.dir}/infra.sock",
        state_path=f"{args.dir}/state.json",
        host_netns=args.host,
        pool_size=args.pool_size,
        low_water=args.low_water,
        cni_agent_socket=f"{args.dir}/agent.sock",
    )
    server = AttachServer(settings)
    await server.start()
    samples: list[float] = []
    original = server.attacher.attach

    async def attach(pod: PodRef, network: str) -> AttachmentRecord:
        start = time.perf_counter()
        try:
            return await original(pod, network)
        finally:
            samples.append((time.perf_counter() - start) * 1000)

    server.attacher.attach = attach  # type: ignore[method-assign]  # benchmark instrumentation
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(obj: Any) -> None:
        print(json.dumps(obj), flush=True)

    say({"ready": True})
    try:
        while line := (await reader.readline()).decode().strip():
            if line == "stocked":
                await server.attacher.pool.wait_stocked()
                say({"ok": True})
            elif line == "reset":
                samples.clear()
                say({"ok": True})
            elif line == "stats":
                say(
                    {
                        "attach_ms": samples,
                        "cpu_s": time.process_time(),
                        "writes": server.attacher.commits.writes,
                    }
                )
            elif line == "stop":
                break
        leaked = len(server.attacher.list()) + len(server.attacher.ipam.leases())
    finally:
        await server.stop(grace=0)
    say({"leaked": leaked})


class Datapath:
    """The parent's handle on the datapath child (line-based commands on its stdin)."""

    def __init__(self, host: str, tmp: str, pool_size: int, low_water: int) -> None:
        argv = [sys.executable, __file__, "--serve", "--host", host, "--dir", tmp]
        argv += ["--pool-size", str(pool_size), "--low-water", str(low_water)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the datapath process exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def stop(self) -> int:
        leaked = int(self.ask("stop")["leaked"])
        self.proc.wait(timeout=60)
        return leaked


# -- the runtime side --------------------------------------------------------------------------


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _memfd(data: bytes = b"") -> int:
    fd = os.memfd_create("cni-bench", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass(slots=True)
class Exec:
    """One plugin process: its cycle, verb, start time and captured output."""

    cycle: int
    verb: str
    pid: int
    pidfd: int
    out: int
    err: int
    start: float


class Runtime:
    """Execs plugin processes like a container runtime: each with its CNI_* environment and its
    config already on stdin (a memfd: it never waits for us), and reaps them as they exit.

    The timestamps are taken when the kernel reports the exit (pidfds in one poll loop that does
    nothing else), so what is measured is the plugin process from exec to exit; the next verb of
    a cycle is exec'ed right there.  Used from one thread, without an event loop."""

    def __init__(self, conf: dict[str, Any], plugin: Path, *, wrap_netns: str = "") -> None:
        self.stdin = json.dumps(conf).encode()
        self.plugin = plugin
        self.prefix = (
            [shutil.which("ip") or "/usr/sbin/ip", "netns", "exec", wrap_netns] if wrap_netns else []
        )
        self.poller = select.poll()
        self.running: dict[int, Exec] = {}

    def spawn(self, cycle: int, verb: str, cid: str, pod: str) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": verb}
        env["CNI_PATH"] = f"/usr/lib/cni:{self.plugin.parent}"
        if cid:
            env["CNI_CONTAINERID"] = cid
            env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{cid}"
            env["CNI_NETNS"] = f"/run/netns/{pod}"
            env["CNI_IFNAME"] = "eth0"
        stdin, out, err = _memfd(self.stdin), _memfd(), _memfd()
        argv = [*self.prefix, str(self.plugin)]
        start = time.perf_counter()
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
        )
        os.close(stdin)
        pidfd = os.pidfd_open(pid)
        self.poller.register(pidfd, select.POLLIN)
        self.running[pidfd] = Exec(cycle, verb, pid, pidfd, out, err, start)

    def reap(self) -> list[tuple[Exec, float]]:
        """Wait for exits: (process, milliseconds from exec to exit) of each that ended."""
        done = []
        for fd, _ in self.poller.poll():
            now = time.perf_counter()
            ex = self.running.pop(fd)
            self.poller.unregister(fd)
            _, status = os.waitpid(ex.pid, 0)
            os.close(fd)
            code = os.waitstatus_to_exitcode(status)
            out, err = os.pread(ex.out, 1 << 20, 0), os.pread(ex.err, 1 << 20, 0)
            os.close(ex.out)
            os.close(ex.err)
            if code != 0:
                raise RuntimeError(f"{ex.verb} of cycle {ex.cycle} failed ({code}): {out!r} {err!r}")
            done.append((ex, (now - ex.start) * 1000))
        return done

    def cycles(
        self, pods: list[str], tag: str, *, at_once: int, before: Callable[[], object]
    ) -> list[tuple[float, float]]:
        """ADD then DEL per pod, `at_once` cycles running at a time; (ADD ms, DEL ms) per cycle."""
        times: dict[int, list[float]] = {}
        queue = list(range(len(pods)))
        while queue or self.running:
            while queue and len({ex.cycle for ex in self.running.values()}) < at_once:
                n = queue.pop(0)
                before()
                self.spawn(n, "ADD", f"{tag}{n:04d}", pods[n])
            for ex, ms in self.reap():
                times.setdefault(ex.cycle, []).append(ms)
                if ex.verb == "ADD":
                    self.spawn(ex.cycle, "DEL", f"{tag}{ex.cycle:04d}", pods[ex.cycle])
        return [(times[n][0], times[n][1]) for n in range(len(pods))]


def phase(dp: Datapath, rt: Runtime, pods: list[str], tag: str, *, concurrent: bool) -> dict[str, Any]:
    dp.ask("stocked")
    dp.ask("reset")
    before = dp.ask("stats")["cpu_s"], children_cpu_s(), loadavg()
    start = time.perf_counter()
    if concurrent:
        results = rt.cycles(pods, tag, at_once=len(pods), before=lambda: None)
    else:
        results = rt.cycles(pods, tag, at_once=1, before=lambda: dp.ask("stocked"))  # "with a stocked pool"
    wall = time.perf_counter() - start
    stats = dp.ask("stats")
    n = len(pods)
    return {
        "cycles": n,
        "add_ms": summary([a for a, _ in results]),
        "del_ms": summary([d for _, d in results]),
        "server_attach_ms": summary(stats["attach_ms"]),
        "datapath_cpu_ms_per_cycle": round((stats["cpu_s"] - before[0]) * 1000 / n, 1),
        "plugin_cpu_ms_per_cycle": round((children_cpu_s() - before[1]) * 1000 / n, 1),
        "wall_s": round(wall, 2),
        "loadavg_before_after": [before[2], loadavg()],
    }


def combination(args: argparse.Namespace, host: str, mode: str, pool: str, tmp: str) -> dict[str, Any]:
    stock = pool == "stock"
    dp = Datapath(host, tmp, args.concurrent + 8 if stock else 0, args.concurrent // 2 if stock else 0)
    pods = [make_ns("xpb-pod") for _ in range(args.sequential + args.concurrent)]
    out: dict[str, Any] = {}
    try:
        conf = netconf(f"{tmp}/infra.sock", agent_socket=f"{tmp}/agent.sock" if mode == "agent" else "")
        rt = Runtime(conf, CNI_BIN, wrap_netns=host if args.wrap else "")
        tag = f"{mode[0]}{pool[0]}"
        out["sequential"] = phase(dp, rt, pods[: args.sequential], f"{tag}s", concurrent=False)
        out["concurrent"] = phase(dp, rt, pods[args.sequential :], f"{tag}c", concurrent=True)
        out["target_met"] = {
            k: out[k]["add_ms"]["p99"] <= TARGET_ADD_P99_MS for k in ("sequential", "concurrent")
        }
    finally:
        out["leaked_attachments_after"] = dp.stop()
        for name in pods:
            drop_ns(name)
    return out


def enter_netns(name: str) -> None:
    from pyroute2 import netns

    netns.setns(name, flags=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    host = make_ns("xpb-host")
    out: dict[str, Any] = {
        "bench": "cni",
        "machine": f"{os.cpu_count()} cores",
        "plugin": str(CNI_BIN),
        "exec": f"ip netns exec <node> {CNI_BIN.name}"
        if args.wrap
        else f"{CNI_BIN.name} in the node namespace",
    }
    modes = ["agent", "direct"] if args.mode == "both" else [args.mode]
    pools = ["in-pod", "stock"] if args.pool == "both" else [args.pool]
    try:
        if not args.wrap:
            enter_netns(host)  # once, as a runtime running in the node's namespace
        rt = Runtime({"cniVersion": "1.1.0"}, CNI_BIN)
        floor = [ms for _ in range(args.floor) for ms in _version(rt)]
        out["version_exec_ms"] = summary(floor)  # VERSION: the shim execs the Python plugin
        with tempfile.TemporaryDirectory() as tmp:
            for mode in modes:
                for pool in pools:
                    sub = tempfile.mkdtemp(dir=tmp)  # a fresh state file and sockets per datapath
                    out[f"{mode}/{pool}"] = combination(args, host, mode, pool, sub)
    finally:
        drop_ns(host)
    out["target_add_p99_ms"] = TARGET_ADD_P99_MS
    return out


def _version(rt: Runtime) -> list[float]:
    rt.spawn(0, "VERSION", "", "")
    return [ms for _, ms in rt.reap()]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--floor", type=int, default=10, help="VERSION runs (interpreter start)")
    parser.add_argument("--mode", choices=["agent", "direct", "both"], default="agent")
    parser.add_argument("--pool", choices=["in-pod", "stock", "both"], default="both")
    parser.add_argument("--wrap", action="store_true", help="exec every plugin through `ip netns exec`")
    parser.add_argument("--quick", action="store_true", help="10 sequential, 5 concurrent (smoke run)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the datapath child
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--pool-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--low-water", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    if args.quick:
        args.sequential, args.concurrent, args.floor = 10, 5, 3
    if os.geteuid() != 0:
        raise SystemExit("bench/cni.py needs root (network namespaces)")
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
