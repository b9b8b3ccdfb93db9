"""The resident CNI agent ("thick plugin" mode): runs xpunet-cni's verbs with grpc and pyroute2 loaded.

The exec'ed `xpunet-cni` (the C shim or main.py) sends its CNI_* environment
and stdin on a unix socket and reads back the exit code and stdout (framing
in wire.py).  Each request runs the same verb code as the exec'ed plugin
(verbs.py).  Inside the
datapath (`local`), a verb for the datapath's own socket runs on the event
loop and calls the infra API in-process (cni/local.py); any other verb runs
in a worker thread and calls over gRPC.  The workers enter the host network
namespace once at start (`netns`, for a datapath whose pods' host is not its
own namespace, as in tests), and the event-loop verbs are told it, so the
verbs see the same host side as the exec'ed plugin would.

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
    from xpunet.datapath.cni.local import LocalTarget

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
        local: LocalTarget | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.netns = netns
        # Inside the datapath: its own infra API, in-process; verbs for it run on the event loop.
        self._local = local
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
        from xpunet.datapath.cni.verbs import run, run_async

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
        answer = None
        if self._local is not None:
            answer = await run_async(env, stdin, connect=self._local.call, host_netns=self.netns)
        if answer is None:  # another datapath (gRPC, blocking): in a worker thread
            connect = self._local.connect if self._local is not None else None
            work = functools.partial(run, env, stdin, connect=connect)
            answer = await asyncio.get_running_loop().run_in_executor(self._pool, work)
        code, output = answer
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
