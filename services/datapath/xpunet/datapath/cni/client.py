"""The plugin's infra API client (synchronous gRPC: one call per plugin run).

gRPC failures are mapped here, once, to CNI errors naming the problem: an
unreachable datapath (try again later), a refused client certificate, an
empty vNIC pool, exhausted IPs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import Message

from xpunet.datapath.cni.config import NetConf, TlsClient
from xpunet.datapath.cni.errors import (
    DATAPATH_ERROR,
    INVALID_CONFIG,
    IPS_EXHAUSTED,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
)

SERVICE = "/xpunet.infra.v1.Infra/"
REASON_KEY = "xpunet-reason"

Resp = TypeVar("Resp", bound=Message)
Resp_co = TypeVar("Resp_co", bound=Message, covariant=True)


class Pending(Protocol[Resp_co]):
    def result(self) -> Resp_co: ...


class InfraCalls(Protocol):
    """What the verbs call: the gRPC client below, or the agent's in-process one (cni/local.py)."""

    def call(self, method: str, request: Message, response_type: type[Resp]) -> Resp: ...

    def start(self, method: str, request: Message, response_type: type[Resp]) -> Pending[Resp]: ...

    def close(self) -> None: ...


class InfraClient:
    def __init__(self, conf: NetConf) -> None:
        self.conf = conf
        if conf.address:
            assert conf.tls is not None  # parse_conf requires it with an address
            self.target = conf.address
            try:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=Path(conf.tls.ca).read_bytes(),
                    private_key=Path(conf.tls.key).read_bytes() if conf.tls.key else None,
                    certificate_chain=Path(conf.tls.cert).read_bytes() if conf.tls.cert else None,
                )
            except OSError as exc:
                raise CniError(
                    INVALID_CONFIG, f"cannot read a TLS file of the network config: {exc}"
                ) from exc
            name = conf.tls.server_name
            options = [("grpc.ssl_target_name_override", name)] if name else []
            self.channel = grpc.secure_channel(conf.address, creds, options=options)
        else:
            self.target = f"unix:{conf.socket}"
            self.channel = grpc.insecure_channel(self.target)

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: Message, response_type: type[Resp]) -> Resp:
        return self.start(method, request, response_type).result()

    def start(self, method: str, request: Message, response_type: type[Resp]) -> _Pending[Resp]:
        """Send the call now, wait for it with `.result()`: the plugin does other work meanwhile."""
        stub: grpc.UnaryUnaryMultiCallable[Message, Resp] = self.channel.unary_unary(
            SERVICE + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return _Pending(self, method, stub.future(request, timeout=self.conf.timeout))


class _Pending(Generic[Resp]):
    def __init__(self, client: InfraClient, method: str, future: Any) -> None:
        self._client = client
        self._method = method
        self._future = future

    def result(self) -> Resp:
        try:
            response: Resp = self._future.result()
        except grpc.RpcError as exc:
            raise map_rpc_error(exc, self._method, self._client.target, self._client.conf.tls) from exc
        return response


def map_rpc_error(exc: grpc.RpcError, method: str, target: str, tls: TlsClient | None = None) -> CniError:
    # The errors grpc raises are also grpc.Call objects (code, details, trailing metadata).
    call: Any = exc
    is_call = hasattr(call, "code")
    code: grpc.StatusCode = call.code() if is_call else grpc.StatusCode.UNKNOWN
    details: str = (call.details() if is_call else str(exc)) or ""
    trailing = (call.trailing_metadata() if is_call else None) or ()
    reason = next((str(v) for k, v in trailing if k == REASON_KEY), "")
    return map_status(code, reason, details, method, target, tls)


def map_status(
    code: grpc.StatusCode, reason: str, details: str, method: str, target: str, tls: TlsClient | None = None
) -> CniError:
    """The CNI error for an infra API failure (status code, ``xpunet-reason``, details)."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and reason != "not-ready":
        lowered = details.lower()
        unreachable = (
            "connection refused",
            "no route",
            "resolution",
            "deadline",
            "timed out",
            "no such file",
        )
        if tls is not None and not any(word in lowered for word in unreachable):
            # With TLS 1.3 the server refuses a client certificate after the client's side of the
            # handshake is done: the client only sees the connection closed.  Say what is likely.
            if not tls.cert:
                why = "no client certificate is configured (datapath.tls.cert/key); the datapath requires one"
            else:
                why = f"the datapath refused the connection: is client certificate {tls.cert} from its CA?"
            return CniError(
                TRY_AGAIN_LATER, f"mutual TLS with the datapath at {target} failed: {why}", details
            )
        return CniError(TRY_AGAIN_LATER, f"datapath unreachable at {target} ({method}): {code.name}", details)
    if reason == "not-ready":
        return CniError(TRY_AGAIN_LATER, "datapath is not ready to attach pods yet", details)
    if reason == "pool-empty":
        return CniError(TRY_AGAIN_LATER, "vNIC pool empty: no interface free for the pod", details)
    if reason == "ips-exhausted":
        return CniError(IPS_EXHAUSTED, "pod IPs exhausted on this node", details)
    if reason == "unknown" or code == grpc.StatusCode.NOT_FOUND:
        return CniError(UNKNOWN_CONTAINER, "the datapath has no attachment for this container", details)
    if reason == "bad-request" or code == grpc.StatusCode.INVALID_ARGUMENT:
        return CniError(INVALID_CONFIG, f"the datapath rejected the request: {details}", details)
    return CniError(DATAPATH_ERROR, f"datapath error in {method}: {details or code.name}", details)
