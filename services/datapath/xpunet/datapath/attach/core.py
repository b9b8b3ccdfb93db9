"""Attachments: vNIC + IP leases + endpoint entries per pod interface, persisted, all or nothing.

`Attacher` is the attach server's logic without gRPC: the infra API calls it,
tests can too.  Calls for one attachment run one at a time, calls for
different pods concurrently; every change is written to the state store
before it is acknowledged (concurrent changes share a write: `GroupCommit`);
a step that fails undoes the steps before it, so a failed Attach leaves no
vNIC taken, no lease, no endpoint entry.

The datapath learns about pods through `EndpointSink`: `endpoint_attached` is
awaited before Attach returns (so the pod is reachable as soon as CNI ADD
returns), `endpoint_detached` on Detach and GC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from xpunet.datapath.attach.pool import PoolStats, VnicPool
from xpunet.datapath.attach.state import GroupCommit, StateStore
from xpunet.datapath.attach.vnic import Vnic
from xpunet.ipam import AttachmentKey, FamilyRange, Ipam, IpamStateError, Lease
from xpunet.ipam.ranges import IpAddress

log = logging.getLogger(__name__)

STATE_VERSION = 1


class BadRequestError(ValueError):
    """The request is malformed (missing container id, interface name, ...)."""


class EndpointError(Exception):
    """The datapath could not install or remove a pod's endpoint entries."""


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    container_id: str = ""
    netns: str = ""
    ifname: str = ""

    @property
    def key(self) -> AttachmentKey:
        return AttachmentKey(self.container_id, self.ifname)


@dataclass(frozen=True, slots=True)
class PodEndpoint:
    """What the datapath needs to make a pod reachable (kernel routes, P4 table entries)."""

    namespace: str
    name: str
    uid: str
    container_id: str
    ifname: str
    addresses: tuple[IpAddress, ...]
    mac: str
    vnic_kind: str
    host_ifname: str  # veth host side ("" for VFs and sub-functions)
    p4_port: int  # xPU port of the vNIC (VFs, sub-functions)


class EndpointSink(Protocol):
    async def endpoint_attached(self, endpoint: PodEndpoint) -> None: ...

    async def endpoint_detached(self, endpoint: PodEndpoint) -> None: ...


class NullEndpointSink:
    """No datapath entries: host-mode veth routing alone (the veth back-end's host routes)."""

    async def endpoint_attached(self, endpoint: PodEndpoint) -> None:
        return None

    async def endpoint_detached(self, endpoint: PodEndpoint) -> None:
        return None


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    pod: PodRef
    network: str
    vnic: Vnic
    lease: Lease
    gateways: tuple[IpAddress, ...] = field(default=())

    @property
    def key(self) -> AttachmentKey:
        return self.pod.key

    def endpoint(self) -> PodEndpoint:
        return PodEndpoint(
            namespace=self.pod.namespace,
            name=self.pod.name,
            uid=self.pod.uid,
            container_id=self.pod.container_id,
            ifname=self.pod.ifname,
            addresses=self.lease.addresses,
            mac=self.vnic.mac,
            vnic_kind=self.vnic.kind,
            host_ifname=self.vnic.host_ifname,
            p4_port=self.vnic.p4_port,
        )

    def to_data(self) -> dict[str, Any]:
        pod = self.pod
        return {
            "pod": {
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
                "container_id": pod.container_id,
                "netns": pod.netns,
                "ifname": pod.ifname,
            },
            "network": self.network,
            "vnic": self.vnic.to_data(),
        }


@dataclass(frozen=True, slots=True)
class AttachStatus:
    ready: bool
    reason: str
    pool: PoolStats
    pod_cidrs: tuple[str, ...]
    free_addresses: Mapping[int, int]


