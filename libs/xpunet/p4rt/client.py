"""The P4Runtime client (grpc.aio) for any P4Runtime server: infrap4d, bmv2, softipu.

* **Arbitration**: a background task keeps a StreamChannel open, sends the
  MasterArbitrationUpdate and learns the role (primary / backup) from the
  server's replies and notifications.  When the stream breaks it re-opens it
  with exponential backoff and re-arbitrates; :attr:`Arbitration.epoch`
  increases with every new stream, which tells the owner to reconcile (the
  target may have restarted).  With ``take_over_when_vacant`` a backup that is
  told the role has no primary re-arbitrates with an election id above the
  highest one the server has seen.
* **Pipeline**: :meth:`P4RuntimeClient.set_pipeline` installs with
  VERIFY_AND_COMMIT when the target has none, and RECONCILE_AND_COMMIT when it
  has one (forwarding state is kept); the cookie identifies the pipeline.
* **Write**: updates (serialised by the caller, see :mod:`xpunet.p4rt.wire`)
  are sent in batches of at most ``max_batch``, streamed from a lazy source; per-update
  errors are decoded from the ``google.rpc.Status`` details and raised once, at
  the end, as one :class:`~xpunet.p4rt.errors.TargetError` whose ``updates``
  index the caller's sequence.
* **Read**: streaming, with the spec's wildcards (table id 0, empty match).

Every grpc error is mapped here, once, to xpunet's retryable / permanent errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from xpunet.p4rt.errors import TargetError, UpdateError, classify
from xpunet.p4rt.wire import frame_write_request

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024 * 1024
_U64 = (1 << 64) - 1
_Cfg = p4runtime_pb2.SetForwardingPipelineConfigRequest
_Get = p4runtime_pb2.GetForwardingPipelineConfigRequest


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS for the channel; ``client_cert`` + ``client_key`` make it mutual TLS."""

    ca_cert: bytes | None = None  # None: the system's roots
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str | None = None  # expected name in the server certificate, if not the address host


@dataclass(frozen=True, slots=True)
class ClientSettings:
    address: str
    device_id: int = 1
    election_id: int = 1
    role: str = ""  # "" is the default (full-access) role
    tls: TlsOptions | None = None
    max_batch: int = 1000
    rpc_timeout: float = 60.0
    reconnect_min: float = 0.05
    reconnect_max: float = 5.0
    take_over_when_vacant: bool = False

    def __post_init__(self) -> None:
        if self.max_batch <= 0:
            raise ValueError(f"max_batch must be > 0, got {self.max_batch}")
        if not 0 < self.election_id <= (1 << 128) - 1:
            raise ValueError(f"election_id must be a positive 128-bit integer, got {self.election_id}")
        if self.tls is not None and (self.tls.client_cert is None) != (self.tls.client_key is None):
            raise ValueError("tls: client_cert and client_key go together")


class Role(enum.Enum):
    PRIMARY = "primary"
    BACKUP = "backup"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class Arbitration:
    role: Role
    election_id: int  # ours
    primary_election_id: int | None  # the highest election id the server reports
    has_primary: bool
    epoch: int  # number of stream sessions opened so far; a change means "reconcile"


class PipelineAction(enum.Enum):
    INSTALLED = "installed"  # VERIFY_AND_COMMIT: the target had no pipeline (or could not reconcile)
    RECONCILED = "reconciled"  # RECONCILE_AND_COMMIT: forwarding state kept


def pipeline_cookie(p4info: p4info_pb2.P4Info, device_config: bytes = b"") -> int:
    """A 64-bit cookie naming a pipeline by content."""
    digest = hashlib.sha256(p4info.SerializeToString(deterministic=True) + device_config).digest()
    return int.from_bytes(digest[:8], "big")


def map_rpc_error(exc: grpc.aio.AioRpcError, *, offset: int = 0, what: str = "") -> TargetError:
    """Turn a gRPC failure into xpunet's error, decoding per-update p4.v1.Errors."""
    code = exc.code().name
    message = f"{what}: {exc.details()}" if what else str(exc.details())
    updates: list[UpdateError] = []
    for key, value in exc.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        status.ParseFromString(value)
        for i, detail in enumerate(status.details):
            error = p4runtime_pb2.Error()
            if not detail.Unpack(error) or error.canonical_code == code_pb2.OK:
                continue
            updates.append(
                UpdateError(
                    index=offset + i,
                    code=code_pb2.Code.Name(error.canonical_code),
                    message=error.message,
                    space=error.space,
                    target_code=error.code,
                )
            )
    return classify(code, message, tuple(updates))


def _uint128(value: int) -> p4runtime_pb2.Uint128:
    return p4runtime_pb2.Uint128(high=value >> 64, low=value & _U64)


