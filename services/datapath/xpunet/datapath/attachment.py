"""Pod attachment wired into the datapath service: the ``attach:`` settings, the sink, the port names.

The attach server (``xpunet.datapath.attach``, docs/cni.md) hands out vNICs
and addresses; this room connects it to one node's :class:`DatapathService`:

* :class:`AttachOptions` — the ``attach:`` settings section.  The server runs
  only when it has a listener (``socket_path`` or ``tcp_address``); its pod
  CIDRs come from this node's Node object in ``xpunet-k8s`` (waited for)
  unless ``pod_cidrs`` is set.
* :class:`PortNumbering` — the pipeline port id of each vNIC.  VFs and
  sub-functions carry theirs; a veth gets one derived from its host-side name,
  so a restarted datapath numbers the same pods the same way without a record.
* :class:`DatapathSink` — the attach server's ``EndpointSink``: numbers the
  vNIC, tells the kernel target which interface that port is, then lets the
  service install the pod's entries (and the reverse on detach).
* :func:`start_attachment` / :func:`wired` — what ``run(ctx)`` calls: start
  the server before the service (its restored attachments are the service's
  initial ports), name the kernel target's ports, stop the server after.

With the kernel target the datapath owns the pod host routes (protocol 93,
from the pods' ``fib`` entries): the veth back-end then installs none, so
one owner adds and removes each route.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xpunet.bus.api import InSync, StateStore
from xpunet.bus.errors import BusError
from xpunet.datapath.attach.core import AttachmentRecord, PodEndpoint
from xpunet.datapath.attach.settings import DEFAULT_STATE, AttachSettings, TlsFiles, default_stock
from xpunet.datapath.attach.vnic import Vnic, VnicKind
from xpunet.ipam.ranges import IpAddress
from xpunet.model.objects import Node
from xpunet.wire import WireError, decode_k8s

if TYPE_CHECKING:
    from xpunet.datapath.attach.server import AttachServer
    from xpunet.datapath.attach.vnic import VnicBackend
    from xpunet.datapath.service import DatapathService
    from xpunet.datapath.target import Target

log = logging.getLogger(__name__)

# Veth port ids live above the node's own ports (host, uplinks) and below 2**31.
VETH_PORT_BASE = 1 << 16
VETH_PORT_SPAN = (1 << 31) - VETH_PORT_BASE
SINK_WAIT = 30.0  # seconds an Attach waits for the service to exist (it is built right after the server)


@dataclass(frozen=True, slots=True)
class AttachOptions:
    """``attach:`` section (``XPUNET_ATTACH_<KEY>``): the infra API this datapath serves (docs/cni.md)."""

    socket_path: str = ""  # unix socket of the infra API; "" and no tcp_address: no attach server
    tcp_address: str = ""  # on an xPU, e.g. "0.0.0.0:50151" (mutual TLS: tls_* required)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    state_path: str = DEFAULT_STATE
    backend: VnicKind = "veth"
    # None: the back-end's default (attach.settings.POOL_DEFAULTS): veth keeps no stock (a pair made
    # at Attach in the pod's namespace beats a stocked one moved there), VFs/sub-functions 8 (below 2).
    pool_size: int | None = None
    low_water: int | None = None
    capacity: int = 0  # veth: most pairs at once (0 = unbounded)
    mtu: int = 1500
    host_netns: str = ""  # veth: where the host sides live ("" = datapath.kernel_netns, else our own)
    sysfs_root: str = "/sys"
    sriov_pf: str = ""
    p4_port_base: int = 0
    cni_agent_socket: str = ""  # serve the resident CNI agent here ("" = none)
    pod_cidrs: tuple[str, ...] = ()  # () = spec.podCIDRs of this node's Node object (waited for)

    def __post_init__(self) -> None:
        if self.tcp_address and not (self.tls_cert and self.tls_key and self.tls_client_ca):
            raise ValueError(
                "attach.tcp_address needs attach.tls_cert, attach.tls_key and attach.tls_client_ca"
            )
        _ = self.stock  # pool_size/low_water checked with the back-end's defaults filled in

    @property
    def stock(self) -> tuple[int, int]:
        """``(pool_size, low_water)`` with the back-end's defaults filled in."""
        return default_stock(self.backend, self.pool_size, self.low_water, section="attach.")

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path or self.tcp_address)

    def server_settings(self, pod_cidrs: Sequence[str], *, default_netns: str = "") -> AttachSettings:
        tls = TlsFiles(self.tls_cert, self.tls_key, self.tls_client_ca) if self.tcp_address else None
        pool_size, low_water = self.stock
        return AttachSettings(
            pod_cidrs=tuple(pod_cidrs),
            socket_path=self.socket_path,
            tcp_address=self.tcp_address,
            tls=tls,
            state_path=self.state_path,
            backend=self.backend,
            pool_size=pool_size,
            low_water=low_water,
            capacity=self.capacity,
            mtu=self.mtu,
            host_netns=self.host_netns or default_netns,
            sysfs_root=self.sysfs_root,
            sriov_pf=self.sriov_pf,
            p4_port_base=self.p4_port_base,
            cni_agent_socket=self.cni_agent_socket,
        )


