"""``xpunetctl demo`` (what ``make demo`` runs): the main job on embedded defaults.

Today: start the embedded stack, wait until every service is ready, show a
health table with timings (readiness over HTTP and the health record on the
bus), stop cleanly.  Later steps (apply manifests, send traffic, show verdicts)
extend it by passing ``steps`` to ``run_demo``: each step runs after the stack
is ready and before it stops; one that raises fails the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TextIO

from xpunet.ctl._args import add_stack_arguments, stack_options
from xpunet.ctl._run import run_until_signal
from xpunet.ctl.stack import Stack, StackOptions
from xpunet.ctl.status import read_health
from xpunet.runtime.health import http_get
from xpunet.runtime.host import ServiceFailedError
from xpunet.runtime.settings import SettingsError

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0  # seconds; the embedded stack is ready in about one

DemoStep = Callable[[Stack, TextIO], Awaitable[None]]


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="a 2-node local cluster from examples/: reachability matrix, a policy edit (`make demo`)",
        description="Bring up a 2-node local cluster from the examples (namespaces, pods, services, "
        "policies), show convergence time and a reachability matrix measured with real TCP connections "
        "next to what the policies say, edit a policy, show the matrix again, tear down. Not root: the "
        "softipu target, with verdicts from the reference pipeline (trace).",
    )
    add_stack_arguments(parser)
    parser.add_argument(
        "--stack-only",
        action="store_true",
        help="only the services and their health table, no local cluster (the old demo)",
    )
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    options = stack_options(args)
    if args.stack_only:
        return run_until_signal(lambda stop: run_demo(options, stop), loop="asyncio")
    from xpunet.ctl.cluster_demo import cluster_demo, default_examples

    manifests = options.manifests or default_examples()
    base, nodes = replace(options, manifests=None), max(args.nodes, 2)
    return run_until_signal(lambda stop: cluster_demo(base, manifests, stop, nodes=nodes), loop="asyncio")


async def run_demo(
    options: StackOptions,
    stop: asyncio.Event | None = None,
    *,
    steps: Sequence[DemoStep] = (),
    out: TextIO = sys.stdout,
) -> int:
    """Run the demo; returns the exit code (0: everything ready, every step passed, clean stop)."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    stack = Stack(options, stop_requested=stop or asyncio.Event())
    say("xpunet demo: starting the embedded stack (nats-server + watcher, policy, lb, routing, datapath)")
    try:
        await stack.start()
    except SettingsError as exc:
        say(f"xpunet demo: bad settings: {exc}")
        return 2
    ok = False
    try:
        say(f"NATS at {', '.join(stack.nats_urls)}" + (" (embedded)" if stack.nats is not None else ""))
        async with asyncio.timeout(READY_TIMEOUT):
            ready = await stack.wait_ready()
        if not ready:
            say("xpunet demo: interrupted before the stack was ready")
            return 1
        for line in await health_table(stack):
            say(line)
        idle = [m.host.instance for m in stack.members if m.entry.idle]
        if idle:
            say(f"note: no service logic yet in {', '.join(idle)}: they only connect, report ready and wait")
        for step in steps:
            name = getattr(step, "__name__", repr(step))
            try:
                await step(stack, out)
            except Exception as exc:
                log.exception("demo step %s failed", name)
                say(f"xpunet demo: step {name} failed: {type(exc).__name__}: {exc}")
                return 1
        ok = True
    except TimeoutError:
        waiting = [m.host.instance for m in stack.members if m.host.ready_at is None]
        say(f"xpunet demo: not ready within {READY_TIMEOUT:.0f}s: {', '.join(waiting)}")
    except ServiceFailedError as exc:
        say(f"xpunet demo: a service failed: {exc}")
    finally:
        stopping = time.monotonic()
        await stack.stop()
        if ok and stack.ok:
            say(f"stopped cleanly in {time.monotonic() - stopping:.2f}s")
    return 0 if ok and stack.ok else 1


async def health_table(stack: Stack) -> list[str]:
    """One row per instance: time to ready, /readyz over HTTP, and the health record read from the bus."""
    records, problems = await read_health(list(stack.nats_urls))
    on_bus = {r.instance: r for r in records}
    lines = [f"{'SERVICE':<18}{'READY AFTER':>12}  {'/readyz':<8}{'BUS RECORD':<12}HEALTH ENDPOINT"]
    for member in stack.members:
        host = member.host
        after = f"{(host.ready_at - stack.started_at) * 1000:.0f} ms" if host.ready_at is not None else "-"
        url = host.health_url
        readyz = str((await http_get(f"{url}/readyz"))[0]) if url else "off"
        record = on_bus.get(host.instance)
        bus = "missing" if record is None else ("ready" if record.ready else "not-ready")
        lines.append(f"{host.instance:<18}{after:>12}  {readyz:<8}{bus:<12}{url or '-'}")
    lines.extend(f"bad health record: {p}" for p in problems)
    return lines