def _int128(value: p4runtime_pb2.Uint128) -> int:
    return (value.high << 64) | value.low


class P4RuntimeClient:
    """One controller connection to one device."""

    def __init__(
        self, settings: ClientSettings, *, on_arbitration: Callable[[Arbitration], None] | None = None
    ) -> None:
        self.settings = settings
        self._on_arbitration = on_arbitration
        self._election_id = settings.election_id
        self._arbitration = Arbitration(Role.DISCONNECTED, settings.election_id, None, False, 0)
        self._changed = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None  # the generated stub is untyped
        self._stream_task: asyncio.Task[None] | None = None
        self._call: Any = None  # the open StreamChannel call, if any
        self._write_raw: Any = None
        self._closed = False
        self.packets_in: asyncio.Queue[p4runtime_pb2.PacketIn] = asyncio.Queue(maxsize=10_000)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A rejected batch carries one p4.v1.Error per update in a trailer: ~40 bytes each.
            ("grpc.max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ]
        tls = self.settings.tls
        if tls is None:
            self._channel = grpc.aio.insecure_channel(self.settings.address, options=options)
        else:
            creds = grpc.ssl_channel_credentials(
                root_certificates=tls.ca_cert, private_key=tls.client_key, certificate_chain=tls.client_cert
            )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.aio.secure_channel(self.settings.address, creds, options=options)
        self._stub = p4runtime_pb2_grpc.P4RuntimeStub(self._channel)  # type: ignore[no-untyped-call]
        # Write takes a pre-encoded request (see write_encoded).
        self._write_raw = self._channel.unary_unary(
            "/p4.v1.P4Runtime/Write", response_deserializer=p4runtime_pb2.WriteResponse.FromString
        )
        self._stream_task = asyncio.create_task(
            self._keep_stream(), name=f"p4rt-stream-{self.settings.address}"
        )

    async def close(self) -> None:
        self._closed = True
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
            self._stream_task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> P4RuntimeClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ---------------------------------------------------------- arbitration

    @property
    def arbitration(self) -> Arbitration:
        return self._arbitration

    @property
    def election_id(self) -> int:
        return self._election_id

    async def wait_for(self, predicate: Callable[[Arbitration], bool]) -> Arbitration:
        """Wait until the arbitration state satisfies ``predicate`` (bound it with asyncio.timeout)."""
        while not predicate(self._arbitration):
            event = self._changed
            await event.wait()
        return self._arbitration

    async def wait_arbitrated(self) -> Arbitration:
        return await self.wait_for(lambda a: a.role is not Role.DISCONNECTED)

    async def wait_primary(self) -> Arbitration:
        return await self.wait_for(lambda a: a.role is Role.PRIMARY)

    def _set_arbitration(self, arbitration: Arbitration) -> None:
        if arbitration == self._arbitration:
            return
        self._arbitration = arbitration
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        if self._on_arbitration is not None:
            self._on_arbitration(arbitration)

    def _arbitration_request(self) -> p4runtime_pb2.StreamMessageRequest:
        request = p4runtime_pb2.StreamMessageRequest()
        arb = request.arbitration
        arb.device_id = self.settings.device_id
        if self.settings.role:
            arb.role.name = self.settings.role
        arb.election_id.CopyFrom(_uint128(self._election_id))
        return request

    async def _keep_stream(self) -> None:
        delay = self.settings.reconnect_min
        epoch = 0
        while not self._closed:
            epoch += 1
            call = self._stub.StreamChannel()
            self._call = call
            arbitrated = False
            try:
                await call.write(self._arbitration_request())
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        log.warning("p4rt %s: stream closed by the server", self.settings.address)
                        break
                    if response.HasField("arbitration"):
                        arbitrated = True
                        await self._handle_arbitration(call, response.arbitration, epoch)
                    elif response.HasField("packet"):
                        with contextlib.suppress(asyncio.QueueFull):
                            self.packets_in.put_nowait(response.packet)
                    elif response.HasField("error"):
                        log.warning(
                            "p4rt %s: stream error: %s", self.settings.address, response.error.message
                        )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "p4rt %s: stream failed: %s %s", self.settings.address, exc.code().name, exc.details()
                )
            finally:
                self._call = None
                call.cancel()
            self._set_arbitration(Arbitration(Role.DISCONNECTED, self._election_id, None, False, epoch))
            if arbitrated:
                delay = self.settings.reconnect_min
            # Jitter keeps a fleet of datapaths from reconnecting in lockstep after a target restart.
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _handle_arbitration(
        self, call: Any, update: p4runtime_pb2.MasterArbitrationUpdate, epoch: int
    ) -> None:
        code = update.status.code
        highest = _int128(update.election_id) if update.HasField("election_id") else None
        if code == code_pb2.OK:
            role, has_primary = Role.PRIMARY, True
        else:
            role, has_primary = Role.BACKUP, code == code_pb2.ALREADY_EXISTS
        self._set_arbitration(Arbitration(role, self._election_id, highest, has_primary, epoch))
        log.info(
            "p4rt %s: %s (election id %d, highest %s)",
            self.settings.address,
            role.value,
            self._election_id,
            highest,
        )
        if self.settings.take_over_when_vacant and code == code_pb2.NOT_FOUND:
            self._election_id = max(self._election_id, (highest or 0) + 1)
            log.info(
                "p4rt %s: no primary; claiming with election id %d", self.settings.address, self._election_id
            )
            await call.write(self._arbitration_request())

    # ------------------------------------------------------------- pipeline

    async def get_pipeline_cookie(self) -> int | None:
        """The cookie of the installed pipeline, or None when the target has none."""
        request = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.settings.device_id, response_type=_Get.COOKIE_ONLY
        )
        try:
            response = await self._stub.GetForwardingPipelineConfig(
                request, timeout=self.settings.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return None
            raise map_rpc_error(exc, what="GetForwardingPipelineConfig") from exc
        if not response.HasField("config"):
            return None
        return int(response.config.cookie.cookie)

    async def get_pipeline(self) -> p4runtime_pb2.ForwardingPipelineConfig | None:
        request = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.settings.device_id, response_type=_Get.ALL
        )
        try:
            response = await self._stub.GetForwardingPipelineConfig(
                request, timeout=self.settings.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise map_rpc_error(exc, what="GetForwardingPipelineConfig") from exc
        config: p4runtime_pb2.ForwardingPipelineConfig = response.config
        return config

    async def set_pipeline(
        self,
        p4info: p4info_pb2.P4Info,
        *,
        device_config: bytes = b"",
        cookie: int | None = None,
        keep_state: bool = True,
    ) -> PipelineAction:
        """Install ``p4info``: VERIFY_AND_COMMIT on an empty target, RECONCILE_AND_COMMIT otherwise.

        ``keep_state=False`` always commits (the target's tables are cleared).
        """
        if cookie is None:
            cookie = pipeline_cookie(p4info, device_config)
        if not keep_state:
            await self._set_pipeline_rpc(p4info, device_config, cookie, _Cfg.VERIFY_AND_COMMIT)
            return PipelineAction.INSTALLED
        current = await self.get_pipeline_cookie()
        action = PipelineAction.INSTALLED if current is None else PipelineAction.RECONCILED
        try:
            await self._set_pipeline_rpc(
                p4info,
                device_config,
                cookie,
                _Cfg.VERIFY_AND_COMMIT if current is None else _Cfg.RECONCILE_AND_COMMIT,
            )
        except TargetError as exc:
            if exc.code != "UNIMPLEMENTED" or current is None or current == cookie:
                raise
            # The target cannot reconcile a new pipeline: installing it clears its tables.
            log.warning(
                "p4rt %s: RECONCILE_AND_COMMIT unsupported; committing (tables are cleared)",
                self.settings.address,
            )
            await self._set_pipeline_rpc(p4info, device_config, cookie, _Cfg.VERIFY_AND_COMMIT)
            action = PipelineAction.INSTALLED
        log.info("p4rt %s: pipeline %s (cookie %#x)", self.settings.address, action.value, cookie)
        return action

    async def _set_pipeline_rpc(
        self, p4info: p4info_pb2.P4Info, device_config: bytes, cookie: int, action: _Cfg.Action
    ) -> None:
        request = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.settings.device_id,
            role=self.settings.role,
            election_id=_uint128(self._election_id),
            action=action,
        )
        request.config.p4info.CopyFrom(p4info)
        request.config.p4_device_config = device_config
        request.config.cookie.cookie = cookie
        try:
            await self._stub.SetForwardingPipelineConfig(request, timeout=self.settings.rpc_timeout)
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, what="SetForwardingPipelineConfig") from exc

    # ---------------------------------------------------------------- write

    async def write(
        self,
        updates: Sequence[p4runtime_pb2.Update],
        *,
        atomicity: p4runtime_pb2.WriteRequest.Atomicity = p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR,
    ) -> None:
        """Send ``updates`` in order, in batches of at most ``max_batch`` (see :meth:`write_encoded`)."""
        await self.write_encoded([u.SerializeToString() for u in updates], atomicity=atomicity)

    async def write_encoded(
        self,
        updates: Iterable[bytes],
        *,
        atomicity: p4runtime_pb2.WriteRequest.Atomicity = p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR,
    ) -> None:
        """Send serialised ``p4.v1.Update`` messages in order, in batches of at most ``max_batch``.

        ``updates`` is consumed lazily, one batch at a time, and the next batch
        is taken from it while the previous Write is in flight: a generator that
        encodes on demand keeps memory bounded by two batches however many
        updates there are, and its encoding overlaps the target's work.  One
        Write is in flight at a time, so batches are applied in order.

        Every batch is sent even when an earlier one had rejected updates; the
        rejections are raised together at the end (indexes count from the first
        update).  A failure of a whole call (target unreachable, not primary) is
        raised at once: the batches before it were applied, the rest were not sent.
        """
        rejected: list[UpdateError] = []
        size = self.settings.max_batch
        header = p4runtime_pb2.WriteRequest(
            device_id=self.settings.device_id,
            role=self.settings.role,
            election_id=_uint128(self._election_id),
            atomicity=atomicity,
        ).SerializeToString()
        source = iter(updates)
        batch = list(itertools.islice(source, size))
        start = 0
        while batch:
            call = self._write_raw(frame_write_request(header, batch), timeout=self.settings.rpc_timeout)
            try:
                # Let the call go out before encoding the next batch (the target works meanwhile).
                await asyncio.sleep(0)
            except BaseException:
                call.cancel()
                raise
            try:
                following = list(itertools.islice(source, size))
            except Exception:
                # The source failed: finish the Write in flight, so every batch sent is settled.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call
                raise
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                error = map_rpc_error(exc, offset=start, what="Write")
                if not error.updates:
                    raise error from exc
                rejected.extend(error.updates)
            start += len(batch)
            batch = following
        if rejected:
            raise classify(
                "UNKNOWN", f"Write: {len(rejected)} of {start} update(s) rejected", tuple(rejected)
            )

    # ----------------------------------------------------------------- read

    async def read(self, entities: Sequence[p4runtime_pb2.Entity]) -> AsyncIterator[p4runtime_pb2.Entity]:
        """Stream the entities selected by ``entities`` (wildcards per the spec)."""
        request = p4runtime_pb2.ReadRequest(device_id=self.settings.device_id, role=self.settings.role)
        request.entities.extend(entities)
        call = self._stub.Read(request, timeout=self.settings.rpc_timeout)
        try:
            async for response in call:
                for entity in response.entities:
                    yield entity
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, what="Read") from exc

    async def read_table_entries(
        self, table_id: int = 0, *, with_counters: bool = False
    ) -> list[p4runtime_pb2.TableEntry]:
        """Every entry of ``table_id`` (0: of every table), optionally with direct counter data."""
        query = p4runtime_pb2.Entity()
        query.table_entry.table_id = table_id
        if with_counters:
            query.table_entry.counter_data.SetInParent()
        return [e.table_entry async for e in self.read([query])]

    async def read_default_entry(self, table_id: int) -> p4runtime_pb2.TableEntry:
        query = p4runtime_pb2.Entity()
        query.table_entry.table_id = table_id
        query.table_entry.is_default_action = True
        entries = [e.table_entry async for e in self.read([query])]
        return entries[0]

    async def read_direct_counters(
        self, table_id: int = 0, entry: p4runtime_pb2.TableEntry | None = None
    ) -> list[p4runtime_pb2.DirectCounterEntry]:
        """Direct counters of one entry, of one table, or (``table_id`` 0) of every table with one."""
        query = p4runtime_pb2.Entity()
        if entry is not None:
            query.direct_counter_entry.table_entry.table_id = entry.table_id
            query.direct_counter_entry.table_entry.match.extend(entry.match)
            query.direct_counter_entry.table_entry.priority = entry.priority
        else:
            query.direct_counter_entry.table_entry.table_id = table_id
        return [e.direct_counter_entry async for e in self.read([query])]

    async def read_counters(
        self, counter_id: int, index: int | None = None
    ) -> list[p4runtime_pb2.CounterEntry]:
        query = p4runtime_pb2.Entity()
        query.counter_entry.counter_id = counter_id
        if index is not None:
            query.counter_entry.index.index = index
        return [e.counter_entry async for e in self.read([query])]

    async def api_version(self) -> str:
        try:
            response = await self._stub.Capabilities(
                p4runtime_pb2.CapabilitiesRequest(device_id=self.settings.device_id),
                timeout=self.settings.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, what="Capabilities") from exc
        return str(response.p4runtime_api_version)

    async def packet_out(self, packet: p4runtime_pb2.PacketOut) -> None:
        """Send a PacketOut on the stream (only the primary's are executed by the target)."""
        call = self._call
        if call is None:
            raise classify("UNAVAILABLE", "PacketOut: no open stream")
        try:
            await call.write(p4runtime_pb2.StreamMessageRequest(packet=packet))
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc, what="PacketOut") from exc