class PortNumbering:
    """Pipeline port ids of the node's vNICs.

    A VF or sub-function has its own (``p4_port``).  A veth has none, so it gets
    ``VETH_PORT_BASE + crc32(host ifname) mod span``; on a clash the next free
    id (clashes are rare and only then does numbering depend on history).
    """

    def __init__(self, reserved: Sequence[int] = ()) -> None:
        self._reserved = frozenset(reserved)
        self._by_ifname: dict[str, int] = {}
        self._taken: set[int] = set()

    def assign(self, endpoint: PodEndpoint) -> int:
        if endpoint.p4_port or not endpoint.host_ifname:
            return endpoint.p4_port
        known = self._by_ifname.get(endpoint.host_ifname)
        if known is not None:
            return known
        offset = zlib.crc32(endpoint.host_ifname.encode()) % VETH_PORT_SPAN
        port = VETH_PORT_BASE + offset
        while port in self._taken or port in self._reserved:
            offset = (offset + 1) % VETH_PORT_SPAN
            port = VETH_PORT_BASE + offset
        self._by_ifname[endpoint.host_ifname] = port
        self._taken.add(port)
        return port

    def release(self, endpoint: PodEndpoint) -> None:
        port = self._by_ifname.pop(endpoint.host_ifname, None)
        if port is not None:
            self._taken.discard(port)


def pod_ref(endpoint: PodEndpoint) -> str:
    return f"{endpoint.namespace}/{endpoint.name}"


class DatapathSink:
    """The attach server's EndpointSink over one DatapathService (bound once the service exists)."""

    def __init__(self, numbering: PortNumbering, *, uplinks: Mapping[int, str]) -> None:
        self.numbering = numbering
        self.uplinks = dict(uplinks)
        self.interfaces: dict[int, str] = {}  # vNIC port → host-side interface (veths)
        self._service: DatapathService | None = None
        self._target: Target | None = None
        self._bound = asyncio.Event()

    def restore(self, records: Sequence[AttachmentRecord]) -> dict[str, int]:
        """Number the attachments the server restored; the service's initial ``ports``."""
        ports: dict[str, int] = {}
        for record in records:
            endpoint = record.endpoint()
            port = self.numbering.assign(endpoint)
            ports[pod_ref(endpoint)] = port
            if endpoint.host_ifname:
                self.interfaces[port] = endpoint.host_ifname
        return ports

    def port_names(self) -> dict[int, str]:
        return {**self.uplinks, **self.interfaces}

    async def bind(self, service: DatapathService, target: Target) -> None:
        self._service, self._target = service, target
        await self._push_port_names()
        self._bound.set()

    async def _push_port_names(self) -> None:
        set_names = getattr(self._target, "set_port_names", None)
        if set_names is not None:
            await set_names(self.port_names())

    async def _bound_service(self) -> DatapathService:
        async with asyncio.timeout(SINK_WAIT):
            await self._bound.wait()
        assert self._service is not None
        return self._service

    async def endpoint_attached(self, endpoint: PodEndpoint) -> None:
        service = await self._bound_service()
        port = self.numbering.assign(endpoint)
        if endpoint.host_ifname and self.interfaces.get(port) != endpoint.host_ifname:
            # The kernel target must know the interface before the entries naming the port arrive.
            self.interfaces[port] = endpoint.host_ifname
            await self._push_port_names()
        try:
            await service.endpoint_attached(dataclasses.replace(endpoint, p4_port=port))
        except BaseException:
            # The Attach is rolled back (its vNIC retired): forget the port as a detach would.
            await self._forget(endpoint, port)
            raise

    async def endpoint_detached(self, endpoint: PodEndpoint) -> None:
        service = await self._bound_service()
        port = self.numbering.assign(endpoint)
        await service.endpoint_detached(dataclasses.replace(endpoint, p4_port=port))
        await self._forget(endpoint, port)

    async def _forget(self, endpoint: PodEndpoint, port: int) -> None:
        self.numbering.release(endpoint)
        if self.interfaces.pop(port, None) is not None:
            await self._push_port_names()


