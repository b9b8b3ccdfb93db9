"""The agent's in-process infra API: the verbs call the datapath's own InfraService, without gRPC.

In host mode the resident CNI agent runs inside the datapath, next to the
infra API it would otherwise call over its unix socket: per ADD that was a
gRPC client call in a worker thread and a gRPC server call on the event
loop, a few milliseconds of CPU on the same interpreter (docs/cni.md "ADD
latency").  Here the same InfraService coroutines are awaited directly, the
protobuf messages passed as they are, and failures mapped through the same
two functions the wire path uses (`server.failure_of`, then
`client.map_status`), so a verb sees exactly the errors it would see over
gRPC.  Two forms: `call` for verbs run on the event loop (steps.drive_async),
`connect` (an `InfraCalls`) for verbs run in the agent's worker threads.

Only for a network config that names this datapath's own socket; any other
target (a datapath on an xPU, another socket) goes over gRPC.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from xpunet.datapath.attach.server import InfraService, failure_of
from xpunet.datapath.cni.client import InfraCalls, InfraClient, map_status
from xpunet.datapath.cni.config import NetConf
from xpunet.datapath.cni.errors import CniError
from xpunet.datapath.cni.steps import AsyncCall, Call

Resp = TypeVar("Resp", bound=Message)


def _failure(method: str, target: str, exc: BaseException) -> CniError:
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError):
        code, reason, details = grpc.StatusCode.DEADLINE_EXCEEDED, "", "Deadline Exceeded"
    elif isinstance(exc, Exception):
        failure = failure_of(exc)
        code, reason, details = failure.code, failure.reason, failure.message
    else:
        code, reason, details = grpc.StatusCode.CANCELLED, "", type(exc).__name__
    return map_status(code, reason, details, method, target)


class LocalTarget:
    """This datapath's InfraService, for configs naming its socket."""

    def __init__(self, service: InfraService, loop: asyncio.AbstractEventLoop, socket_path: str) -> None:
        self._loop = loop
        self._own = os.path.abspath(socket_path) if socket_path else ""
        self._methods: dict[str, Callable[[Any], Awaitable[Message]]] = {
            "Attach": service.attach,
            "Detach": service.detach,
            "Check": service.check,
            "List": service.list,
            "Status": service.status,
            "GC": service.gc,
        }

    def _is_ours(self, conf: NetConf) -> bool:
        return bool(self._own) and not conf.address and os.path.abspath(conf.socket) == self._own

    def call(self, conf: NetConf) -> AsyncCall | None:
        """Calls on the event loop (the caller's), or None when `conf` names another datapath."""
        if not self._is_ours(conf):
            return None
        target, timeout = f"unix:{conf.socket}", conf.timeout

        async def call(step: Call) -> Message:
            try:
                return await asyncio.wait_for(self._methods[step.method](step.request), timeout)
            except Exception as exc:
                raise _failure(step.method, target, exc) from exc

        return call

    def connect(self, conf: NetConf) -> InfraCalls:
        """Blocking calls for a worker thread: in-process for this datapath, else gRPC."""
        if self._is_ours(conf):
            return _ThreadCalls(self, f"unix:{conf.socket}", conf.timeout)
        return InfraClient(conf)


class _ThreadCalls:
    def __init__(self, target: LocalTarget, name: str, timeout: float) -> None:
        self._target = target
        self.name = name
        self.timeout = timeout

    def call(self, method: str, request: Message, response_type: type[Resp]) -> Resp:
        return self.start(method, request, response_type).result()

    def start(self, method: str, request: Message, response_type: type[Resp]) -> _Pending[Resp]:
        work = self._target._methods[method](request)
        future = asyncio.run_coroutine_threadsafe(_awaited(work), self._target._loop)
        return _Pending(self, method, future, response_type)

    def close(self) -> None:
        return None


async def _awaited(work: Awaitable[Message]) -> Message:
    return await work


class _Pending(Generic[Resp]):
    def __init__(
        self,
        calls: _ThreadCalls,
        method: str,
        future: concurrent.futures.Future[Message],
        response_type: type[Resp],
    ) -> None:
        self._calls = calls
        self._method = method
        self._future = future
        self._type = response_type

    def result(self) -> Resp:
        try:
            response = self._future.result(timeout=self._calls.timeout)
        except BaseException as exc:
            self._future.cancel()
            raise _failure(self._method, self._calls.name, exc) from exc
        assert isinstance(response, self._type)  # the method table pairs each RPC with its type
        return response
