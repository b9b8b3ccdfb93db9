"""A real service process (console script) against a real nats-server: ready, health, SIGTERM, exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import nats
import pytest

from xpunet.bus.api import BUCKET_STATUS
from xpunet.runtime.health import http_get

BIN = Path(sys.executable).parent
HEALTH_LINE = re.compile(r'msg="health endpoint at (http://[0-9.]+:\d+) ')


class ServiceProcess:
    """One console-script process whose stderr log we read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        """Read the log until a line matches (the process tells us; no polling, no sleeps)."""
        compiled = re.compile(pattern)
        for line in self.lines:
            if match := compiled.search(line):
                return match
        assert self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                raise AssertionError(f"process ended before {pattern!r}; log:\n" + "\n".join(self.lines))
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if match := compiled.search(line):
                return match

    async def finish(self) -> tuple[int, str]:
        assert self.proc.stderr is not None
        rest = await self.proc.stderr.read()
        code = await self.proc.wait()
        self.lines.extend(rest.decode().splitlines())
        return code, "\n".join(self.lines)


@pytest.fixture
async def spawn() -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for sp in started:
        if sp.proc.returncode is None:
            sp.proc.kill()
            await sp.proc.wait()


async def _start(
    started: list[ServiceProcess], script: str, *args: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("XPUNET_", "OTEL_"))}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        str(BIN / script),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    sp = ServiceProcess(proc)
    started.append(sp)
    return sp


async def _health_record(nats_url: str, instance: str) -> dict[str, object] | None:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(BUCKET_STATUS)
        try:
            entry = await kv.get(f"health.{instance}")
        except nats.js.errors.KeyNotFoundError:
            return None
        if entry.value is None or entry.operation is not None:
            return None  # a delete marker
        record: dict[str, object] = msgpack.unpackb(entry.value)
        return record
    finally:
        await nc.close()


@pytest.mark.parametrize("service", ["watcher", "policy", "lb", "routing", "datapath"])
async def test_service_ready_then_sigterm_exits_zero(
    spawn: list[ServiceProcess], nats_url: str, service: str, tmp_path: Path
) -> None:
    # The watcher reads an (empty) manifest directory instead of an API server; the
    # other services ignore the watcher's section.
    sp = await _start(
        spawn,
        f"xpunet-{service}",
        *("--nats", nats_url, "--health-port", "0", "--node", "node-a"),
        *("--set", f"watcher.source=dir:{tmp_path}"),
    )
    health = (await sp.wait_for_line(HEALTH_LINE.pattern)).group(1)
    await sp.wait_for_line(r'msg="[a-z.-]+ ready"')
    assert await http_get(f"{health}/healthz") == (200, "ok\n")
    assert await http_get(f"{health}/readyz") == (200, "ready\n")
    status, body = await http_get(f"{health}/metrics")
    assert status == 200
    assert "xpunet_service_ready{" in body
    instance = "datapath.node-a" if service == "datapath" else service
    record = await _health_record(nats_url, instance)
    assert record is not None
    assert record["instance"] == instance
    assert record["health"] == health
    sp.proc.send_signal(signal.SIGTERM)
    code, log = await sp.finish()
    assert code == 0, log
    assert "stopped" in log
    # A clean stop removes the health record.
    assert await _health_record(nats_url, instance) is None


async def test_bad_config_file_fails_fast_naming_the_key(spawn: list[ServiceProcess], tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text("bus:\n  urls: [nats://127.0.0.1:1]\nhealth:\n  prot: 80\n")
    sp = await _start(spawn, "xpunet-lb", "--config", str(config))
    code, log = await sp.finish()
    assert code == 2
    assert f"unknown key 'health.prot' in config file {config}; did you mean 'health.port'?" in log


async def test_bad_env_value_fails_fast_naming_the_key(spawn: list[ServiceProcess]) -> None:
    sp = await _start(spawn, "xpunet-policy", env={"XPUNET_HEALTH_PORT": "http"})
    code, log = await sp.finish()
    assert code == 2
    assert "health.port in environment variable XPUNET_HEALTH_PORT: expected integer, got 'http'" in log


async def test_sigterm_while_nats_unreachable_exits_zero(spawn: list[ServiceProcess]) -> None:
    """Not ready while the bus is unreachable; a stop still ends the process cleanly."""
    # Port 1 on loopback: nothing listens there, connection attempts are refused.
    sp = await _start(spawn, "xpunet-routing", "--nats", "nats://127.0.0.1:1", "--health-port", "0")
    health = (await sp.wait_for_line(HEALTH_LINE.pattern)).group(1)
    await sp.wait_for_line(r"bus xpunet-routing: ")  # the first refused attempt was reported
    status, body = await http_get(f"{health}/readyz")
    assert (status, body) == (503, "not ready: bus not connected\n")
    assert await http_get(f"{health}/healthz") == (200, "ok\n")
    sp.proc.send_signal(signal.SIGTERM)
    code, log = await sp.finish()
    assert code == 0, log


async def test_help_lists_every_key() -> None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "xpunet-routing"), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = out.decode()
    assert "usage: xpunet-routing" in text
    assert "health.port = 8080" in text
    assert "bus.urls = ('nats://127.0.0.1:4222',)" in text


FAILING_SERVICE = """
import sys
from xpunet.runtime.service import ServiceContext, Settings, run_service

async def run(ctx: ServiceContext[Settings]) -> None:
    ctx.mark_ready()
    raise RuntimeError("compiler exploded")

run_service("boom", run, Settings, sys.argv[1:])
"""


async def test_service_failure_exits_non_zero_with_the_error_logged(nats_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XPUNET_", "OTEL_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FAILING_SERVICE,
        *("--nats", nats_url, "--health-port", "0"),
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await proc.communicate()
    log = err.decode()
    assert proc.returncode == 1, log
    assert "RuntimeError: compiler exploded" in log  # the traceback, on one line
    assert 'msg="exiting with failure: boom: compiler exploded"' in log