@dataclass(slots=True)
class Attachment:
    """A started attach server and its sink."""

    server: AttachServer
    sink: DatapathSink
    ports: dict[str, int]


async def node_pod_cidrs(k8s: StateStore, node: str, stopping: asyncio.Event) -> tuple[str, ...] | None:
    """``spec.podCIDRs`` of Node ``node`` in xpunet-k8s, waiting until it has some; None if stopped first."""
    found = asyncio.create_task(_wait_for_node(k8s, node), name=f"wait for Node {node}")
    stopped = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({found, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (found, stopped):
            task.cancel()
        await asyncio.gather(found, stopped, return_exceptions=True)
    return found.result() if found.done() and not found.cancelled() else None


async def _wait_for_node(k8s: StateStore, node: str) -> tuple[str, ...]:
    key = f"node.{node}"
    while True:
        try:
            async with contextlib.aclosing(k8s.watch("node.")) as watch:
                async for item in watch:
                    if isinstance(item, InSync):
                        log.info("attach: waiting for Node %s with spec.podCIDRs in xpunet-k8s", node)
                        continue
                    if item.key != key or item.value is None:
                        continue
                    try:
                        obj = decode_k8s(item.value)
                    except WireError as exc:
                        log.warning("attach: xpunet-k8s %s does not decode: %s", key, exc)
                        continue
                    if isinstance(obj, Node) and obj.pod_cidrs:
                        return obj.pod_cidrs
                    log.info("attach: Node %s has no spec.podCIDRs yet", node)
        except BusError as exc:
            log.warning("attach: watching Node %s failed (%s); again in 1s", node, exc)
        await asyncio.sleep(1.0)


def _kernel_routed_veth(settings: AttachSettings) -> VnicBackend:
    """The veth back-end without host routes: the kernel target installs them from the fib entries."""
    # Imported here: the veth back-end loads pyroute2, which a softipu/p4rt datapath never needs.
    from xpunet.datapath.attach.veth import VethBackend
    from xpunet.ipam import node_ranges

    class KernelRoutedVeth(VethBackend):
        async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
            return None

        async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
            return None

    return KernelRoutedVeth(
        gateways=[r.gateway for r in node_ranges(settings.pod_cidrs)],
        mtu=settings.mtu,
        capacity=settings.capacity or None,
        netns=settings.host_netns,
    )


async def start_attachment(
    options: AttachOptions,
    *,
    node: str,
    k8s: StateStore,
    stopping: asyncio.Event,
    kernel_netns: str = "",
    kernel_routes: bool = False,
    uplinks: Mapping[int, str] | None = None,
) -> Attachment | None:
    """Start the attach server (None when ``options`` has no listener, or ``stopping`` came first).

    ``kernel_routes``: the kernel target owns the pod host routes (the veth back-end adds none).
    """
    if not options.enabled:
        return None
    cidrs = options.pod_cidrs or await node_pod_cidrs(k8s, node, stopping)
    if cidrs is None:
        return None
    from xpunet.datapath.attach.server import AttachServer

    settings = options.server_settings(cidrs, default_netns=kernel_netns)
    reserved = tuple((uplinks or {}).keys())
    sink = DatapathSink(PortNumbering(reserved), uplinks=uplinks or {})
    backend = _kernel_routed_veth(settings) if kernel_routes and settings.backend == "veth" else None
    server = AttachServer(settings, sink=sink, backend=backend)
    await server.start()
    ports = sink.restore(server.attacher.list())
    log.info(
        "attach: node %s pod CIDRs %s, %d restored attachment(s)%s",
        node,
        ", ".join(cidrs),
        len(ports),
        " (host routes by the kernel target)" if backend is not None else "",
    )
    return Attachment(server, sink, ports)


@contextlib.asynccontextmanager
async def wired(
    attachment: Attachment | None,
    service: DatapathService,
    target: Target,
    *,
    uplinks: Mapping[int, str],
) -> AsyncIterator[None]:
    """Name the target's ports and bind the sink to ``service`` for its run; stop the server after."""
    try:
        if attachment is not None:
            await attachment.sink.bind(service, target)
        else:
            set_names = getattr(target, "set_port_names", None)
            if set_names is not None:
                await set_names(dict(uplinks))
        if not uplinks and hasattr(target, "set_port_names"):
            log.warning(
                "datapath %s: no datapath.kernel_uplinks: packets from other nodes enter on no known port "
                "and are dropped",
                service.node,
            )
        yield
    finally:
        if attachment is not None:
            await attachment.server.stop()
