"""A nats-py client with a lean path for the hot messages: KV watches, put_many acks, core subscriptions.

Per message, nats-py matches the control line with regular expressions,
parses headers into a dict, builds a ``Msg``, puts it on a per-subscription
``asyncio.Queue`` and hands it to a callback task: most of the client CPU of a
KV update end to end (bench/bus.py), for work the bus mostly does not need.
Here:

* ``LeanParser`` reads ``MSG``/``HMSG`` by offsets (one ``find`` and one
  ``split`` per control line) and leaves every other protocol line (INFO,
  PING, PONG, +OK, -ERR) to nats-py's own parser, so connection handling is
  nats-py's.
* A *direct* subscription (``LeanClient.subscribe_direct``) gets
  ``handler(subject, reply, payload, raw_headers)`` called synchronously from
  the parser, with bytes as they came off the wire: no header parsing unless
  the handler asks (``parse_headers``), no ``Msg``, no queue, no task.  The
  subscription is otherwise an ordinary nats-py one (re-subscribed after a
  reconnect, drained, unsubscribed), so messages keep their order.
* ``send_prepared`` writes PUB commands the caller encoded itself (subjects
  made of validated parts, headers encoded once per batch) straight to the
  socket when connected, instead of through nats-py's flusher task.

It also closes what nats-py leaves open: the stream of a reconnect attempt
whose handshake failed, and an attempt that outlived ``close()`` (see
``_connect_to_server``).

This leans on nats-py internals that have been stable since 2.0 (``_ps``,
``_process_msg``, ``_subs``, ``_remove_sub``, ``_send_command``,
``_flush_pending``, ``_pending``, ``_pending_data_size``, ``_process_op_err``,
``_error_cb``, ``_connect_to_server``, ``_close``, ``_transport``);
requirements.lock pins the version, and every bus integration test runs
through this path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Protocol

import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol.parser import Parser

logger = logging.getLogger(__name__)

# subject, reply (b"" when none), payload, raw header block (None when none)
DirectHandler = Callable[[bytes, bytes, bytes, bytes | None], None]

_CRLF = b"\r\n"
_HEADER_LINE = b"NATS/1.0"
_STATUS_AT = len(_HEADER_LINE)
_MAX_CONTROL_LINE = 4096
# The rules nats-py applies to header names and values it sends.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def parse_headers(raw: bytes) -> dict[str, str]:
    """A NATS header block as a dict, like nats-py: an inline status becomes ``Status``/``Description``.

    ``raw`` is ``NATS/1.0[ <status>[ <description>]]\\r\\n(<Name>: <value>\\r\\n)*\\r\\n``.
    Lines without a colon and names that are not ASCII tokens are skipped;
    values are decoded as UTF-8 with replacement.
    """
    head, _, rest = raw.partition(_CRLF)
    out: dict[str, str] = {}
    if head[_STATUS_AT : _STATUS_AT + 1] == b" ":
        code, _, description = head[_STATUS_AT + 1 :].partition(b" ")
        status = code.strip().decode("ascii", "replace")
        if status.isdigit():
            out["Status"] = status
        description = description.strip()
        if description:
            out["Description"] = description.decode("utf-8", "replace")
    for line in rest.split(_CRLF):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        # Stripped and non-empty: whitespace inside splits it (str.split() and isspace() agree on
        # what whitespace is); a C call, where a per-character generator cost ~1.5 us per header.
        if not key or len(key.split()) != 1:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """A header block as nats-py would send it; raises ``nats.errors.BadHeaderError`` for a bad name."""
    parts = [_HEADER_LINE, _CRLF]
    for name, value in headers.items():
        key = name.strip()
        if not key:
            continue
        if _HEADER_NAME.fullmatch(key) is None:
            raise nats.errors.BadHeaderError(key)
        parts += (key.encode(), b": ", value.strip().translate(_VALUE_NEWLINES).encode(), _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


class ParserHost(Protocol):
    """What ``LeanParser`` needs from its client (``LeanClient``; a recorder in the parser's unit tests).

    Connection-level lines also go to nats-py's parser, which calls the
    host's ``_process_info``, ``_process_ping``, ``_process_pong`` and ``_process_err``.
    """

    @property
    def _direct(self) -> Mapping[int, DirectHandler]: ...

    @property
    def _subs(self) -> Mapping[int, Any]: ...

    @property
    def stats(self) -> MutableMapping[str, int]: ...

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None: ...


class LeanParser(Parser):
    """The server→client protocol parser of a ``LeanClient`` (see the module docstring)."""

    def __init__(self, nc: ParserHost) -> None:
        # Parser.__init__ is replaced, not extended: it would reset() before _other exists.
        self.nc = nc
        self._host = nc
        self._other = Parser(nc)
        self._epoch = 0
        self.reset()

    def reset(self) -> None:
        self._chunks: list[bytes] = []
        self._have = 0  # bytes in _chunks
        self._want = 0  # bytes needed before parsing is worth another try (0: try on every chunk)
        self._epoch += 1  # a reset during an await inside parse() ends that parse
        self._other.reset()

    async def parse(self, data: bytes = b"") -> None:
        if data:
            self._chunks.append(bytes(data))
            self._have += len(data)
        if not self._chunks or self._have < self._want:
            return
        buf = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        end = len(buf)
        pos = 0
        want = 0
        epoch = self._epoch
        nc = self._host
        direct = nc._direct
        subs = nc._subs
        stats = nc.stats
        try:
            while pos < end:
                eol = buf.find(_CRLF, pos)
                if eol < 0:
                    if end - pos > _MAX_CONTROL_LINE:
                        raise nats.errors.ProtocolError("nats: control line too long")
                    break
                line = buf[pos:eol]
                if line[:4] == b"MSG " or line[:5] == b"HMSG ":
                    args = line.split()
                    try:
                        if len(args) == 4:  # MSG subject sid size
                            subject, sid_b, reply, hsize, size = args[1], args[2], b"", 0, int(args[3])
                        elif len(args) == 5 and args[0] == b"MSG":  # MSG subject sid reply size
                            subject, sid_b, reply, hsize, size = args[1], args[2], args[3], 0, int(args[4])
                        elif len(args) == 5:  # HMSG subject sid hsize size
                            subject, sid_b, reply = args[1], args[2], b""
                            hsize, size = int(args[3]), int(args[4])
                        elif len(args) == 6 and args[0] == b"HMSG":  # HMSG subject sid reply hsize size
                            subject, sid_b, reply = args[1], args[2], args[3]
                            hsize, size = int(args[4]), int(args[5])
                        else:
                            raise ValueError(line)
                        sid = int(sid_b)
                    except ValueError:
                        raise nats.errors.ProtocolError("nats: malformed MSG") from None
                    start = eol + 2
                    stop = start + size
                    if stop + 2 > end:
                        want = stop + 2 - pos  # the whole message, from its control line
                        break
                    pos = stop + 2
                    if hsize:
                        headers: bytes | None = buf[start : start + hsize]
                        payload = buf[start + hsize : stop]
                    else:
                        headers = None
                        payload = buf[start:stop]
                    handler = direct.get(sid)
                    if handler is not None and sid in subs:
                        stats["in_msgs"] += 1
                        stats["in_bytes"] += len(payload)
                        try:
                            handler(subject, reply, payload, headers)
                        except Exception:
                            # A handler bug must not take the connection down with it.
                            logger.exception("bus: handler for %r failed", subject)
                    else:
                        # nats-py annotates headers as bytes but its own parser passes None too.
                        await nc._process_msg(sid, subject, reply, payload, headers)  # type: ignore[arg-type]
                        if self._epoch != epoch:
                            return  # the connection was reset meanwhile: the buffer is stale
                else:
                    # Connection-level lines are rare: nats-py's parser handles them as it always does.
                    pos = eol + 2
                    other = self._other
                    other.reset()
                    other.buf.extend(line + _CRLF)
                    await other.parse()
                    if self._epoch != epoch:
                        return
                    if other.buf:
                        raise nats.errors.ProtocolError(f"nats: unexpected protocol line {line[:40]!r}")
        finally:
            if self._epoch == epoch:
                rest = buf[pos:] if pos < end else b""
                self._chunks = [rest] if rest else []
                self._have = len(rest)
                self._want = want


class LeanClient(Client):
    """nats-py's ``Client`` with direct subscriptions and prepared publishes (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, DirectHandler] = {}
        self._ps = LeanParser(self)
        self._closed_for_good = False  # close()/drain() ran: no new connection from here on

    async def subscribe_direct(
        self, subject: str, handler: DirectHandler, *, queue: str = ""
    ) -> Subscription:
        """Subscribe with ``handler`` called synchronously from the reader for each message, in order.

        The handler must not block and should not raise (an exception is
        logged and the message dropped).
        """
        # nats-py numbers subscriptions by incrementing _sid before its first
        # await, so the handler is in place before the SUB can reach the server.
        sid = self._sid + 1
        self._direct[sid] = handler
        try:
            sub = await self.subscribe(subject, queue=queue)
        except BaseException:
            self._direct.pop(sid, None)
            raise
        if sub._id != sid:
            self._direct.pop(sid, None)
            self._direct[sub._id] = handler
            raise RuntimeError(f"nats-py numbered subscription {sub._id}, expected {sid}")
        return sub

    async def _connect_to_server(self, s: Any) -> None:
        # nats-py keeps one transport and replaces its stream on every attempt.
        # When a reconnect attempt's handshake fails (no INFO or PONG in time,
        # -ERR), its reconnect loop retries without closing that stream, and
        # the replaced socket stays open until the garbage collector finds it.
        # Close whatever the transport holds first; a closed stream ignores it.
        self.close_transport()
        if self._closed():
            raise asyncio.CancelledError  # see below; checked before opening anything
        await super()._connect_to_server(s)
        if self._closed():
            # close() cancelled the reconnect task while this attempt connected,
            # and Python 3.11's wait_for inside nats-py dropped that cancel
            # (it returns an inner result that is ready): the attempt would go on
            # to CONNECTED on a closed client.  Stop it as the cancel would have.
            self.close_transport()
            raise asyncio.CancelledError

    async def _close(self, status: int, do_cbs: bool = True) -> None:
        # nats-py's own status cannot tell a final close from the close of a
        # failed first attempt (both leave it CLOSED until the next attempt).
        if status == Client.CLOSED:
            self._closed_for_good = True
        await super()._close(status, do_cbs)

    def _closed(self) -> bool:
        # A method, not the attribute: mypy would keep the attribute narrowed across the await.
        return self._closed_for_good

    def close_transport(self) -> None:
        """Close the current stream, if any; idempotent (a closed stream ignores it)."""
        if self._transport is not None:
            self._transport.close()  # type: ignore[no-untyped-call]  # nats-py leaves Transport.close unannotated

    def _remove_sub(self, sid: int, max_msgs: int = 0) -> None:
        super()._remove_sub(sid, max_msgs)
        self._direct.pop(sid, None)

    async def send_prepared(self, commands: list[bytes], *, messages: int, payload_bytes: int) -> None:
        """Send encoded ``PUB``/``HPUB`` commands, with ``publish``'s checks (queued while disconnected).

        The caller built the subjects from validated parts and checked each
        payload against ``max_payload``.
        """
        if self.is_closed:
            raise nats.errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        data = b"".join(commands)
        if not self.is_connected and (
            self._max_pending_size <= 0 or len(data) + self._pending_data_size > self._max_pending_size
        ):
            raise nats.errors.OutboundBufferLimitError
        self.stats["out_msgs"] += messages
        self.stats["out_bytes"] += payload_bytes
        transport = self._transport
        if self.is_connected and transport is not None and not transport.at_eof():
            # Straight to the socket, behind whatever publishes are still pending (so the order
            # on the wire is the order of the calls): handing the write to nats-py's flusher task
            # would cost the caller's next await a loop iteration before anything is sent.  The
            # flusher never awaits between taking the pending list and clearing it, so nothing
            # is written twice or out of order.  A failed write is handled as the flusher handles
            # it (the connection's error path; the lost publishes' acks never come).
            pending = self._pending
            pending.append(data)
            self._pending = []
            self._pending_data_size = 0
            try:
                transport.writelines(pending)
                await transport.drain()  # type: ignore[no-untyped-call]  # backpressure, as the flusher does
            except OSError as exc:
                await self._error_cb(exc)
                await self._process_op_err(exc)
            return
        await self._send_command(data)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


def pub_command(subject: bytes, reply: bytes, payload: bytes, headers: bytes | None) -> bytes:
    """One encoded ``PUB`` (or ``HPUB`` with a header block from ``encode_headers``)."""
    if headers is None:
        return b"PUB %b %b %d\r\n%b\r\n" % (subject, reply, len(payload), payload)
    return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
        subject,
        reply,
        len(headers),
        len(headers) + len(payload),
        headers,
        payload,
    )


__all__ = [
    "DirectHandler",
    "LeanClient",
    "LeanParser",
    "ParserHost",
    "encode_headers",
    "parse_headers",
    "pub_command",
]
