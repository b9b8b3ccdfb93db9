"""The NATS connection: connect, reconnect forever (jittered backoff), publish/subscribe/request, drain.

KV buckets come from ``NatsBus.kv`` (see ``_kv``).  Trace context is injected
into the headers of everything published here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import nats.errors
import nats.js.errors
from nats.aio.subscription import Subscription as NatsPySubscription

from xpunet.bus.api import Message
from xpunet.bus.backoff import Backoff
from xpunet.bus.errors import BucketNotFound, BusClosed, BusUnavailable
from xpunet.bus.keys import validate_bucket
from xpunet.bus.nats._client import LeanClient, parse_headers
from xpunet.bus.nats._errors import mapped_errors
from xpunet.bus.tracing import inject_headers

if TYPE_CHECKING:
    from xpunet.bus.nats._kv import NatsStateStore
    from xpunet.bus.nats._watch import KVWatch

logger = logging.getLogger(__name__)


class NatsSubscription:
    """A core subscription yielding ``Message`` objects; ``async with`` unsubscribes on exit."""

    def __init__(self, bus: NatsBus, subject: str) -> None:
        self._bus = bus
        self._subject = subject
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._sub: NatsPySubscription | None = None

    async def _start(self, queue: str) -> None:
        with mapped_errors(f"subscribe {self._subject}"):
            self._sub = await self._bus.client.subscribe_direct(self._subject, self._on_msg, queue=queue)

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        # Called from the connection's reader (a direct subscription): queue it, nothing more.
        self._queue.put_nowait(
            Message(subject.decode(), data, parse_headers(headers) if headers else {}, reply.decode())
        )

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # every later __anext__ stops too
            raise StopAsyncIteration
        return item

    async def unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        self._queue.put_nowait(None)
        self._bus._subscriptions.discard(self)
        if sub is not None and not self._bus.client.is_closed and not self._bus.client.is_draining:
            with mapped_errors(f"unsubscribe {self._subject}"):
                await sub.unsubscribe()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.unsubscribe()


class NatsBus:
    """A ``xpunet.bus.api.Bus`` over one nats-py connection (made by ``connect``)."""

    def __init__(self, client: LeanClient, *, backoff: Backoff, request_timeout: float) -> None:
        self.client = client
        self.backoff = backoff
        self.request_timeout = request_timeout
        self._subscriptions: set[NatsSubscription] = set()
        self._watches: set[KVWatch] = set()
        self._closing = False
        # Imported here: _kv needs NatsBus for its type hints only.
        from xpunet.bus.nats._kv import AckRouter

        self.acks = AckRouter(self)

    # -- connection ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected)

    @property
    def closing(self) -> bool:
        return self._closing or self.client.is_closed or self.client.is_draining

    def new_inbox(self) -> str:
        return str(self.client.new_inbox())

    async def _on_reconnected(self) -> None:
        logger.info(
            "bus reconnected to %s", self.client.connected_url.netloc if self.client.connected_url else "?"
        )
        # Consumers behind watches may be gone (server restart): each watch
        # re-creates its consumer from the last revision it has seen.
        for watch in list(self._watches):
            watch.request_reset("reconnected")

    # -- core subjects ------------------------------------------------------

    async def publish(self, subject: str, data: bytes, *, headers: Mapping[str, str] | None = None) -> None:
        with mapped_errors(f"publish {subject}"):
            await self.client.publish(subject, data, headers=inject_headers(headers))

    async def subscribe(self, subject: str, *, queue: str = "") -> NatsSubscription:
        sub = NatsSubscription(self, subject)
        await sub._start(queue)
        self._subscriptions.add(sub)
        return sub

    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> Message:
        with mapped_errors(f"request {subject}"):
            msg = await self.client.request(subject, data, timeout=timeout, headers=inject_headers(headers))
        return Message(msg.subject, msg.data, msg.headers or {}, msg.reply)

    async def flush(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        with mapped_errors("flush"):
            await self.client.flush(timeout=int(max(1, timeout)))

    # -- KV -----------------------------------------------------------------

    async def kv(self, bucket: str, *, history: int = 1, create: bool = True) -> NatsStateStore:
        """The bucket's store; created (with ``history`` revisions per key) when absent and ``create``."""
        from xpunet.bus.nats._kv import NatsStateStore

        validate_bucket(bucket)
        js = self.client.jetstream(timeout=self.request_timeout)
        with mapped_errors(f"open KV bucket {bucket}"):
            try:
                await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    raise BucketNotFound(f"KV bucket {bucket} does not exist") from None
                await js.create_key_value(bucket=bucket, history=history, direct=True)
                logger.info("created KV bucket %s (history %s)", bucket, history)
        return NatsStateStore(self, bucket)

    async def delete_kv(self, bucket: str) -> None:
        validate_bucket(bucket)
        js = self.client.jetstream(timeout=self.request_timeout)
        with mapped_errors(f"delete KV bucket {bucket}"), contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(bucket)

    # -- shutdown -----------------------------------------------------------

    async def drain(self) -> None:
        """Close watches and subscriptions, deliver what is buffered, close the connection."""
        if self.client.is_closed:
            return
        self._closing = True
        for watch in list(self._watches):
            await watch.aclose()
        for sub in list(self._subscriptions):
            sub._queue.put_nowait(None)
        self._subscriptions.clear()
        try:
            await self.client.drain()
        except (TimeoutError, nats.errors.Error) as exc:
            logger.warning("bus drain failed (%s), closing", exc)
            await self.close()

    async def close(self) -> None:
        self._closing = True
        for watch in list(self._watches):
            watch.request_close()
        for sub in list(self._subscriptions):
            sub._queue.put_nowait(None)
        if not self.client.is_closed:
            await self.client.close()
        # A close cut short earlier (a drain interrupted by its timeout) can
        # leave the client marked closed with its socket still open.
        self.client.close_transport()


