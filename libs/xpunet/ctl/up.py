"""``xpunetctl up``: every service in this process on an embedded nats-server, until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import Any

from xpunet.ctl._args import add_stack_arguments, stack_options
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
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    options = stack_options(args)
    return run_until_signal(lambda stop: up(options, stop))


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
