"""``xpunetctl``: discovers its subcommands from a fixed list of modules.

To add ``xpunetctl trace``: write ``xpunet/ctl/trace.py`` with
``add_parser(subparsers)`` (which sets ``func=`` on its parser: ``func(args) -> int``)
and add ``"trace"`` to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

COMMANDS = ("up", "down", "status", "demo", "trace", "counters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xpunetctl", description="Run and inspect xpunet.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"xpunet.ctl.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    func: Callable[[argparse.Namespace], int] = args.func
    raise SystemExit(func(args))


if __name__ == "__main__":
    main()
