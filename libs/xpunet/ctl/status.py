"""``xpunetctl status``: which service instances are ready, from their health records on the bus."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from xpunet.bus.api import BUCKET_STATUS
from xpunet.bus.errors import BusUnavailable
from xpunet.bus.nats import connect as bus_connect
from xpunet.ctl._args import add_reach_arguments, reach_urls
from xpunet.ctl._run import run_until_signal
from xpunet.runtime.records import HEALTH_KEY_PREFIX, HealthRecord, RecordError, decode_health

_CONNECT_TIMEOUT = 5.0


def add_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show which services are ready (health records in KV xpunet-status)",
        description="Read every service instance's health record from the KV bucket xpunet-status. "
        "Exit 0 when at least one instance is known and all are ready and fresh, else 1.",
    )
    add_reach_arguments(parser, timeout=_CONNECT_TIMEOUT)
    parser.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    urls = reach_urls(args)
    return run_until_signal(lambda _stop: status(urls, connect_within=args.timeout))


async def read_health(
    urls: list[str], *, connect_within: float = _CONNECT_TIMEOUT
) -> tuple[list[HealthRecord], list[str]]:
    """The health records on the bus at ``urls``, and the problems of records that do not decode."""
    bus = await bus_connect(urls, name="xpunetctl-status", initial_timeout=connect_within)
    try:
        store = await bus.kv(BUCKET_STATUS)
        records: list[HealthRecord] = []
        problems: list[str] = []
        for key in await store.keys(HEALTH_KEY_PREFIX):
            entry = await store.get(key)
            if entry is None or entry.value is None:
                continue
            try:
                records.append(decode_health(key, entry.value))
            except RecordError as exc:
                problems.append(str(exc))
        return records, problems
    finally:
        await bus.close()


def format_table(records: list[HealthRecord], now: float) -> list[str]:
    lines = [f"{'INSTANCE':<20}{'STATE':<10}{'AGE':>7}  {'PID':>7}  {'HEALTH':<28}REASON"]
    for r in sorted(records, key=lambda r: r.instance):
        state = "stale" if r.stale(now) else ("ready" if r.ready else "not-ready")
        age = f"{max(0.0, now - r.at):.1f}s"
        row = f"{r.instance:<20}{state:<10}{age:>7}  {r.pid:>7}  {r.health or '-':<28}{r.reason}"
        lines.append(row.rstrip())
    return lines


async def status(urls: list[str], *, connect_within: float = _CONNECT_TIMEOUT) -> int:
    try:
        records, problems = await read_health(urls, connect_within=connect_within)
    except BusUnavailable:
        print(f"xpunetctl status: cannot reach NATS at {', '.join(urls)}", file=sys.stderr)
        return 1
    now = time.time()
    print(f"NATS {', '.join(urls)}: {len(records)} service instance(s)")
    for line in format_table(records, now):
        print(line)
    for problem in problems:
        print(f"bad health record: {problem}", file=sys.stderr)
    healthy = bool(records) and all(r.ready and not r.stale(now) for r in records) and not problems
    return 0 if healthy else 1
