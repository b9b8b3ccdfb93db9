"""Flags shared by the ``xpunetctl`` subcommands that run or reach the stack."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from xpunet.ctl.stack import StackOptions
from xpunet.runtime.logs import configure_logging
from xpunet.runtime.settings import BusSettings


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=1, metavar="N", help="datapath instances node-1..N (1)")
    parser.add_argument(
        "--nats",
        action="append",
        default=[],
        metavar="URL",
        help="use this NATS instead of starting an embedded nats-server (repeatable)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="settings file for every service; each reads its own sections (repeatable)",
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting for every service, e.g. --set log.level=debug (repeatable)",
    )
    parser.add_argument(
        "--manifests",
        type=Path,
        metavar="DIR",
        help="directory of Kubernetes manifests the watcher reads (default: an empty temporary one)",
    )
    add_log_argument(parser)


def add_log_argument(parser: argparse.ArgumentParser, default: str = "warning") -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["debug", "info", "warning", "error"],
        help=f"log level of xpunetctl and in-process services' logs on stderr ({default})",
    )


def add_reach_arguments(parser: argparse.ArgumentParser, *, timeout: float = 5.0) -> None:
    """``--nats``, ``--timeout`` and ``--log-level`` of a subcommand that reads a running stack's bus."""
    parser.add_argument(
        "--nats",
        action="append",
        default=[],
        metavar="URL",
        help="NATS to ask (default: $XPUNET_BUS_URLS or the bus.urls default; repeatable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=timeout, metavar="SECONDS", help=f"to reach NATS ({timeout:g})"
    )
    add_log_argument(parser, default="error")  # connection retries are summed up in one message


def reach_urls(args: argparse.Namespace) -> list[str]:
    """The NATS URLs to ask: ``--nats``, else ``$XPUNET_BUS_URLS`` (comma-separated), else bus.urls' default;
    configures logging from ``--log-level`` too."""
    configure_logging(args.log_level)
    urls: list[str] = args.nats or [
        u.strip() for u in os.environ.get("XPUNET_BUS_URLS", "").split(",") if u.strip()
    ]
    return urls or list(BusSettings().urls)


def stack_options(args: argparse.Namespace) -> StackOptions:
    if args.nodes < 1:
        raise SystemExit("xpunetctl: --nodes must be at least 1")
    configure_logging(args.log_level)
    # The log level flag also reaches the services, unless a --set says otherwise.
    assignments = (f"log.level={args.log_level}", *args.assignments)
    return StackOptions(
        nodes=args.nodes,
        nats_urls=tuple(args.nats),
        configs=tuple(args.config),
        assignments=assignments,
        manifests=args.manifests,
    )
