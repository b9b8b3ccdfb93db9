"""``xpunetctl up``: every service in this process on an embedded nats-server, until Ctrl-C/SIGTERM.

With ``--pods-per-node M`` (or ``--target``/``--overlay``/``--attach``) it runs
a local cluster around the stack (``xpunet.cluster``): node and pod network
namespaces, pods attached and answering, the watcher reading the cluster's
manifest directory.  Ctrl-C tears it all down; after a crash ``xpunetctl down``
does.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from dataclasses import replace
from typing import Any

from xpunet.ctl._args import add_stack_arguments, stack_options
from xpunet.ctl._cluster_args import add_cluster_arguments, cluster_options, wants_cluster
from xpunet.ctl._run import run_until_signal
from xpunet.ctl.stack import Stack, StackOptions, summary_lines
from xpunet.runtime.host import ServiceFailedError
from xpunet.runtime.settings import SettingsError

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        help="run every service in this process (embedded NATS) until Ctrl-C",
        description="Start an embedded nats-server (unless --nats) and all five services in this "
        "process, print where NATS and the health endpoints are, and stay up until Ctrl-C/SIGTERM.",
    )
    add_stack_arguments(parser)
    add_cluster_arguments(parser)
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    options = stack_options(args)
    if wants_cluster(args):
        from xpunet.ctl.cluster_up import cluster_up

        copts = cluster_options(args, manifests=options.manifests)
        return run_until_signal(
            lambda stop: cluster_up(copts, replace(options, manifests=None), stop), loop="asyncio"
        )
    return run_until_signal(lambda stop: up(options, stop), loop="asyncio")


async def up(options: StackOptions, stop: asyncio.Event) -> int:
    stack = Stack(options, stop_requested=stop)
    try:
        await stack.start()
    except SettingsError as exc:
        print(f"xpunetctl up: bad settings: {exc}", file=sys.stderr)
        return 2
    try:
        await stack.health_urls_bound()
        for line in summary_lines(stack):
            print(line, flush=True)
        if await stack.wait_ready():
            elapsed = time.monotonic() - stack.started_at
            print(f"all {len(stack.members)} services ready in {elapsed:.2f}s; Ctrl-C to stop", flush=True)
            print(f"  xpunetctl status --nats {stack.nats_urls[0]}", flush=True)
        await stop.wait()
    except ServiceFailedError as exc:
        print(f"xpunetctl up: {exc}", file=sys.stderr)
    finally:
        await stack.stop()
    print("stopped", flush=True)
    return 0 if stack.ok else 1