class Attacher:
    def __init__(
        self,
        *,
        ranges: Sequence[FamilyRange],
        pool: VnicPool,
        store: StateStore,
        sink: EndpointSink | None = None,
    ) -> None:
        self.ranges = tuple(ranges)
        self.pool = pool
        self.store = store
        self.sink: EndpointSink = sink or NullEndpointSink()
        self.ipam = Ipam(self.ranges)
        self._records: dict[AttachmentKey, AttachmentRecord] = {}
        # Calls for one attachment run one at a time; different pods' calls run concurrently (their
        # in-memory steps never interleave: no await between them), and share state writes.
        self._locks = _KeyLocks()
        self._gc_lock = asyncio.Lock()
        self.commits = GroupCommit(store, self._state)
        self._ready = False

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore recorded attachments, reconcile the pool with them, fill the pool."""
        data = self.store.load()
        if data is not None:
            self._restore(data)
        await self.pool.start({r.vnic.id for r in self._records.values()})
        self._save()
        self._ready = True
        log.info(
            "attach: ready with %d attachment(s), %d free vNIC(s)", len(self._records), self.pool.stats().free
        )

    async def stop(self) -> None:
        self._ready = False
        await self.pool.stop()

    def _restore(self, data: Mapping[str, Any]) -> None:
        if data.get("version") != STATE_VERSION:
            raise IpamStateError(f"attach state version {data.get('version')!r} is not {STATE_VERSION}")
        self.ipam = Ipam.from_data(self.ranges, data.get("ipam", {"version": 1}))
        for dropped in self.ipam.dropped:
            log.warning("attach: dropping lease %s outside the node's pod CIDRs", dropped.key)
        for raw in data.get("attachments", []):
            try:
                pod = PodRef(**{k: str(v) for k, v in raw["pod"].items()})
                vnic = Vnic.from_data(raw["vnic"])
                record_network = str(raw.get("network", ""))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("attach: skipping an unreadable attachment record %r: %s", raw, exc)
                continue
            lease = self.ipam.lease(pod.key)
            if lease is None:
                log.warning("attach: attachment %s has no lease; it is leased again", pod.key)
                lease = self.ipam.allocate(pod.key)
            self._records[pod.key] = AttachmentRecord(pod, record_network, vnic, lease, self._gateways())
        # Leases with no attachment (a crash between lease and record) are released.
        self.ipam.gc(self._records)

    def _state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "pod_cidrs": [str(r.network) for r in self.ranges],
            "ipam": self.ipam.to_data(),
            "attachments": [self._records[k].to_data() for k in sorted(self._records)],
        }

    def _save(self) -> None:
        self.store.save(self._state())

    def _gateways(self) -> tuple[IpAddress, ...]:
        return tuple(r.gateway for r in self.ranges)

    # -- the API ------------------------------------------------------------------------------

    async def attach(self, pod: PodRef, network: str) -> AttachmentRecord:
        _validate(pod)
        async with self._locks.hold(pod.key):
            existing = self._records.get(pod.key)
            if existing is not None:
                await self.commits.persist()  # the first call's write may still be in flight
                return existing
            lease = self.ipam.allocate(pod.key)  # IpamExhaustedError: nothing taken yet
            undo: list[Any] = [lambda: self.ipam.release(pod.key)]
            try:
                vnic = await self.pool.take(pod.netns)
                undo.append(lambda: self.pool.give_back(vnic))
                await self.pool.backend.bind(vnic, lease.addresses)
                undo.append(lambda: self.pool.backend.unbind(vnic, lease.addresses))
                record = AttachmentRecord(pod, network, vnic, lease, self._gateways())
                try:
                    await self.sink.endpoint_attached(record.endpoint())
                except Exception as exc:
                    raise EndpointError(f"installing endpoint entries for {pod.key} failed: {exc}") from exc
                undo.append(lambda: self.sink.endpoint_detached(record.endpoint()))
                self._records[pod.key] = record
                undo.append(lambda: self._records.pop(pod.key, None))
                await self.commits.persist()
            except BaseException:
                await _unwind(undo)
                raise
        log.info("attach: %s/%s %s -> %s %s", pod.namespace, pod.name, pod.key, vnic.device, lease.addresses)
        return record

    async def detach(self, key: AttachmentKey) -> AttachmentRecord | None:
        async with self._locks.hold(key):
            record = self._records.pop(key, None)
            if record is None:
                # No attachment, but maybe a lease from an interrupted Attach.
                if self.ipam.release(key) is not None:
                    await self.commits.persist()
                return None
            await self._teardown(record)
            await self.commits.persist()
            # The vNIC last: deleting a veth takes the kernel tens of milliseconds; once the state
            # no longer records it, a restart would delete it anyway (pool reconciliation).
            await self._give_back(record)
        log.info("detach: %s/%s %s", record.pod.namespace, record.pod.name, key)
        return record

    def check(self, key: AttachmentKey) -> AttachmentRecord | None:
        return self._records.get(key)

    def list(self) -> tuple[AttachmentRecord, ...]:
        return tuple(self._records[k] for k in sorted(self._records))

    async def gc(self, network: str, valid: Iterable[AttachmentKey]) -> tuple[AttachmentKey, ...]:
        keep = set(valid)
        async with self._gc_lock:
            stale = [r for k, r in sorted(self._records.items()) if k not in keep and r.network == network]
            gone: list[AttachmentRecord] = []
            for record in stale:
                async with self._locks.hold(record.key):
                    if self._records.get(record.key) is record:  # not detached meanwhile
                        del self._records[record.key]
                        await self._teardown(record)
                        gone.append(record)
            orphans = self.ipam.gc(keep | set(self._records) | self._locks.busy())
            if gone or orphans:
                await self.commits.persist()
            for record in gone:
                await self._give_back(record)
        released = tuple(sorted({r.key for r in gone} | {lease.key for lease in orphans}))
        if released:
            log.info("gc: released %s", ", ".join(map(str, released)))
        return released

    def status(self) -> AttachStatus:
        return AttachStatus(
            ready=self._ready,
            reason="" if self._ready else "the attach server is starting",
            pool=self.pool.stats(),
            pod_cidrs=tuple(str(r.network) for r in self.ranges),
            free_addresses={r.family: self.ipam.free(r.family) for r in self.ranges},
        )

    @property
    def ready(self) -> bool:
        return self._ready

    async def _teardown(self, record: AttachmentRecord) -> None:
        """Remove the pod's entries and host routes, release its lease; the vNIC is `_give_back`'s."""
        # Every step runs even if one fails: a DEL must not leave a lease or an entry behind.
        steps = [
            ("endpoint entries", self.sink.endpoint_detached(record.endpoint())),
            ("host routes", self.pool.backend.unbind(record.vnic, record.lease.addresses)),
        ]
        for what, step in steps:
            try:
                await step
            except Exception:
                log.exception("detach %s: removing the %s failed", record.key, what)
        self.ipam.release(record.key)

    async def _give_back(self, record: AttachmentRecord) -> None:
        try:
            await self.pool.give_back(record.vnic)
        except Exception:
            log.exception("detach %s: removing the vNIC failed", record.key)


class _KeyLocks:
    """One asyncio lock per attachment key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[AttachmentKey, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: AttachmentKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def busy(self) -> set[AttachmentKey]:
        """Keys with a call in progress (an Attach may hold a lease not yet recorded)."""
        return set(self._locks)


def _validate(pod: PodRef) -> None:
    missing = [name for name in ("container_id", "ifname") if not getattr(pod, name)]
    if missing:
        raise BadRequestError(f"attach request without {' and '.join(missing)}")
    if len(pod.ifname) > 15 or "/" in pod.ifname or pod.ifname in (".", ".."):
        raise BadRequestError(f"interface name {pod.ifname!r} is not a valid Linux interface name")


async def _unwind(undo: list[Any]) -> None:
    for step in reversed(undo):
        try:
            result = step()
            if asyncio.iscoroutine(result):
                await result
        except Exception:
            log.exception("attach: undoing a step failed")
