"""``xpunetctl down``: remove everything a run created, from its state file, even after a crash.

Order: ask a live ``up`` to stop (it tears down in order itself), then kill
what is left of the run's processes — recorded ones whose start time still
matches, and any process whose command line carries the run directory —, then
delete nftables tables recorded in the root namespace, root links, and every
namespace of the run (recorded, or named with the run's prefix), then the run
directory.  Each step ignores what is already gone, so ``down`` is idempotent
and safe to run twice or concurrently with a dying ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path

from xpunet.cluster.netns import delete_netns, list_netns, run
from xpunet.cluster.plan import PREFIX
from xpunet.cluster.state import RunDir, RunState, StateError, process_starttime

log = logging.getLogger(__name__)

UP_GRACE = 15.0  # seconds a live `up` gets to tear down by itself
KILL_GRACE = 3.0


def _alive(pid: int, starttime: int) -> bool:
    now = process_starttime(pid)
    return now != 0 and (starttime == 0 or now == starttime)


def marked_processes(marker: str, *, exclude: set[int]) -> list[int]:
    """Pids whose command line contains ``marker`` (the run directory)."""
    found: list[int] = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


async def _wait_gone(pids: dict[int, int], within: float) -> dict[int, int]:
    """Poll until the processes ended; the ones still alive after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        left = {pid: st for pid, st in pids.items() if _alive(pid, st)}
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.05)


def _signal(pids: dict[int, int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def teardown(path: Path, *, up_grace: float = UP_GRACE) -> list[str]:
    """Remove the run at ``path``; one line per thing removed (for the operator)."""
    done: list[str] = []
    run_id = path.name
    try:
        state: RunState | None = RunDir.open(path).state
    except (FileNotFoundError, StateError) as exc:
        log.warning("run %s: no usable state file (%s); removing by name", run_id, exc)
        state = None
    me = {os.getpid(), os.getppid()}
    if state is not None:
        ups = {p.pid: p.starttime for p in state.processes if p.what == "up" and p.pid not in me}
        ups = {pid: st for pid, st in ups.items() if _alive(pid, st)}
        if ups:
            _signal(ups, signal.SIGTERM)
            left = await _wait_gone(ups, up_grace)
            _signal(left, signal.SIGKILL)
            await _wait_gone(left, KILL_GRACE)
            done += [f"stopped xpunetctl up (pid {pid})" for pid in ups]
    others: dict[int, int] = {}
    if state is not None:
        others.update({p.pid: p.starttime for p in state.processes if p.what != "up" and p.pid not in me})
    others.update(dict.fromkeys(marked_processes(str(path), exclude=me), 0))
    others = {pid: st for pid, st in others.items() if _alive(pid, st)}
    if others:
        _signal(others, signal.SIGTERM)
        left = await _wait_gone(others, KILL_GRACE)
        _signal(left, signal.SIGKILL)
        await _wait_gone(left, KILL_GRACE)
        done.append(f"stopped {len(others)} process(es)")
    if state is not None:
        for table in state.nft_tables:
            if table.netns:
                continue  # goes with its namespace
            out = await run("nft", "delete", "table", table.family, table.table, check=False)
            del out
            done.append(f"nft table {table.family} {table.table}")
        for link in state.root_links:
            if (Path("/sys/class/net") / link).exists():
                await run("ip", "link", "del", link, check=False)
                done.append(f"link {link}")
    names = set(state.netns if state is not None else ()) | set(list_netns(f"{PREFIX}-{run_id}-"))
    # Pods first, then nodes, then the fabric: veth peers vanish with whichever side goes first.
    for name in sorted(names, key=lambda n: (0 if "-pod-" in n else 2 if n.endswith("-fabric") else 1, n)):
        if await delete_netns(name):
            done.append(f"netns {name}")
    shutil.rmtree(path, ignore_errors=True)
    return done
