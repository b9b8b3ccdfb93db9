"""The infra gRPC API (xpunet.infra.v1.Infra) over grpc.aio: a unix socket, and TCP with mutual TLS.

`AttachServer` is what the datapath service starts: it builds the vNIC
back-end and pool, the IPAM over the node's pod CIDRs and the state file,
restores state, and serves.  Errors leave here as gRPC status codes with the
reason in the trailing metadata key ``xpunet-reason`` (the CNI plugin maps
them to CNI error codes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import Message

from xpunet._gen.xpunet.infra.v1 import infra_pb2 as pb
from xpunet.datapath.attach.core import (
    Attacher,
    AttachmentRecord,
    BadRequestError,
    EndpointError,
    EndpointSink,
    PodRef,
)
from xpunet.datapath.attach.pool import VnicPool
from xpunet.datapath.attach.settings import AttachSettings
from xpunet.datapath.attach.state import JsonStateFile
from xpunet.datapath.attach.vnic import BackendError, PoolEmptyError, VnicBackend
from xpunet.ipam import AttachmentKey, IpamExhaustedError, node_ranges

if TYPE_CHECKING:
    from xpunet.datapath.cni.agent import CniAgent

log = logging.getLogger(__name__)

SERVICE = "xpunet.infra.v1.Infra"
REASON_KEY = "xpunet-reason"

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def build_backend(settings: AttachSettings) -> VnicBackend:
    ranges = node_ranges(settings.pod_cidrs)
    if settings.backend == "veth":
        from xpunet.datapath.attach.veth import VethBackend

        return VethBackend(
            gateways=[r.gateway for r in ranges],
            mtu=settings.mtu,
            capacity=settings.capacity or None,
            netns=settings.host_netns,
        )
    from xpunet.datapath.attach.sysfs import SysfsBackend

    return SysfsBackend(
        kind=settings.backend,
        sysfs=settings.sysfs,
        pf=settings.sriov_pf,
        port_base=settings.p4_port_base,
        mtu=settings.mtu,
    )


def pod_from_pb(msg: pb.PodIdentity) -> PodRef:
    return PodRef(
        namespace=msg.namespace,
        name=msg.name,
        uid=msg.uid,
        container_id=msg.container_id,
        netns=msg.netns,
        ifname=msg.ifname,
    )


def record_to_pb(record: AttachmentRecord) -> pb.Attachment:
    pod, vnic = record.pod, record.vnic
    out = pb.Attachment(
        pod=pb.PodIdentity(
            namespace=pod.namespace,
            name=pod.name,
            uid=pod.uid,
            container_id=pod.container_id,
            netns=pod.netns,
            ifname=pod.ifname,
        ),
        network=record.network,
        vnic=pb.Vnic(
            kind=vnic.kind,
            device=vnic.device,
            host_ifname=vnic.host_ifname,
            mac=vnic.mac,
            mtu=vnic.mtu,
            pci_address=vnic.pci_address,
            p4_port=vnic.p4_port,
        ),
    )
    for address in record.lease.addresses:
        gateway = next(g for g in record.gateways if g.version == address.version)
        out.ips.append(pb.IpConfig(address=f"{address}/{address.max_prefixlen}", gateway=str(gateway)))
        # The gateway is on-link (it sits on the host side of the vNIC), then the default route.
        out.routes.append(pb.Route(dst=f"{gateway}/{gateway.max_prefixlen}"))
        out.routes.append(pb.Route(dst="0.0.0.0/0" if address.version == 4 else "::/0", gw=str(gateway)))
    return out


class InfraService:
    """The six RPCs over an Attacher."""

    def __init__(self, attacher: Attacher) -> None:
        self.attacher = attacher

    async def attach(self, request: pb.AttachRequest, context: Ctx | None = None) -> pb.Attachment:
        self._require_ready()
        record = await self.attacher.attach(pod_from_pb(request.pod), request.network)
        return record_to_pb(record)

    async def detach(self, request: pb.DetachRequest, context: Ctx | None = None) -> pb.DetachResponse:
        self._require_ready()
        record = await self.attacher.detach(AttachmentKey(request.pod.container_id, request.pod.ifname))
        if record is None:
            return pb.DetachResponse(found=False)
        return pb.DetachResponse(found=True, attachment=record_to_pb(record))

    async def check(self, request: pb.CheckRequest, context: Ctx | None = None) -> pb.Attachment:
        self._require_ready()
        key = AttachmentKey(request.pod.container_id, request.pod.ifname)
        record = self.attacher.check(key)
        if record is None:
            raise RpcFailedError(grpc.StatusCode.NOT_FOUND, "unknown", f"no attachment {key}")
        return record_to_pb(record)

    async def list(self, request: pb.ListRequest, context: Ctx | None = None) -> pb.ListResponse:
        return pb.ListResponse(attachments=[record_to_pb(r) for r in self.attacher.list()])

    async def status(self, request: pb.StatusRequest, context: Ctx | None = None) -> pb.StatusResponse:
        status = self.attacher.status()
        pool = status.pool
        return pb.StatusResponse(
            ready=status.ready,
            reason=status.reason,
            pool=pb.PoolStatus(
                kind=pool.kind,
                free=pool.free,
                attached=pool.attached,
                target=pool.target,
                capacity=pool.capacity or 0,
            ),
            pod_cidrs=list(status.pod_cidrs),
            free_addresses=dict(status.free_addresses),
        )

    async def gc(self, request: pb.GCRequest, context: Ctx | None = None) -> pb.GCResponse:
        self._require_ready()
        valid = [AttachmentKey(v.container_id, v.ifname) for v in request.valid]
        released = await self.attacher.gc(request.network, valid)
        return pb.GCResponse(
            released=[pb.AttachmentKey(container_id=k.container_id, ifname=k.ifname) for k in released]
        )

    def _require_ready(self) -> None:
        if not self.attacher.ready:
            raise RpcFailedError(grpc.StatusCode.UNAVAILABLE, "not-ready", "the attach server is not ready")

    def handler(self) -> grpc.GenericRpcHandler:
        def method(
            fn: Callable[[Req, Ctx], Awaitable[Resp]],
            request_type: type[Req],
        ) -> grpc.RpcMethodHandler[Req, Resp]:
            return grpc.unary_unary_rpc_method_handler(
                _guarded(fn),
                request_deserializer=request_type.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Attach": method(self.attach, pb.AttachRequest),
                "Detach": method(self.detach, pb.DetachRequest),
                "Check": method(self.check, pb.CheckRequest),
                "List": method(self.list, pb.ListRequest),
                "Status": method(self.status, pb.StatusRequest),
                "GC": method(self.gc, pb.GCRequest),
            },
        )


class RpcFailedError(Exception):
    """An RPC's failure: status code, reason (trailer ``xpunet-reason``) and message."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def failure_of(exc: Exception) -> RpcFailedError:
    """The status code, reason and message a failed RPC answers with: domain errors mapped once, here."""
    if isinstance(exc, RpcFailedError):
        return exc
    if isinstance(exc, BadRequestError):
        return RpcFailedError(grpc.StatusCode.INVALID_ARGUMENT, "bad-request", str(exc))
    if isinstance(exc, PoolEmptyError):
        return RpcFailedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "pool-empty", str(exc))
    if isinstance(exc, IpamExhaustedError):
        return RpcFailedError(grpc.StatusCode.RESOURCE_EXHAUSTED, "ips-exhausted", str(exc))
    if isinstance(exc, BackendError | EndpointError):
        return RpcFailedError(grpc.StatusCode.INTERNAL, "datapath", str(exc))
    log.error("infra API: unexpected error", exc_info=exc)
    return RpcFailedError(grpc.StatusCode.INTERNAL, "internal", f"{type(exc).__name__}: {exc}")


