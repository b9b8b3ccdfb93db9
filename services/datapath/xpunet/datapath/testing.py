"""Test support for the datapath: softipu that counts the updates it receives, a DatapathService
runner, and a small sample of intents (two pods, a service, two nodes).

``CountingSoftIpu`` is softipu itself; it only tallies the updates its Write
receives, so a test can assert what the datapath sent (no inserts on a restart,
no deletes of unchanged entries).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2

from xpunet.bus.api import StateStore
from xpunet.datapath.p4rt_codec import EntryCodec
from xpunet.datapath.p4rt_target import P4RuntimeTarget
from xpunet.datapath.service import DatapathOptions, DatapathService
from xpunet.datapath.softipu.server import SoftIpu
from xpunet.ir.lb import Backend, BackendSet, Frontend, LbServicePort, service_key
from xpunet.ir.policy import PolicyEndpoint, endpoint_key
from xpunet.model.objects import Node, NodeAddress
from xpunet.p4rt.client import ClientSettings
from xpunet.pipeline.entries import TableEntry
from xpunet.testing.nats import in_background
from xpunet.wire import encode_object

_KIND = {
    p4runtime_pb2.Update.INSERT: "INSERT",
    p4runtime_pb2.Update.MODIFY: "MODIFY",
    p4runtime_pb2.Update.DELETE: "DELETE",
}


class CountingSoftIpu(SoftIpu):
    def __init__(self) -> None:
        super().__init__(device_id=1)
        self.received: Counter[str] = Counter()

    async def Write(  # noqa: N802 - gRPC method name
        self,
        request: p4runtime_pb2.WriteRequest,
        context: grpc.aio.ServicerContext[p4runtime_pb2.WriteRequest, p4runtime_pb2.WriteResponse],
    ) -> p4runtime_pb2.WriteResponse:
        for u in request.updates:
            self.received[_KIND[u.type]] += 1
        return await super().Write(request, context)

    def entries(self, codec: EntryCodec | None = None) -> set[TableEntry]:
        """Every table entry softipu holds, as pipeline entries."""
        codec = codec or EntryCodec()
        assert self.state is not None
        return {codec.decode(e) for t in self.state.tables.values() for e in t.entries.values()}


@dataclass
class Buckets:
    intents: StateStore
    k8s: StateStore
    status: StateStore


class Runner:
    """``async with runner(election_id=..., ports=...) as service``: a DatapathService on softipu."""

    def __init__(self, buckets: Buckets, softipu: SoftIpu, *, node: str = "n1") -> None:
        self.buckets = buckets
        self.softipu = softipu
        self.node = node

    @asynccontextmanager
    async def __call__(
        self,
        *,
        election_id: int = 1,
        ports: Mapping[str, int] | None = None,
        p4info: p4info_pb2.P4Info | None = None,
        take_over: bool = False,
    ) -> AsyncIterator[DatapathService]:
        options = DatapathOptions(coalesce=0.0, status_interval=0.0)
        client = ClientSettings(
            address=f"127.0.0.1:{self.softipu.port}",
            election_id=election_id,
            take_over_when_vacant=take_over,
            reconnect_max=0.2,
        )
        service = DatapathService(
            node=self.node,
            options=options,
            target=P4RuntimeTarget(client, p4info=p4info),
            intents=self.buckets.intents,
            k8s=self.buckets.k8s,
            status=self.buckets.status,
            ports=ports,
        )
        async with in_background(service):
            yield service


# --- sample intents: two pods on n1, a service, two nodes -------------------------------

PORTS = {"shop/web": 100, "shop/db": 101}
WITHIN = 20.0


def service(port_id: int, vip: str, backends: tuple[str, ...]) -> LbServicePort:
    table = tuple(i % len(backends) for i in range(251)) if backends else ()
    return LbServicePort(
        id=port_id,
        namespace="shop",
        service=f"svc{port_id}",
        family="ipv4",
        protocol="TCP",
        port=80,
        frontends=(Frontend("cluster_ip", vip, 80),),
        internal=BackendSet(tuple(Backend(ip, 8080, "n1") for ip in backends), table),
    )


def svc_key(port_id: int) -> str:
    return service_key("shop", f"svc{port_id}", "TCP", 80, "ipv4")


async def seed(b: Buckets) -> int:
    """Two pods on n1, one service, two nodes (routes from Nodes) and the watcher's marker."""
    await b.k8s.put(
        "node.n1",
        encode_object(
            Node("n1", addresses=(NodeAddress("InternalIP", "192.168.0.1"),), pod_cidrs=("10.1.0.0/24",))
        ),
    )
    await b.k8s.put(
        "node.n2",
        encode_object(
            Node("n2", addresses=(NodeAddress("InternalIP", "192.168.0.2"),), pod_cidrs=("10.2.0.0/24",))
        ),
    )
    await b.k8s.put("sync.node", b"\x80")
    await b.intents.put(
        endpoint_key("n1", "shop", "web"),
        encode_object(PolicyEndpoint("shop", "web", "u1", "n1", ("10.1.0.10",))),
    )
    await b.intents.put(
        endpoint_key("n1", "shop", "db"),
        encode_object(PolicyEndpoint("shop", "db", "u2", "n1", ("10.1.0.11",))),
    )
    # Another node's intents must not reach n1's target.
    await b.intents.put(
        endpoint_key("n2", "shop", "x"), encode_object(PolicyEndpoint("shop", "x", "u3", "n2", ("10.2.0.5",)))
    )
    return await b.intents.put(svc_key(7), encode_object(service(7, "10.96.0.7", ("10.1.0.10", "10.1.0.11"))))
