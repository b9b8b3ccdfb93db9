"""How the steps of a CNI verb are carried out, blocking or on an event loop.

A verb (verbs.py) is a generator: it yields the steps it needs done (an infra
API call, plumbing the pod side, ...) and gets each answer back, or the
step's error thrown in at the `yield`, where it can undo what it did.  The
verbs themselves do no I/O.  Two drivers carry the steps out:

* `drive`: blocking, one thread; the exec'ed plugin and the agent's worker
  threads.  An infra call is sent first and, when the verb touches netlink
  next, pyroute2 is imported while the datapath works (in the exec'ed plugin
  that import is a large part of an ADD).
* `drive_async`: on the datapath's event loop, for the agent inside the
  datapath: the infra calls are the datapath's own coroutines (cni/local.py),
  so an ADD never leaves the event loop's thread except where the datapath
  itself hands kernel work to a worker thread.

Errors of the pod-side netlink work are mapped here, once, to CNI errors.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from xpunet.datapath.cni.errors import IO_FAILURE, UNKNOWN_CONTAINER, CniError

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from xpunet.datapath.cni.client import InfraCalls
    from xpunet.datapath.cni.netns import Plan


@dataclass(frozen=True, slots=True)
class Call:
    """An infra API call; answered with the response message."""

    method: str
    request: Message
    response_type: type[Message]
    netlink_next: bool = False  # the verb does netlink work after this call


@dataclass(frozen=True, slots=True)
class Plumb:
    """Move the vNIC into the pod and configure it; answered with None."""

    plan: Plan
    netns: str


@dataclass(frozen=True, slots=True)
class Unplumb:
    """Take our interface out of the pod (back to the host, or deleted); answered with None."""

    plan: Plan
    netns: str
    move_back: bool


@dataclass(frozen=True, slots=True)
class Inspect:
    """What the pod's interface looks like; answered with a `netns.Observed`."""

    netns: str
    ifname: str


Step: TypeAlias = Call | Plumb | Unplumb | Inspect
T = TypeVar("T")
Flow: TypeAlias = Generator[Step, Any, T]
AsyncCall: TypeAlias = "Callable[[Call], Awaitable[Message]]"


@contextlib.contextmanager
def _netlink_errors() -> Iterator[None]:
    from xpunet.datapath.cni import netns

    try:
        yield
    except netns.MissingNetnsError as exc:
        raise CniError(UNKNOWN_CONTAINER, str(exc)) from exc
    except netns.NetnsError as exc:
        raise CniError(IO_FAILURE, str(exc)) from exc


def drive(flow: Flow[T], connect: Callable[[], InfraCalls]) -> T:
    """Carry out a verb's steps in this thread; the infra client is made at the first call (a failure
    to make it ends the verb: nothing to undo yet).  pyroute2 is imported only by a verb that does
    netlink work, while its infra call is in flight (in the exec'ed plugin: ~0.2 s every exec)."""
    clients: list[InfraCalls] = []

    def do(step: Step) -> Any:
        if isinstance(step, Call):
            pending = clients[0].start(step.method, step.request, step.response_type)
            if step.netlink_next:
                importlib.import_module("xpunet.datapath.cni.netns")  # loads pyroute2 meanwhile
            return pending.result()
        import asyncio  # pyroute2's reads in the pod are coroutines

        from xpunet.datapath.cni import netns

        with _netlink_errors():
            if isinstance(step, Plumb):
                netns.plumb(step.plan, step.netns)
                return None
            if isinstance(step, Unplumb):
                return asyncio.run(netns.unplumb(step.plan, step.netns, move_back=step.move_back))
            return asyncio.run(netns.inspect(step.netns, step.ifname))

    def before(step: Step) -> None:
        if isinstance(step, Call) and not clients:
            clients.append(connect())

    try:
        return _loop(flow, do, before)
    finally:
        for client in clients:
            client.close()


def _loop(flow: Flow[T], do: Callable[[Step], Any], before: Callable[[Step], None]) -> T:
    answer: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, error = None, None
            before(step)  # outside the try: its failure is not the verb's to handle
            try:
                answer = do(step)
            except Exception as exc:
                error = exc
    finally:
        flow.close()


async def drive_async(flow: Flow[T], call: AsyncCall, *, host_netns: str = "") -> T:
    """Carry out a verb's steps on the running event loop; `host_netns`: the namespace of the pods'
    host side, when it is not this thread's own."""
    import asyncio

    from xpunet.datapath.cni import netns

    answer: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(answer)
            except StopIteration as stop:
                result: T = stop.value
                return result
            answer, error = None, None
            try:
                if isinstance(step, Call):
                    answer = await call(step)
                else:
                    with _netlink_errors():
                        if isinstance(step, Plumb):
                            await netns.plumb_on_loop(step.plan, step.netns, host_netns=host_netns)
                        elif isinstance(step, Unplumb):
                            # Rare (a failed ADD, a VF's DEL), and the kernel may hold the caller for
                            # tens of milliseconds (a move, a veth's deletion): not on the loop.
                            undo = netns.unplumb(
                                step.plan, step.netns, move_back=step.move_back, host_netns=host_netns
                            )
                            await asyncio.to_thread(asyncio.run, undo)
                        else:
                            answer = await netns.inspect(step.netns, step.ifname)
            except Exception as exc:
                error = exc
    finally:
        flow.close()
