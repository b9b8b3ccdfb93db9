"""``xpunetctl down``: remove local clusters (namespaces, links, tables, processes), even after a crash."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from xpunet.cluster.state import runs, state_root
from xpunet.cluster.teardown import teardown
from xpunet.ctl._args import add_log_argument


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "down",
        help="remove local clusters started by `xpunetctl up` (also after a crash)",
        description="Stop a running `xpunetctl up` and remove every namespace, link, nftables table, "
        "process and file its run created, from the run's state file. Idempotent: nothing to "
        "remove is success.",
    )
    parser.add_argument("--run", action="append", default=[], metavar="ID", help="only this run (repeatable)")
    add_log_argument(parser)
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from xpunet.runtime.logs import configure_logging

    configure_logging(args.log_level)
    return asyncio.run(down(args.run))


async def down(only: list[str]) -> int:
    paths = [p for p in runs() if not only or p.name in only]
    if not paths:
        print(f"no local cluster to remove under {state_root()}")
        return 0
    for path in paths:
        removed = await teardown(path)
        print(f"run {path.name}: removed {len(removed)} thing(s)")
        for line in removed:
            print(f"  {line}")
    return 0