# Closes in progress that a second cancel left running (a task needs a strong reference).
_closing: set[asyncio.Task[None]] = set()


async def _close_shielded(client: LeanClient) -> None:
    """Close ``client``; a cancel while this waits does not stop the close (its socket is closed anyway)."""
    closing = asyncio.ensure_future(client.close())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
    await asyncio.shield(closing)


async def connect(
    servers: str | Sequence[str],
    *,
    name: str,
    backoff: Backoff | None = None,
    connect_timeout: float = 2.0,
    initial_timeout: float | None = None,
    request_timeout: float = 5.0,
    ping_interval: int = 20,
) -> NatsBus:
    """Connect, retrying until ``initial_timeout`` (``None``: forever); afterwards reconnect forever.

    Raises ``BusUnavailable`` when the initial connection does not succeed in time.
    """
    backoff = backoff or Backoff()
    server_list = [servers] if isinstance(servers, str) else list(servers)
    bus_ref: list[NatsBus] = []

    async def on_error(exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            logger.error("bus %s: slow consumer on %s, message dropped", name, exc.subject)
        else:
            logger.warning("bus %s: %s: %s", name, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        # Without a bus yet, this is the close of an abandoned first attempt.
        if not bus_ref or bus_ref[0].closing:
            logger.debug("bus %s: disconnected (closing)", name)
        else:
            logger.warning("bus %s: disconnected", name)

    async def on_reconnected() -> None:
        if bus_ref:
            await bus_ref[0]._on_reconnected()

    async def on_closed() -> None:
        logger.info("bus %s: connection closed", name)

    def next_server(pool: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        attempt = min((s.reconnects for s in pool), default=0)
        return None, backoff.delay(attempt)

    client = LeanClient()
    try:
        await asyncio.wait_for(
            client.connect(
                servers=server_list,
                name=name,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
                closed_cb=on_closed,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=max(1, int(backoff.initial)),
                reconnect_to_server_handler=next_server,
                connect_timeout=max(1, round(connect_timeout)),
                ping_interval=ping_interval,
                max_outstanding_pings=3,
                pending_size=64 * 1024 * 1024,
            ),
            timeout=initial_timeout,
        )
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        await client.close()
        raise BusUnavailable(
            f"cannot connect to {', '.join(server_list)}: {exc or type(exc).__name__}"
        ) from exc
    except BaseException:
        # Cancelled (a host stopping before the bus is up): nats-py closes a
        # failed attempt only on the errors it retries, so a cancel after the
        # socket connected, mid-handshake, would leave it open until some later
        # garbage collection.  Close it before the cancel goes on.
        await _close_shielded(client)
        raise
    if client.is_closed:
        raise BusClosed(f"connection to {', '.join(server_list)} closed while connecting")
    bus = NatsBus(client, backoff=backoff, request_timeout=request_timeout)
    bus_ref.append(bus)
    logger.info("bus %s connected to %s", name, client.connected_url.netloc if client.connected_url else "?")
    return bus
