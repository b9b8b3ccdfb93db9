"""``StateStore`` over a JetStream KV bucket, written against the stream directly.

A KV bucket is the stream ``KV_<bucket>`` on subjects ``$KV.<bucket>.<key>``;
a put is a publish to the key's subject, a delete is an empty message with
``KV-Operation: DEL``, compare-and-set uses ``Nats-Expected-Last-Subject-Sequence``.
Going to the stream directly lets ``put_many`` pipeline: thousands of publishes
in flight, their acks routed back through one wildcard inbox subscription and
counted per batch, instead of one request/response round trip (and one future)
per key.  Values and user headers (trace context) are stored with the message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from xpunet.bus.api import InSync, KVEntry
from xpunet.bus.errors import BusError, BusUnavailable, CasConflict
from xpunet.bus.keys import validate_key
from xpunet.bus.nats._client import encode_headers, parse_headers, pub_command
from xpunet.bus.nats._errors import ERR_WRONG_LAST_SEQUENCE, ApiError, mapped_errors, parse_api_response
from xpunet.bus.nats._watch import KVWatch, user_headers
from xpunet.bus.tracing import TRACEPARENT, inject_headers

if TYPE_CHECKING:
    from xpunet.bus.nats._conn import NatsBus

logger = logging.getLogger(__name__)

KV_OPERATION = "KV-Operation"
OP_DELETE = "DEL"
OP_PURGE = "PURGE"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"

# Acks awaited at once by put_many: enough to keep the server busy, few enough
# that a dead server is noticed within one window.
PUT_MANY_WINDOW = 2048


def ack_sequence(data: bytes) -> int:
    """The stream sequence in a publish ack ``{"stream":"KV_b","seq":N,...}``.

    The ack is tiny and its shape fixed, so ``"seq":`` is found by hand
    (a few times cheaper than ``json.loads`` per acked write); anything
    unexpected, including an error answer, goes through the JSON parser and
    raises ``ApiError`` or ``BusError`` as it would.
    """
    at = data.find(b'"seq":')
    if at > 0 and b'"error"' not in data:
        start = at + 6
        stop = data.find(b",", start)
        if stop < 0:
            stop = data.find(b"}", start)
        digits = data[start:stop].strip()
        if digits.isdigit():
            return int(digits)
    seq = parse_api_response(data).get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BusError(f"ack without a sequence: {data[:80]!r}")
    return seq


class _Batch:
    """Bookkeeping for one ``put_many``: outstanding acks, highest revision, failures by key."""

    __slots__ = ("errors", "keys", "last_seq", "outstanding", "progress")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.outstanding = 0
        self.last_seq = 0
        self.errors: list[tuple[str, str]] = []
        self.progress = asyncio.Event()

    def on_ack(self, index: bytes, data: bytes, headers: bytes | None) -> None:
        self.outstanding -= 1
        try:
            if headers is not None and not data:
                hdrs = parse_headers(headers)
                if hdrs.get("Status") == "503":
                    raise BusUnavailable("no stream answered (bucket deleted?)")
                raise BusError(f"status {hdrs.get('Status')} {hdrs.get('Description', '')}".rstrip())
            seq = ack_sequence(data)
            if seq > self.last_seq:
                self.last_seq = seq
        except (ApiError, BusError) as exc:
            self.errors.append((self._key(index), str(exc)))
        if self.outstanding <= PUT_MANY_WINDOW // 2:
            self.progress.set()

    def _key(self, index: bytes) -> str:
        try:
            return self.keys[int(index)]
        except (ValueError, IndexError):
            return f"<ack {index.decode(errors='replace')!r}>"


class AckRouter:
    """One wildcard inbox subscription per connection; ack subjects are ``<prefix><batch>.<index>``."""

    def __init__(self, bus: NatsBus) -> None:
        self._bus = bus
        self._prefix = ""
        self._prefix_len = 0
        self._batches: dict[bytes, _Batch] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()

    async def prefix(self) -> str:
        if self._prefix:
            return self._prefix  # subscribed already: no lock round per put_many
        async with self._lock:
            if not self._prefix:
                prefix = self._bus.new_inbox() + "."
                self._prefix_len = len(prefix)
                with mapped_errors("subscribe to put_many acks"):
                    await self._bus.client.subscribe_direct(prefix + ">", self._on_ack)
                self._prefix = prefix
        return self._prefix

    def open(self, keys: list[str]) -> tuple[str, _Batch]:
        batch_id = str(next(self._ids))
        batch = _Batch(keys)
        self._batches[batch_id.encode()] = batch
        return batch_id, batch

    def close(self, batch_id: str) -> None:
        self._batches.pop(batch_id.encode(), None)

    def _on_ack(self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None) -> None:
        batch_id, _, index = subject[self._prefix_len :].partition(b".")
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # a late ack of a batch that gave up
        batch.on_ack(index, data, headers)


class NatsStateStore:
    """``xpunet.bus.api.StateStore`` over the JetStream KV bucket ``bucket``."""

    def __init__(self, bus: NatsBus, bucket: str) -> None:
        self._bus = bus
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._pre = f"$KV.{bucket}."

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def subject_prefix(self) -> str:
        return self._pre

    def __repr__(self) -> str:
        return f"NatsStateStore({self._bucket!r})"

    # -- reads --------------------------------------------------------------

    async def _last_message(self, key: str) -> Msg | None:
        """The newest stored message of ``key`` (including delete markers), by direct get."""
        with mapped_errors(f"get {self._bucket}/{key}"):
            msg = await self._bus.client.request(
                f"$JS.API.DIRECT.GET.{self._stream}.{self._pre}{key}", b"", timeout=self._bus.request_timeout
            )
        headers = msg.headers or {}
        status = headers.get("Status")
        if status == "404":
            return None
        if status is not None:
            raise BusError(
                f"get {self._bucket}/{key}: status {status} {headers.get('Description', '')}".rstrip()
            )
        return msg

    async def get(self, key: str) -> KVEntry | None:
        validate_key(key)
        msg = await self._last_message(key)
        if msg is None:
            return None
        headers = msg.headers or {}
        if headers.get(KV_OPERATION) in (OP_DELETE, OP_PURGE):
            return None
        return KVEntry(key, msg.data, int(headers["Nats-Sequence"]), user_headers(headers))

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix`` that currently have a value (headers-only snapshot, no values moved)."""
        found: list[str] = []
        watch = KVWatch(self._bus, self, prefix, headers_only=True)
        try:
            async for item in watch:
                if isinstance(item, InSync):
                    break
                found.append(item.key)
        finally:
            await watch.aclose()
        return found

    def watch(self, prefix: str | tuple[str, ...] = "") -> KVWatch:
        return KVWatch(self._bus, self, prefix)

    # -- writes -------------------------------------------------------------

    async def _publish_acked(self, key: str, value: bytes, headers: Mapping[str, str] | None) -> int:
        with mapped_errors(f"put {self._bucket}/{key}"):
            ack = await self._bus.client.request(
                self._pre + key,
                value,
                timeout=self._bus.request_timeout,
                headers=dict(headers) if headers else None,
            )
        if ack.headers and ack.headers.get("Status") == "503":
            raise BusUnavailable(f"put {self._bucket}/{key}: no stream answered (bucket deleted?)")
        resp = parse_api_response(ack.data)
        seq = resp.get("seq")
        if not isinstance(seq, int):
            raise BusError(f"put {self._bucket}/{key}: ack without a sequence: {ack.data[:80]!r}")
        return seq

    async def put(self, key: str, value: bytes, *, headers: Mapping[str, str] | None = None) -> int:
        validate_key(key)
        try:
            return await self._publish_acked(key, value, inject_headers(headers))
        except ApiError as exc:
            raise BusError(f"put {self._bucket}/{key}: {exc}") from exc

    async def delete(self, key: str, *, headers: Mapping[str, str] | None = None) -> None:
        validate_key(key)
        hdrs = inject_headers(headers) or {}
        hdrs[KV_OPERATION] = OP_DELETE
        try:
            await self._publish_acked(key, b"", hdrs)
        except ApiError as exc:
            raise BusError(f"delete {self._bucket}/{key}: {exc}") from exc

    async def compare_and_set(
        self, key: str, value: bytes, *, revision: int, headers: Mapping[str, str] | None = None
    ) -> int:
        validate_key(key)
        if revision < 0:
            raise ValueError(f"compare_and_set {self._bucket}/{key}: revision {revision} < 0")
        base = inject_headers(headers) or {}
        expected = revision
        for _ in range(2):
            hdrs = {**base, EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
            try:
                return await self._publish_acked(key, value, hdrs)
            except ApiError as exc:
                if exc.code not in ERR_WRONG_LAST_SEQUENCE:
                    raise BusError(f"compare_and_set {self._bucket}/{key}: {exc}") from exc
                conflict = exc
            # "Absent" includes deleted: the subject's last message is then a
            # delete marker, so retry once expecting that marker's sequence.
            if revision != 0 or expected != 0:
                break
            last = await self._last_message(key)
            if last is None or (last.headers or {}).get(KV_OPERATION) not in (OP_DELETE, OP_PURGE):
                break
            expected = int((last.headers or {})["Nats-Sequence"])
        raise CasConflict(self._bucket, key, revision, conflict.description)

    async def put_many(
        self, changes: Mapping[str, bytes | None], *, headers: Mapping[str, str] | None = None
    ) -> int:
        """Write all ``changes`` (``None`` deletes) pipelined; returns the highest revision written.

        Every key is validated before anything is sent.  Raises ``BusError``
        naming the failed keys if the server rejected some writes (the others
        are applied), ``BusUnavailable`` if acks stopped coming.
        """
        items = list(changes.items())
        for key, _ in items:
            validate_key(key)
        if not items:
            return 0
        # A caller that carries a trace context already injected it (the compiler loop and the
        # watcher do so inside the span the write belongs to): injecting again would only redo it.
        put_headers = dict(headers) if headers and TRACEPARENT in headers else inject_headers(headers)
        client = self._bus.client
        what = f"put_many to {self._bucket}"
        with mapped_errors(what):
            # Encoded once per batch, not once per message (the delete block only if there are deletes).
            put_block = encode_headers(put_headers) if put_headers else None
            del_block = (
                encode_headers({**(put_headers or {}), KV_OPERATION: OP_DELETE})
                if any(value is None for _, value in items)
                else b""
            )
        limit = client.max_payload
        for key, value in items:
            if value is not None and len(value) + (len(put_block) if put_block else 0) > limit:
                raise BusError(f"{what}: value of {key} is {len(value)} bytes, the server's limit is {limit}")
        prefix = await self._bus.acks.prefix()
        batch_id, batch = self._bus.acks.open([key for key, _ in items])
        reply_base = f"{prefix}{batch_id}.".encode()
        pre = self._pre.encode()
        timeout = self._bus.request_timeout
        total = len(items)
        try:
            with mapped_errors(what):
                index = 0
                while index < total:
                    while batch.outstanding >= PUT_MANY_WINDOW:
                        batch.progress.clear()
                        await self._wait_progress(batch, timeout, what, total)
                    stop = min(total, index + PUT_MANY_WINDOW - batch.outstanding)
                    commands = []
                    size = 0
                    for i in range(index, stop):
                        key, value = items[i]
                        reply = reply_base + str(i).encode()
                        if value is None:
                            commands.append(pub_command(pre + key.encode(), reply, b"", del_block))
                        else:
                            size += len(value)
                            commands.append(pub_command(pre + key.encode(), reply, value, put_block))
                    batch.outstanding += stop - index
                    await client.send_prepared(commands, messages=stop - index, payload_bytes=size)
                    index = stop
                while batch.outstanding > 0:
                    batch.progress.clear()
                    await self._wait_progress(batch, timeout, what, total)
        finally:
            self._bus.acks.close(batch_id)
        if batch.errors:
            shown = "; ".join(f"{key}: {err}" for key, err in batch.errors[:5])
            raise BusError(f"{what}: {len(batch.errors)} of {total} writes rejected: {shown}")
        return batch.last_seq

    @staticmethod
    async def _wait_progress(batch: _Batch, limit: float, what: str, total: int) -> None:
        before = batch.outstanding
        try:
            await asyncio.wait_for(batch.progress.wait(), limit)
        except TimeoutError:
            if batch.outstanding >= before:
                raise BusUnavailable(
                    f"{what}: {batch.outstanding} of {total} writes not acknowledged within {limit:.0f}s"
                ) from None
