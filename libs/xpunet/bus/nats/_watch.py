"""The KV watch: snapshot, ``InSync``, then every change in revision order, across reconnects and restarts.

Each watch drives its own ephemeral push consumer on the bucket's stream
(no acks, idle heartbeats), delivered to a fresh inbox per *incarnation*.  The
first incarnation delivers the last message per key (the snapshot); its
message with ``pending == 0`` ends the snapshot.  Whenever the consumer may
have lost messages (reconnect, server restart, a gap in the consumer sequence,
a heartbeat reporting more than we saw, heartbeats stopping) the watch starts a
new incarnation from the last stream sequence it handed out + 1, and ignores
anything still arriving for the old one — so nothing is lost and nothing is
repeated.  Should that happen before the snapshot is complete, the snapshot is
simply taken again and only revisions newer than the last one handed out are
passed on (deletes of keys already handed out become removals).

Messages are interpreted as the connection reads them (a direct subscription of
``_client.LeanClient``: raw bytes, no per-message queue or task) and only the results
queued for the iterator: per-message cost is what limits throughput.  There is
no JetStream flow control: it stalls delivery for a round trip every few
hundred kilobytes and halved end-to-end throughput in bench/bus.py; a message
lost on the way instead shows up as a gap and triggers a resume.

A message that cannot be interpreted is logged and skipped; it never ends the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Self

from nats.aio.subscription import Subscription as NatsPySubscription

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.errors import BusError
from xpunet.bus.keys import prefixes_filters
from xpunet.bus.nats._client import parse_headers
from xpunet.bus.nats._errors import ApiError, mapped_errors, parse_api_response

if TYPE_CHECKING:
    from xpunet.bus.nats._conn import NatsBus
    from xpunet.bus.nats._kv import NatsStateStore

logger = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between idle heartbeats from the server
STALE_AFTER = 3  # missed heartbeats before the consumer is re-created
INACTIVE_THRESHOLD = 30.0  # seconds an abandoned consumer lingers on the server
_NS = 1_000_000_000

_DELETE_OPS: Final = frozenset({"DEL", "PURGE"})
# Server-placed markers (TTL / limits) carry a reason instead of KV-Operation.
_MARKER_REASONS: Final = frozenset({"MaxAge", "Purge", "Remove"})


_CLOSE = "close"


def user_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """The application's headers of a stored message (trace context), without NATS/KV bookkeeping."""
    if not headers:
        return {}
    return {
        name: value
        for name, value in headers.items()
        if not name.startswith(("Nats-", "NATS-", "nats-"))
        and name not in ("KV-Operation", "Status", "Description")
    }


