"""The resident CNI agent ("thick plugin" mode): runs xpunet-cni's verbs with grpc and pyroute2 loaded.

The exec'ed `xpunet-cni` (the C shim or main.py) sends its CNI_* environment
and stdin on a unix socket and reads back the exit code and stdout (framing
in wire.py).  Each request
runs `verbs.run` in a worker thread; the workers enter the host network
namespace once at start (`netns`, for a datapath whose pods' host is not its
own namespace, as in tests), so the verbs see the same host side as the
exec'ed plugin would.  The verbs still call the infra API over gRPC and do
the pod side with pyroute2: the agent only saves the start-up of a process.

The agent must run where the plugin would: on the node, with the pods'
namespace paths (/run/netns, /proc) visible.  `AttachServer` starts one when
`AttachSettings.cni_agent_socket` is set; `xpunet-cni agent` runs one alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from xpunet.datapath.cni.main import DEFAULT_AGENT_SOCKET
from xpunet.datapath.cni.wire import MAX_MESSAGE, WireError, decode_request, encode_reply

if TYPE_CHECKING:
    from xpunet.datapath.cni.verbs import Connect

log = logging.getLogger(__name__)


def _enter_netns(name: str) -> None:
    if name:
        from pyroute2 import netns

        netns.setns(name, flags=0)


def _prepare_socket_path(path: Path) -> None:
    """Make the directory; remove a stale socket from a previous run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


class CniAgent:
    def __init__(
        self,
        socket_path: str = DEFAULT_AGENT_SOCKET,
        *,
        netns: str = "",
        workers: int = 32,
        connect: Connect | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.netns = netns
        self._connect = connect  # how the verbs reach the infra API (None: gRPC, per network config)
        self.served = 0
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="cni-agent", initializer=_enter_netns, initargs=(netns,)
        )
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        # Warm the verbs' imports now, not on the first pod.
        from xpunet.datapath.cni import client, netns, verbs  # noqa: F401

        path = Path(self.socket_path)
        _prepare_socket_path(path)
        self._server = await asyncio.start_unix_server(self._handle, path=str(path))
        os.chmod(path, 0o600)
        log.info("cni agent listening on %s", path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            _prepare_socket_path(Path(self.socket_path))
        self._pool.shutdown(wait=True, cancel_futures=False)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from xpunet.datapath.cni.verbs import run

        try:
            data = b""
            while len(data) <= MAX_MESSAGE and (chunk := await reader.read(65536)):
                data += chunk  # to the end of the stream: the plugin shuts down its sending side
            if len(data) > MAX_MESSAGE:
                raise WireError(f"request longer than {MAX_MESSAGE} bytes")
            env, stdin, legacy = decode_request(data)
        except (WireError, OSError) as exc:
            log.warning("cni agent: bad request: %s", exc)
            writer.close()
            return
        work = functools.partial(run, env, stdin, connect=self._connect)
        code, output = await asyncio.get_running_loop().run_in_executor(self._pool, work)
        self.served += 1
        try:
            writer.write(encode_reply(code, output, legacy=legacy))
            await writer.drain()
        except OSError as exc:
            # The plugin went away (killed by its runtime); the verb is done and idempotent.
            log.warning("cni agent: reply to %s failed: %s", env.get("CNI_CONTAINERID", "?"), exc)
        finally:
            writer.close()


def agent_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="xpunet-cni agent", description="run the resident CNI agent")
    parser.add_argument("--socket", default=DEFAULT_AGENT_SOCKET)
    parser.add_argument("--netns", default="", help="network namespace the pods' host side is in")
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def serve() -> None:
        agent = CniAgent(args.socket, netns=args.netns, workers=args.workers)
        await agent.start()
        print(f"xpunet-cni agent listening on {args.socket}", flush=True)  # readiness, for supervisors
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await agent.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