def _guarded(
    fn: Callable[[Req, Ctx], Awaitable[Resp]],
) -> Callable[[Req, Ctx], Awaitable[Resp]]:
    async def call(request: Req, context: Ctx) -> Resp:
        try:
            return await fn(request, context)
        except Exception as exc:
            failure = failure_of(exc)
        await context.abort(failure.code, failure.message, trailing_metadata=((REASON_KEY, failure.reason),))
        raise AssertionError("unreachable: context.abort raises")

    return call


class AttachServer:
    """Start/stop the attach service; the datapath passes its EndpointSink."""

    def __init__(
        self,
        settings: AttachSettings,
        *,
        sink: EndpointSink | None = None,
        backend: VnicBackend | None = None,
    ) -> None:
        self.settings = settings
        ranges = node_ranges(settings.pod_cidrs)
        pool = VnicPool(
            backend or build_backend(settings), target=settings.pool_size, low_water=settings.low_water
        )
        self.attacher = Attacher(
            ranges=ranges, pool=pool, store=JsonStateFile(settings.state_path), sink=sink
        )
        self._server: grpc.aio.Server | None = None
        self.tcp_port = 0
        self.cni_agent: CniAgent | None = None

    async def start(self) -> None:
        await self.attacher.start()
        server = grpc.aio.server()
        service = InfraService(self.attacher)
        server.add_generic_rpc_handlers((service.handler(),))
        self._listen(server)
        await server.start()
        if self.settings.socket_path:
            os.chmod(self.settings.socket_path, 0o600)  # root-only, like the CNI binary that calls it
        self._server = server
        if self.settings.cni_agent_socket:
            from xpunet.datapath.cni.agent import CniAgent
            from xpunet.datapath.cni.local import LocalTarget

            # Verbs for this datapath's own socket run on this event loop and call the service
            # in-process (no gRPC round trip, no thread hop).
            local = LocalTarget(service, asyncio.get_running_loop(), self.settings.socket_path)
            self.cni_agent = CniAgent(
                self.settings.cni_agent_socket, netns=self.settings.host_netns, local=local
            )
            await self.cni_agent.start()
        log.info(
            "infra API serving on %s",
            ", ".join(
                x
                for x in (
                    self.settings.socket_path and f"unix:{self.settings.socket_path}",
                    self.settings.tcp_address and f"tcp:{self.tcp_port} (mTLS)",
                )
                if x
            ),
        )

    def _listen(self, server: grpc.aio.Server) -> None:
        if self.settings.socket_path:
            path = Path(self.settings.socket_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # a stale socket from a previous run
            server.add_insecure_port(f"unix:{path}")
        if self.settings.tcp_address:
            tls = self.settings.tls
            assert tls is not None  # AttachSettings enforces it
            creds = grpc.ssl_server_credentials(
                [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
                root_certificates=Path(tls.client_ca).read_bytes(),
                require_client_auth=True,
            )
            self.tcp_port = server.add_secure_port(self.settings.tcp_address, creds)

    async def stop(self, grace: float | None = 1.0) -> None:
        if self.cni_agent is not None:
            await self.cni_agent.stop()
            self.cni_agent = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.attacher.stop()
