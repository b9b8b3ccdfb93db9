"""``xpunetctl counters``: a node's allowed/denied traffic per NetworkPolicy, service and default action.

Every datapath polls its target's counters (``datapath.counter_interval``) and
publishes the running totals in KV ``xpunet-status`` under
``counters.datapath.<node token>`` (``xpunet.datapath.counters.CounterReport``);
this command reads that record, so it shows what the node's datapath last
read, as of the age it prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from xpunet.bus.api import BUCKET_STATUS
from xpunet.bus.errors import BusUnavailable
from xpunet.bus.nats import connect as bus_connect
from xpunet.ctl._args import add_reach_arguments, reach_urls
from xpunet.ctl._run import run_until_signal
from xpunet.datapath.counters import CounterReport, status_key
from xpunet.ir.keys import node_token
from xpunet.wire import WireError, decode_object

_PREFIX = "counters.datapath."


async def read_reports(
    urls: list[str], node: str | None, *, connect_within: float, bucket: str = BUCKET_STATUS
) -> tuple[list[CounterReport], list[str]]:
    """The counter reports of ``node`` (None: every node), and problems with values that do not decode."""
    bus = await bus_connect(urls, name="xpunetctl-counters", initial_timeout=connect_within)
    try:
        store = await bus.kv(bucket)
        keys = [status_key(node_token(node))] if node else await store.keys(_PREFIX)
        reports: list[CounterReport] = []
        problems: list[str] = []
        for key in keys:
            entry = await store.get(key)
            if entry is None or entry.value is None:
                continue
            try:
                obj = decode_object(entry.value)
            except WireError as exc:
                problems.append(f"{bucket} {key}: {exc}")
                continue
            if isinstance(obj, CounterReport):
                reports.append(obj)
            else:
                problems.append(f"{bucket} {key}: not a counter report ({type(obj).__name__})")
        return reports, problems
    finally:
        await bus.close()


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    # Text columns left, numbers (the last two) right.
    n = len(header)

    def line(r: tuple[str, ...]) -> str:
        cells = [c.rjust(widths[i]) if i >= n - 2 else c.ljust(widths[i]) for i, c in enumerate(r)]
        return "  ".join(cells).rstrip()

    return [line(header)] + [line(r) for r in rows]


def format_report(report: CounterReport, now: float, *, by_rule: bool = False) -> list[str]:
    """Tables a network engineer reads at a glance: per policy/direction/verdict, per service, per default."""
    age = f"last read {max(0.0, now - report.updated_at):.0f}s ago" if report.updated_at else "not read yet"
    lines = [f"node {report.node} ({report.target}): counters {age}, {report.polls} reads"]
    if report.last_error:
        lines.append(f"last read failed: {report.last_error}")
    lines.append("")
    rows: list[tuple[str, ...]]
    header: tuple[str, ...]
    if by_rule:
        rows = [
            (
                r.namespace or "-",
                r.policy,
                r.direction,
                str(r.index) if r.index >= 0 else "-",
                r.verdict,
                str(r.packets),
                str(r.bytes),
            )
            for r in report.rules
        ]
        header = ("NAMESPACE", "POLICY", "DIRECTION", "RULE", "VERDICT", "PACKETS", "BYTES")
    else:
        agg: dict[tuple[str, str, str, str], list[int]] = {}
        for r in report.rules:
            cell = agg.setdefault((r.namespace or "-", r.policy, r.direction, r.verdict), [0, 0])
            cell[0] += r.packets
            cell[1] += r.bytes
        rows = [(*k, str(p), str(b)) for k, (p, b) in sorted(agg.items())]
        header = ("NAMESPACE", "POLICY", "DIRECTION", "VERDICT", "PACKETS", "BYTES")
    lines += _table(header, rows) if rows else ["no policy counters"]
    lines.append("")
    srows = [(s.namespace, s.service, s.port, str(s.packets), str(s.bytes)) for s in report.services]
    lines += (
        _table(("NAMESPACE", "SERVICE", "PORT", "PACKETS", "BYTES"), srows)
        if srows
        else ["no service counters"]
    )
    lines.append("")
    if not report.drops_supported:
        lines.append("default drops: not counted by this target")
    else:
        drows = [(d.table, d.reason, str(d.packets), str(d.bytes)) for d in report.drops]
        lines += (
            _table(("TABLE", "DEFAULT DROP", "PACKETS", "BYTES"), drows) if drows else ["no default drops"]
        )
    return lines


async def counters(urls: list[str], args: argparse.Namespace) -> int:
    try:
        reports, problems = await read_reports(
            urls, args.node, connect_within=args.timeout, bucket=args.bucket
        )
    except BusUnavailable:
        print(f"xpunetctl counters: cannot reach NATS at {', '.join(urls)}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"skipped: {p}", file=sys.stderr)
    if not reports:
        which = f"node {args.node}" if args.node else "any node"
        print(
            f"xpunetctl counters: no counter report for {which} "
            "(datapath not running, or datapath.counter_interval is 0)",
            file=sys.stderr,
        )
        return 1
    now = time.time()
    out: list[str] = []
    for report in sorted(reports, key=lambda r: r.node):
        if out:
            out.append("")
        out += format_report(report, now, by_rule=args.rules)
    print("\n".join(out))
    return 0


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "counters",
        help="show a node's traffic per NetworkPolicy (allowed/denied), per service and per default drop",
        description="Print the counter totals a node's datapath last read from its target (KV "
        "xpunet-status counters.datapath.<node>). Exit 0 when a report was found, 1 when none, 2 when "
        "NATS is unreachable.",
    )
    parser.add_argument("--node", help="the node (default: every node with a report)")
    parser.add_argument("--rules", action="store_true", help="one row per rule instead of per policy")
    parser.add_argument("--bucket", default=BUCKET_STATUS, help=argparse.SUPPRESS)
    add_reach_arguments(parser)
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    urls = reach_urls(args)
    return run_until_signal(lambda _stop: counters(urls, args))
