"""softipu's P4Runtime gRPC service (grpc.aio): arbitration, pipeline, Write, Read.

One :class:`SoftIpu` is one device.  Its tables live in a
:class:`~.state.DeviceState`; in-process users (the packet-execution hook,
``xpunetctl trace``) reach them through :attr:`SoftIpu.state`.

Error reporting follows the spec: a Write whose updates all succeed returns OK;
otherwise the call fails with UNKNOWN and the ``grpc-status-details-bin``
trailer carries a ``google.rpc.Status`` whose details hold one ``p4.v1.Error``
per update, in order (OK for the ones that were applied).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from xpunet.datapath.softipu.arbitration import Arbiter, Session, election_id_of
from xpunet.datapath.softipu.entries import EntityError
from xpunet.datapath.softipu.state import DeviceState, Pipeline
from xpunet.p4rt.p4info import P4InfoError, build_schema

log = logging.getLogger(__name__)

API_VERSION = "1.4.0"
READ_CHUNK = 1000  # entities per ReadResponse message
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_GRPC_CODE = {sc.value[0]: sc for sc in grpc.StatusCode}
_Cfg = p4runtime_pb2.SetForwardingPipelineConfigRequest
_Get = p4runtime_pb2.GetForwardingPipelineConfigRequest
_ROLLBACK = (p4runtime_pb2.WriteRequest.ROLLBACK_ON_ERROR, p4runtime_pb2.WriteRequest.DATAPLANE_ATOMIC)

PacketOutHook = Callable[[p4runtime_pb2.PacketOut], list[p4runtime_pb2.PacketIn]]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM material for the server; ``client_ca`` set means mutual TLS (client certs required)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None


class _AbortError(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class SoftIpu(p4runtime_pb2_grpc.P4RuntimeServicer):
    """A P4Runtime device backed by dicts."""

    def __init__(
        self, *, device_id: int = 1, strict_bytestrings: bool = False, gc_freeze_after: int = 50_000
    ) -> None:
        self.device_id = device_id
        self.strict_bytestrings = strict_bytestrings
        # After this many updates since the last time (a big load, then churn), move the heap out of
        # the cyclic GC's reach (gc.collect(1); gc.freeze()), so no full collection walks the tables
        # in the middle of a later Write.  Process-wide; 0 turns it off (an embedding process that
        # manages its own GC).
        self.gc_freeze_after = gc_freeze_after
        self._written_since_freeze = 0
        self.arbiter = Arbiter(device_id)
        self.state: DeviceState | None = None
        self.saved: Pipeline | None = None  # VERIFY_AND_SAVE'd, waiting for COMMIT
        self.packet_out_hook: PacketOutHook | None = None
        # Counts Writes (and pipeline commits), so packet execution knows when to re-mirror the tables.
        self.write_generation = 0
        self._server: grpc.aio.Server | None = None
        self.port = 0  # bound port, once started

    # -------------------------------------------------------------- lifecycle

    async def start(self, address: str = "127.0.0.1:0", *, tls: TlsFiles | None = None) -> int:
        """Listen on ``address``; returns the bound port."""
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        server = grpc.aio.server(options=options)
        # The generated registration helper is untyped.
        p4runtime_pb2_grpc.add_P4RuntimeServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            creds = grpc.ssl_server_credentials(
                [(tls.private_key, tls.cert_chain)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            port = server.add_secure_port(address, creds)
        await server.start()
        self._server = server
        self.port = port
        log.info(
            "softipu device %d listening on port %d (%s)", self.device_id, port, "tls" if tls else "plain"
        )
        return port

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        for session in list(self.arbiter.sessions):
            session.outbox.put_nowait(None)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # ------------------------------------------------------------ stream

    async def StreamChannel(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[p4runtime_pb2.StreamMessageRequest],
        context: grpc.aio.ServicerContext[
            p4runtime_pb2.StreamMessageRequest, p4runtime_pb2.StreamMessageResponse
        ],
    ) -> None:
        session = Session(peer=context.peer())
        self.arbiter.open(session)
        reader = asyncio.create_task(
            self._consume_stream(request_iterator, session), name="softipu-stream-in"
        )
        try:
            while True:
                item = await session.outbox.get()
                if item is None:
                    return
                if isinstance(item, EntityError):
                    await context.abort(_GRPC_CODE[item.code], item.message)
                await context.write(item)
        finally:
            reader.cancel()
            self.arbiter.close(session)

    async def _consume_stream(
        self, requests: AsyncIterator[p4runtime_pb2.StreamMessageRequest], session: Session
    ) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("update")
                if kind == "arbitration":
                    try:
                        self.arbiter.arbitrate(session, request.arbitration)
                    except EntityError as exc:
                        self.arbiter.close(session)
                        session.outbox.put_nowait(exc)
                        return
                elif kind == "packet":
                    self._packet_out(session, request.packet)
                else:
                    log.debug("stream from %s: ignoring %s", session.peer, kind)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        session.outbox.put_nowait(None)

    def _packet_out(self, session: Session, packet: p4runtime_pb2.PacketOut) -> None:
        if self.arbiter.primary(session.role) is not session:
            log.info("dropping PacketOut from non-primary %s", session.peer)
            return
        if self.packet_out_hook is None:
            return
        for packet_in in self.packet_out_hook(packet):
            primary = self.arbiter.primary("")
            if primary is not None:
                primary.outbox.put_nowait(p4runtime_pb2.StreamMessageResponse(packet=packet_in))

    # ------------------------------------------------------------ write

    async def Write(  # noqa: N802
        self,
        request: p4runtime_pb2.WriteRequest,
        context: grpc.aio.ServicerContext[p4runtime_pb2.WriteRequest, p4runtime_pb2.WriteResponse],
    ) -> p4runtime_pb2.WriteResponse:
        try:
            self._check_device(request.device_id)
            self._check_primary(request.role, request)
            state = self._installed()
        except _AbortError as exc:
            await context.abort(_GRPC_CODE[exc.code], exc.message)
        results = state.write(request.updates, rollback=request.atomicity in _ROLLBACK)
        self.write_generation += 1
        self._written_since_freeze += len(results)
        if self.gc_freeze_after and self._written_since_freeze >= self.gc_freeze_after:
            self._freeze_heap()
        failed = sum(1 for code, _ in results if code != code_pb2.OK)
        if failed:
            message = f"{failed} of {len(results)} update(s) failed"
            status = status_pb2.Status(code=code_pb2.UNKNOWN, message=message)
            for code, text in results:
                detail = any_pb2.Any()
                detail.Pack(p4runtime_pb2.Error(canonical_code=code, message=text))
                status.details.append(detail)
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                message,
                trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
            )
        return p4runtime_pb2.WriteResponse()

    def _freeze_heap(self) -> None:
        gc.collect(1)  # young cyclic garbage first (cheap), so little is frozen with the live heap
        gc.freeze()
        log.info(
            "softipu device %d: %d updates since the last freeze; heap frozen out of the cyclic GC",
            self.device_id,
            self._written_since_freeze,
        )
        self._written_since_freeze = 0

    # ------------------------------------------------------------- read

    async def Read(  # noqa: N802
        self,
        request: p4runtime_pb2.ReadRequest,
        context: grpc.aio.ServicerContext[p4runtime_pb2.ReadRequest, p4runtime_pb2.ReadResponse],
    ) -> AsyncIterator[p4runtime_pb2.ReadResponse]:
        # Build every response before the first await: the reply is one consistent snapshot.
        responses: list[p4runtime_pb2.ReadResponse] = []
        try:
            self._check_device(request.device_id)
            state = self._installed()
            current = p4runtime_pb2.ReadResponse()
            for query in request.entities:
                for entity in state.read(query):
                    current.entities.append(entity)
                    if len(current.entities) >= READ_CHUNK:
                        responses.append(current)
                        current = p4runtime_pb2.ReadResponse()
            if current.entities or not responses:
                responses.append(current)
        except _AbortError as exc:
            await context.abort(_GRPC_CODE[exc.code], exc.message)
        except EntityError as exc:
            await context.abort(_GRPC_CODE[exc.code], exc.message)
        for response in responses:
            yield response

    # --------------------------------------------------------- pipeline

    async def SetForwardingPipelineConfig(  # noqa: N802
        self,
        request: p4runtime_pb2.SetForwardingPipelineConfigRequest,
        context: grpc.aio.ServicerContext[
            p4runtime_pb2.SetForwardingPipelineConfigRequest,
            p4runtime_pb2.SetForwardingPipelineConfigResponse,
        ],
    ) -> p4runtime_pb2.SetForwardingPipelineConfigResponse:
        try:
            self._check_device(request.device_id)
            self._check_primary(request.role, request)
            self._set_pipeline(request)
        except _AbortError as exc:
            await context.abort(_GRPC_CODE[exc.code], exc.message)
        return p4runtime_pb2.SetForwardingPipelineConfigResponse()

    def _set_pipeline(self, request: p4runtime_pb2.SetForwardingPipelineConfigRequest) -> None:
        action = request.action
        if action == _Cfg.COMMIT:
            if self.saved is None:
                raise _AbortError(
                    code_pb2.FAILED_PRECONDITION, "COMMIT without a saved pipeline (VERIFY_AND_SAVE first)"
                )
            self._install(self.saved, reconcile=False)
            self.saved = None
            return
        if action not in (
            _Cfg.VERIFY,
            _Cfg.VERIFY_AND_SAVE,
            _Cfg.VERIFY_AND_COMMIT,
            _Cfg.RECONCILE_AND_COMMIT,
        ):
            raise _AbortError(code_pb2.INVALID_ARGUMENT, f"unsupported pipeline action {action}")
        if not request.HasField("config") or not request.config.HasField("p4info"):
            raise _AbortError(code_pb2.INVALID_ARGUMENT, "the request carries no P4Info")
        config = request.config
        try:
            schema = build_schema(config.p4info)
        except P4InfoError as exc:
            raise _AbortError(code_pb2.INVALID_ARGUMENT, f"P4Info rejected: {exc}") from exc
        pipeline = Pipeline(config.p4info, schema, config.p4_device_config, config.cookie.cookie)
        if action == _Cfg.VERIFY:
            return
        if action == _Cfg.VERIFY_AND_SAVE:
            self.saved = pipeline
            return
        self._install(pipeline, reconcile=action == _Cfg.RECONCILE_AND_COMMIT)

    def _install(self, pipeline: Pipeline, *, reconcile: bool) -> None:
        old = self.state
        self.write_generation += 1
        if reconcile and old is not None and _same_p4info(old.pipeline, pipeline):
            # Same contract: every entry still fits; keep the tables as they are.
            old.pipeline = pipeline
            log.info(
                "pipeline reconciled (same P4Info), cookie %d, %d entries kept",
                pipeline.cookie,
                old.entry_count(),
            )
            return
        new = DeviceState(pipeline, strict_bytestrings=self.strict_bytestrings)
        if reconcile and old is not None:
            dropped = new.adopt(old)
            log.info(
                "pipeline reconciled, cookie %d: %d entries kept, %d dropped",
                pipeline.cookie,
                new.entry_count(),
                dropped,
            )
        else:
            log.info(
                "pipeline committed, cookie %d: %d tables, state cleared", pipeline.cookie, len(new.tables)
            )
        self.state = new

    async def GetForwardingPipelineConfig(  # noqa: N802
        self,
        request: p4runtime_pb2.GetForwardingPipelineConfigRequest,
        context: grpc.aio.ServicerContext[
            p4runtime_pb2.GetForwardingPipelineConfigRequest,
            p4runtime_pb2.GetForwardingPipelineConfigResponse,
        ],
    ) -> p4runtime_pb2.GetForwardingPipelineConfigResponse:
        try:
            self._check_device(request.device_id)
            state = self._installed()
        except _AbortError as exc:
            await context.abort(_GRPC_CODE[exc.code], exc.message)
        response = p4runtime_pb2.GetForwardingPipelineConfigResponse()
        config = response.config
        pipeline = state.pipeline
        config.cookie.cookie = pipeline.cookie
        rtype = request.response_type
        if rtype in (_Get.ALL, _Get.P4INFO_AND_COOKIE):
            config.p4info.CopyFrom(pipeline.p4info)
        if rtype in (_Get.ALL, _Get.DEVICE_CONFIG_AND_COOKIE):
            config.p4_device_config = pipeline.device_config
        return response

    async def Capabilities(  # noqa: N802
        self,
        request: p4runtime_pb2.CapabilitiesRequest,
        context: grpc.aio.ServicerContext[
            p4runtime_pb2.CapabilitiesRequest, p4runtime_pb2.CapabilitiesResponse
        ],
    ) -> p4runtime_pb2.CapabilitiesResponse:
        return p4runtime_pb2.CapabilitiesResponse(p4runtime_api_version=API_VERSION)

    # ---------------------------------------------------------- helpers

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise _AbortError(
                code_pb2.NOT_FOUND, f"device id {device_id} is not this device ({self.device_id})"
            )

    def _check_primary(
        self,
        role: str,
        request: p4runtime_pb2.WriteRequest | p4runtime_pb2.SetForwardingPipelineConfigRequest,
    ) -> None:
        if not request.HasField("election_id"):
            raise _AbortError(code_pb2.PERMISSION_DENIED, "the request carries no election id")
        eid = election_id_of(request.election_id)
        if not self.arbiter.allows(role, eid):
            raise _AbortError(
                code_pb2.PERMISSION_DENIED, f"election id {eid} is not the primary of role {role!r}"
            )

    def _installed(self) -> DeviceState:
        if self.state is None:
            raise _AbortError(code_pb2.FAILED_PRECONDITION, "no forwarding pipeline config has been set")
        return self.state


def _same_p4info(a: Pipeline, b: Pipeline) -> bool:
    return a.p4info.SerializeToString(deterministic=True) == b.p4info.SerializeToString(deterministic=True)