class KVWatch:
    """``xpunet.bus.api.Watch`` over one KV bucket and key prefix (or several: one consumer, one order)."""

    def __init__(
        self,
        bus: NatsBus,
        store: NatsStateStore,
        prefix: str | tuple[str, ...],
        *,
        headers_only: bool = False,
    ) -> None:
        prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
        rel_filters, exact = prefixes_filters(prefixes)
        self._bus = bus
        self._store = store
        self._prefix = prefixes[0] if len(prefixes) == 1 else "|".join(prefixes)  # for messages
        self._prefixes = prefixes
        self._exact = exact
        self._filters = [store.subject_prefix + f for f in rel_filters]
        self._pre_len = len(store.subject_prefix)
        self._headers_only = headers_only
        self._ready: deque[KVEntry | InSync] = deque()
        self._controls: deque[str] = deque()  # reasons to re-create the consumer, or _CLOSE
        self._wakeup = asyncio.Event()
        self._gen = 0
        self._halted = False  # the current incarnation is abandoned (reset requested)
        self._sub: NatsPySubscription | None = None
        self._consumer: str | None = None
        self._dseq = 0  # last consumer sequence handled in this incarnation
        self._last_seq = 0  # last stream sequence (revision) handled
        self._in_sync = False
        self._snapshot_keys: set[str] | None = set()  # keys handed out in the snapshot (until InSync)
        self._started = False
        self._closed = False
        self._activity = 0  # messages and incarnations so far: the heartbeat monitor watches it move
        self._monitor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"KVWatch({self._store.bucket!r}, prefix={self._prefix!r}, revision={self._last_seq})"

    @property
    def revision(self) -> int:
        """The last revision this watch has handled (resume point)."""
        return self._last_seq

    # -- iteration ----------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> KVEntry | InSync:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            if not self._started:
                self._started = True
                self._bus._watches.add(self)
                self._monitor = asyncio.get_running_loop().create_task(
                    self._watch_heartbeats(), name=f"kv-watch-heartbeats {self._store.bucket}"
                )
                await self._new_incarnation("start")
                continue
            if self._controls:
                reason = self._controls.popleft()
                if reason == _CLOSE:
                    await self.aclose()
                elif reason.startswith("reply:"):
                    with contextlib.suppress(BusError), mapped_errors("heartbeat reply"):
                        await self._bus.client.publish(reason[6:], b"")
                else:
                    # One new incarnation answers every reset asked for so far.
                    self._controls = deque(c for c in self._controls if c == _CLOSE or c.startswith("reply:"))
                    await self._new_incarnation(reason)
                continue
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._ready.popleft()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._watches.discard(self)
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._drop_consumer()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def request_reset(self, reason: str) -> None:
        """Called on reconnect: re-create the consumer from the last revision seen."""
        if not self._closed:
            self._halted = True
            self._controls.append(reason)
            self._wakeup.set()

    def request_close(self) -> None:
        self._controls.append(_CLOSE)
        self._wakeup.set()

    # -- consumer lifecycle -------------------------------------------------

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None, gen: int) -> None:
        """Called by the connection's reader for each delivered message (a direct subscription)."""
        if gen != self._gen or self._halted:
            return  # from an abandoned incarnation: the next one redelivers from the last revision
        self._activity += 1
        try:
            action = self._handle(subject, reply, data, headers)
        except Exception:
            # A broken message must not end the watch: log it and go on.
            logger.exception("kv watch %s: skipping message it cannot interpret: %r", self, subject)
            return
        if action is not None:
            if not action.startswith("reply:"):
                self._halted = True
            self._controls.append(action)
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def _drop_consumer(self) -> None:
        sub, self._sub = self._sub, None
        name, self._consumer = self._consumer, None
        client = self._bus.client
        if client.is_closed or client.is_draining or not client.is_connected:
            return  # the server forgets the consumer after INACTIVE_THRESHOLD
        with contextlib.suppress(BusError), mapped_errors("drop watch consumer"):
            if sub is not None:
                await sub.unsubscribe()
            if name is not None:
                await client.request(f"$JS.API.CONSUMER.DELETE.{self._store.stream}.{name}", b"", timeout=1.0)

    def _consumer_config(self, inbox: str) -> dict[str, object]:
        config: dict[str, object] = {
            "deliver_subject": inbox,
            "ack_policy": "none",
            "max_deliver": 1,
            "replay_policy": "instant",
            "idle_heartbeat": int(HEARTBEAT * _NS),
            "inactive_threshold": int(INACTIVE_THRESHOLD * _NS),
            "mem_storage": True,
            "num_replicas": 1,
            "headers_only": self._headers_only,
        }
        # Several prefixes are one consumer, so changes under all of them come in revision order.
        if len(self._filters) == 1:
            config["filter_subject"] = self._filters[0]
        else:
            config["filter_subjects"] = self._filters
        if self._in_sync:
            config["deliver_policy"] = "by_start_sequence"
            config["opt_start_seq"] = self._last_seq + 1
        else:
            config["deliver_policy"] = "last_per_subject"
        return config

    async def _new_incarnation(self, reason: str) -> None:
        """(Re)create the consumer, retrying with backoff until it exists or the watch/bus closes."""
        attempt = 0
        while not self._closed:
            if self._bus.closing:
                self._closed = True
                self._bus._watches.discard(self)
                return
            await self._drop_consumer()
            self._gen += 1
            gen = self._gen
            self._dseq = 0
            self._halted = False
            inbox = self._bus.new_inbox()
            try:
                with mapped_errors(f"watch {self._store.bucket}/{self._prefix}*"):

                    def deliver(
                        subject: bytes, reply: bytes, data: bytes, headers: bytes | None, gen: int = gen
                    ) -> None:
                        self._on_msg(subject, reply, data, headers, gen)

                    self._sub = await self._bus.client.subscribe_direct(inbox, deliver)
                    request = {"stream_name": self._store.stream, "config": self._consumer_config(inbox)}
                    resp_msg = await self._bus.client.request(
                        f"$JS.API.CONSUMER.CREATE.{self._store.stream}",
                        json.dumps(request).encode(),
                        timeout=self._bus.request_timeout,
                    )
                    resp = parse_api_response(resp_msg.data)
            except (BusError, ApiError) as exc:
                delay = self._bus.backoff.delay(attempt + 1)
                attempt += 1
                logger.warning("kv watch %s: cannot create consumer (%s), retry in %.2fs", self, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._consumer = str(resp.get("name", ""))
            self._activity += 1
            if reason != "start":
                logger.info("kv watch %s: consumer re-created after %s", self, reason)
            delivered = resp.get("delivered")
            consumer_seq = delivered.get("consumer_seq", 0) if isinstance(delivered, dict) else 0
            if not self._in_sync and resp.get("num_pending") == 0 and consumer_seq == 0:
                self._mark_in_sync()
            return

    async def _watch_heartbeats(self) -> None:
        # Messages only bump a counter (cheaper than reading the clock per message); silence is
        # measured here, from the last tick at which the counter moved.
        loop = asyncio.get_running_loop()
        seen = self._activity
        quiet_since = loop.time()
        while True:
            await asyncio.sleep(HEARTBEAT)
            now = loop.time()
            if self._activity != seen:
                seen = self._activity
                quiet_since = now
                continue
            silent = now - quiet_since
            if silent > STALE_AFTER * HEARTBEAT and self._bus.connected:
                quiet_since = now  # one reset per silence, not one per tick
                self.request_reset(f"no heartbeat for {silent:.1f}s")

    # -- messages -----------------------------------------------------------

    def _mark_in_sync(self) -> None:
        self._in_sync = True
        self._snapshot_keys = None
        self._ready.append(InSync(self._last_seq))

    def _handle(self, subject: bytes, reply: bytes, data: bytes, raw_headers: bytes | None) -> str | None:
        """Interpret one delivered message; returns an action for the caller (reset / reply) or None."""
        headers = None
        if raw_headers is not None:
            headers = parse_headers(raw_headers)
            if not data and "Status" in headers:
                return self._handle_status(headers)
        tokens = reply.split(b".")
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>
            sseq, dseq, pending = int(tokens[5]), int(tokens[6]), int(tokens[8])
        elif len(tokens) >= 11:  # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>...
            sseq, dseq, pending = int(tokens[7]), int(tokens[8]), int(tokens[10])
        else:
            raise BusError(f"unexpected JetStream reply subject {reply!r}")
        if dseq != self._dseq + 1:
            return f"gap in consumer sequence (expected {self._dseq + 1}, got {dseq})"
        self._dseq = dseq
        if sseq > self._last_seq:
            self._last_seq = sseq
            key = subject[self._pre_len :].decode()
            if self._exact or key.startswith(self._prefixes):
                self._emit(key, data, sseq, headers)
        if pending == 0 and not self._in_sync:
            self._mark_in_sync()
        return None

    def _emit(self, key: str, data: bytes, sseq: int, headers: dict[str, str] | None) -> None:
        deleted = False
        if headers:
            op = headers.get("KV-Operation")
            if op is not None:
                if op not in _DELETE_OPS:
                    raise BusError(f"unknown KV-Operation {op!r} on {key}")
                deleted = True
            elif headers.get("Nats-Marker-Reason") in _MARKER_REASONS:
                deleted = True
        snapshot = self._snapshot_keys
        if snapshot is not None:  # still in the snapshot: deletes are omitted unless already handed out
            if deleted:
                if key not in snapshot:
                    return
                snapshot.discard(key)
            else:
                snapshot.add(key)
        value = None if deleted else data
        self._ready.append(KVEntry(key, value, sseq, user_headers(headers) if headers else {}))

    def _handle_status(self, headers: dict[str, str]) -> str | None:
        status = headers.get("Status")
        description = headers.get("Description", "")
        if status == "100":
            stalled = headers.get("Nats-Consumer-Stalled")
            if stalled:
                return "reply:" + stalled
            last_consumer = headers.get("Nats-Last-Consumer")
            if last_consumer is not None and int(last_consumer) != self._dseq:
                return f"heartbeat reports consumer sequence {last_consumer}, we saw {self._dseq}"
            return None
        if status == "409":
            return f"consumer gone ({description})"
        logger.debug("kv watch %s: status %s %s", self, status, description)
        return None
