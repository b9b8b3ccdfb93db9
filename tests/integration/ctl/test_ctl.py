"""``xpunetctl`` against real nats-servers: demo end to end, up + status + SIGTERM, demo steps."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
from pathlib import Path

from xpunet.ctl.demo import run_demo
from xpunet.ctl.stack import Stack, StackOptions
from xpunet.embedded.nats import NatsServer

XPUNETCTL = str(Path(sys.executable).parent / "xpunetctl")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("XPUNET_", "OTEL_"))}


async def test_demo_console_script_end_to_end() -> None:
    proc = await asyncio.create_subprocess_exec(
        XPUNETCTL, "demo", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    out, err = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text + err.decode()
    for instance in ("watcher", "policy", "lb", "routing", "datapath.node-1"):
        assert re.search(rf"^{re.escape(instance)}\s+\d+ ms\s+200\s+ready\s+http://", text, re.M), text
    assert "stopped cleanly" in text


async def test_up_status_then_sigterm(private_nats_server: NatsServer) -> None:
    url = private_nats_server.url
    up = await asyncio.create_subprocess_exec(
        XPUNETCTL,
        "up",
        "--nodes",
        "2",
        "--nats",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    assert up.stdout is not None
    try:
        printed: list[str] = []
        while not printed or not printed[-1].startswith("all "):
            line = (await up.stdout.readline()).decode()
            assert line, "xpunetctl up ended early:\n" + "".join(printed)
            printed.append(line)
        assert printed[-1].startswith("all 6 services ready")
        assert any(line.startswith("datapath.node-2") and "http://" in line for line in printed)

        status = await asyncio.create_subprocess_exec(
            XPUNETCTL, "status", "--nats", url, stdout=asyncio.subprocess.PIPE, env=_env()
        )
        out, _ = await status.communicate()
        table = out.decode()
        assert status.returncode == 0, table
        assert "6 service instance(s)" in table
        assert re.search(r"^datapath\.node-2\s+ready\s", table, re.M), table

        up.send_signal(signal.SIGTERM)
        rest, err = await up.communicate()
        assert up.returncode == 0, err.decode()
        assert rest.decode().rstrip().endswith("stopped")
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    # A clean stop removed every health record: nothing is ready any more.
    status = await asyncio.create_subprocess_exec(
        XPUNETCTL, "status", "--nats", url, stdout=asyncio.subprocess.PIPE, env=_env()
    )
    out, _ = await status.communicate()
    assert status.returncode == 1
    assert "0 service instance(s)" in out.decode()


async def test_status_without_nats_fails_clearly() -> None:
    status = await asyncio.create_subprocess_exec(
        XPUNETCTL,
        "status",
        "--timeout",
        "0.5",
        "--nats",
        "nats://127.0.0.1:1",
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )
    _, err = await status.communicate()
    assert status.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in err.decode()


async def test_up_rejects_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("log:\n  levl: debug\n")
    proc = await asyncio.create_subprocess_exec(
        XPUNETCTL, "up", "--config", str(config), stderr=asyncio.subprocess.PIPE, env=_env()
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "unknown key 'log.levl'" in err.decode()
    assert "did you mean 'log.level'?" in err.decode()


async def test_demo_steps_run_after_ready_and_a_failing_step_fails_the_demo(nats_url: str) -> None:
    seen: list[int] = []

    async def count_ready(stack: Stack, out: io.StringIO | object) -> None:
        seen.append(sum(1 for m in stack.members if m.host.ctx is not None and m.host.ctx.ready.is_set()))

    async def broken(stack: Stack, out: object) -> None:
        raise ServiceCheckError("step failed on purpose")

    options = StackOptions(nats_urls=(nats_url,), nodes=1)
    out = io.StringIO()
    assert await run_demo(options, steps=[count_ready], out=out) == 0
    assert seen == [5]
    out = io.StringIO()
    assert await run_demo(options, steps=[broken], out=out) == 1
    assert "step failed on purpose" in out.getvalue()


class ServiceCheckError(Exception):
    pass
