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
from xpunet.bus.nats._errors import ERR_WRONG_LAST_SEQUENCE, ApiError, mapped_errors, parse_api_response
from xpunet.bus.nats._watch import KVWatch
from xpunet.bus.tracing import inject_headers

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


def user_headers(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """The application's headers of a stored message (trace context), without NATS/KV bookkeeping."""
    if not headers:
        return {}
    return {
        name: value
        for name, value in headers.items()
        if not name.startswith(("Nats-", "NATS-", "nats-"))
        and name not in (KV_OPERATION, "Status", "Description")
    }


class _Batch:
    """Bookkeeping for one ``put_many``: outstanding acks, highest revision, failures by key."""

    __slots__ = ("errors", "keys", "last_seq", "outstanding", "progress")

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.outstanding = 0
        self.last_seq = 0
        self.errors: list[tuple[str, str]] = []
        self.progress = asyncio.Event()

    def on_ack(self, index: int, data: bytes) -> None:
        self.outstanding -= 1
        try:
            resp = parse_api_response(data)
            seq = resp["seq"]
            if not isinstance(seq, int):
                raise BusError(f"ack without a sequence: {data[:80]!r}")
            self.last_seq = max(self.last_seq, seq)
        except (ApiError, BusError, KeyError) as exc:
            self.errors.append((self.keys[index], str(exc)))
        if self.outstanding <= PUT_MANY_WINDOW // 2:
            self.progress.set()


class AckRouter:
    """One wildcard inbox subscription per connection; ack subjects are ``<prefix><batch>.<index>``."""

    def __init__(self, bus: NatsBus) -> None:
        self._bus = bus
        self._prefix = ""
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()

    async def prefix(self) -> str:
        async with self._lock:
            if not self._prefix:
                prefix = self._bus.new_inbox() + "."
                with mapped_errors("subscribe to put_many acks"):
                    await self._bus.client.subscribe(
                        prefix + ">",
                        cb=self._on_ack,
                        pending_msgs_limit=4_000_000,
                        pending_bytes_limit=1 << 30,
                    )
                self._prefix = prefix
        return self._prefix

    def open(self, keys: list[str]) -> tuple[str, _Batch]:
        batch_id = str(next(self._ids))
        batch = _Batch(keys)
        self._batches[batch_id] = batch
        return batch_id, batch

    def close(self, batch_id: str) -> None:
        self._batches.pop(batch_id, None)

    async def _on_ack(self, msg: Msg) -> None:
        batch_id, _, index = msg.subject[len(self._prefix) :].partition(".")
        batch = self._batches.get(batch_id)
        if batch is None:
            return  # a late ack of a batch that gave up
        try:
            batch.on_ack(int(index), msg.data)
        except (ValueError, IndexError):
            logger.warning("ignoring malformed put_many ack on %s", msg.subject)


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

    def watch(self, prefix: str = "") -> KVWatch:
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
        put_headers = inject_headers(headers)
        del_headers = {**(put_headers or {}), KV_OPERATION: OP_DELETE}
        prefix = await self._bus.acks.prefix()
        batch_id, batch = self._bus.acks.open([key for key, _ in items])
        reply_base = f"{prefix}{batch_id}."
        publish = self._bus.client.publish
        pre = self._pre
        timeout = self._bus.request_timeout
        what = f"put_many to {self._bucket}"
        try:
            with mapped_errors(what):
                for index, (key, value) in enumerate(items):
                    while batch.outstanding >= PUT_MANY_WINDOW:
                        batch.progress.clear()
                        await self._wait_progress(batch, timeout, what, len(items))
                    batch.outstanding += 1
                    if value is None:
                        await publish(pre + key, b"", reply=reply_base + str(index), headers=del_headers)
                    else:
                        await publish(pre + key, value, reply=reply_base + str(index), headers=put_headers)
                while batch.outstanding > 0:
                    batch.progress.clear()
                    await self._wait_progress(batch, timeout, what, len(items))
        finally:
            self._bus.acks.close(batch_id)
        if batch.errors:
            shown = "; ".join(f"{key}: {err}" for key, err in batch.errors[:5])
            raise BusError(f"{what}: {len(batch.errors)} of {len(items)} writes rejected: {shown}")
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
