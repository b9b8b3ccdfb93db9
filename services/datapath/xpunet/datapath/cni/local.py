"""The agent's in-process infra API: the verbs call the datapath's own InfraService, without gRPC.

In host mode the resident CNI agent runs inside the datapath, next to the
infra API it would otherwise call over its unix socket: per ADD that was a
gRPC client call in the agent's worker thread and a gRPC server call on the
event loop, a few milliseconds of CPU on the same interpreter (docs/cni.md
"ADD latency").  `LocalInfra` runs the same InfraService coroutine on the
datapath's event loop instead, passes the protobuf messages as they are, and
maps failures through the same two functions the wire path uses
(`server.failure_of`, then `client.map_status`), so a verb sees exactly the
errors it would see over gRPC.

Used only for a network config that names this datapath's own socket; any
other target (a datapath on an xPU, another socket) goes over gRPC.
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

Resp = TypeVar("Resp", bound=Message)


class LocalInfra:
    def __init__(
        self, service: InfraService, loop: asyncio.AbstractEventLoop, *, target: str, timeout: float
    ) -> None:
        self._service = service
        self._loop = loop
        self.target = target
        self._timeout = timeout
        self._methods: dict[str, Callable[[Any], Awaitable[Message]]] = {
            "Attach": service.attach,
            "Detach": service.detach,
            "Check": service.check,
            "List": service.list,
            "Status": service.status,
            "GC": service.gc,
        }

    def call(self, method: str, request: Message, response_type: type[Resp]) -> Resp:
        return self.start(method, request, response_type).result()

    def start(self, method: str, request: Message, response_type: type[Resp]) -> _LocalPending[Resp]:
        future = asyncio.run_coroutine_threadsafe(self._call(method, request), self._loop)
        return _LocalPending(self, method, future, response_type)

    async def _call(self, method: str, request: Message) -> Message:
        return await self._methods[method](request)

    def close(self) -> None:
        return None

    def fail(self, method: str, exc: BaseException) -> CniError:
        if isinstance(exc, concurrent.futures.TimeoutError):
            code, reason, details = grpc.StatusCode.DEADLINE_EXCEEDED, "", "Deadline Exceeded"
        elif isinstance(exc, Exception):
            failure = failure_of(exc)
            code, reason, details = failure.code, failure.reason, failure.message
        else:
            code, reason, details = grpc.StatusCode.CANCELLED, "", f"{type(exc).__name__}"
        return map_status(code, reason, details, method, self.target)


class _LocalPending(Generic[Resp]):
    def __init__(
        self,
        infra: LocalInfra,
        method: str,
        future: concurrent.futures.Future[Message],
        response_type: type[Resp],
    ) -> None:
        self._infra = infra
        self._method = method
        self._future = future
        self._type = response_type

    def result(self) -> Resp:
        try:
            response = self._future.result(timeout=self._infra._timeout)
        except BaseException as exc:
            self._future.cancel()
            raise self._infra.fail(self._method, exc) from exc
        assert isinstance(response, self._type)  # the method table pairs each RPC with its type
        return response


def local_connect(
    service: InfraService, loop: asyncio.AbstractEventLoop, socket_path: str
) -> Callable[[NetConf], InfraCalls]:
    """A `connect` for verbs.run: in-process for configs naming `socket_path`, gRPC for the rest."""
    own = os.path.abspath(socket_path) if socket_path else ""

    def connect(conf: NetConf) -> InfraCalls:
        if own and not conf.address and os.path.abspath(conf.socket) == own:
            return LocalInfra(service, loop, target=f"unix:{conf.socket}", timeout=conf.timeout)
        return InfraClient(conf)

    return connect
