"""The vNIC pool and the attacher over an in-memory back-end: stock, replenishment, pool empty,
reconciliation on start, all-or-nothing Attach, idempotency, persisted state across restarts, GC;
concurrent calls (different pods at once, sharing state writes; one pod's calls one at a time)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from xpunet.datapath.attach.core import Attacher, BadRequestError, EndpointError, PodEndpoint, PodRef
from xpunet.datapath.attach.pool import VnicPool
from xpunet.datapath.attach.state import GroupCommit, JsonStateFile, StateError
from xpunet.datapath.attach.vnic import PoolEmptyError, SeenVnic, Vnic, VnicKind
from xpunet.ipam import AttachmentKey, IpamExhaustedError, node_ranges
from xpunet.ipam.ranges import IpAddress

# An in-memory back-end behind the VnicBackend Protocol, and a sink that records endpoint calls.


@dataclass
class FakeBackend:
    """veth-like when `creatable`, else a fixed inventory (like SR-IOV)."""

    kind_name: VnicKind = "veth"
    limit: int | None = None
    creatable: bool = True
    host: dict[str, SeenVnic] = field(default_factory=dict)  # what "discover" sees
    routes: dict[str, tuple[IpAddress, ...]] = field(default_factory=dict)
    made: int = 0
    fail_bind: bool = False

    @property
    def kind(self) -> VnicKind:
        return self.kind_name

    @property
    def capacity(self) -> int | None:
        return self.limit

    async def discover(self) -> list[SeenVnic]:
        return [self.host[k] for k in sorted(self.host)]

    async def create(self, pod_netns: str = "") -> Vnic:
        if not self.creatable:
            raise PoolEmptyError("fixed inventory")
        self.made += 1
        vnic = Vnic(
            id=f"v{self.made:03d}",
            kind=self.kind_name,
            device=f"xpp{self.made:03d}",
            mac=f"02:00:00:00:00:{self.made:02x}",
        )
        self.host[vnic.id] = SeenVnic(vnic=vnic, in_host=True)
        return vnic

    async def bind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        if self.fail_bind:
            raise OSError("bind failed on purpose")
        self.routes[vnic.id] = tuple(addresses)

    async def unbind(self, vnic: Vnic, addresses: Sequence[IpAddress]) -> None:
        self.routes.pop(vnic.id, None)

    async def retire(self, vnic: Vnic) -> bool:
        if self.creatable:
            self.host.pop(vnic.id, None)
            return False
        return True

    async def close(self) -> None:
        return None

    def move_to_pod(self, vnic_id: str) -> None:
        self.host[vnic_id] = SeenVnic(vnic=self.host[vnic_id].vnic, in_host=False)

    def move_to_host(self, vnic_id: str) -> None:
        self.host[vnic_id] = SeenVnic(vnic=self.host[vnic_id].vnic, in_host=True)


@dataclass
class RecordingSink:
    attached: list[PodEndpoint] = field(default_factory=list)
    detached: list[PodEndpoint] = field(default_factory=list)
    fail: bool = False

    async def endpoint_attached(self, endpoint: PodEndpoint) -> None:
        if self.fail:
            raise RuntimeError("target write rejected")
        self.attached.append(endpoint)

    async def endpoint_detached(self, endpoint: PodEndpoint) -> None:
        self.detached.append(endpoint)


RANGES = node_ranges(["10.1.0.0/24", "fd00:1::/64"])


def pod(cid: str, ifname: str = "eth0") -> PodRef:
    return PodRef(
        namespace="ns", name=f"pod-{cid}", uid=f"uid-{cid}", container_id=cid, netns="/x", ifname=ifname
    )


def attacher(
    tmp_path: Path, backend: FakeBackend, *, sink: RecordingSink | None = None, target: int = 3, low: int = 1
) -> Attacher:
    pool = VnicPool(backend, target=target, low_water=low)
    return Attacher(ranges=RANGES, pool=pool, store=JsonStateFile(tmp_path / "state.json"), sink=sink)


async def test_pool_fills_to_target_and_replenishes_below_low_water() -> None:
    backend = FakeBackend()
    pool = VnicPool(backend, target=3, low_water=2)
    await pool.start(attached=())
    try:
        assert pool.stats().free == 3
        await pool.take()
        assert pool.stats().free == 2  # at low water: no refill yet
        await pool.take()
        await pool.wait_stocked()
        assert pool.stats().free == 3
        assert pool.stats().attached == 2
    finally:
        await pool.stop()


async def test_pool_empty_when_capacity_reached() -> None:
    pool = VnicPool(FakeBackend(limit=2), target=1, low_water=0)
    await pool.start(attached=())
    try:
        await pool.take()
        await pool.take()  # stock empty: created inline, still within capacity
        with pytest.raises(PoolEmptyError, match="2 attached"):
            await pool.take()
    finally:
        await pool.stop()


async def test_pool_start_reconciles_with_the_host() -> None:
    backend = FakeBackend()
    free = Vnic(id="free", kind="veth", device="xppfree")
    mine = Vnic(id="mine", kind="veth", device="xppmine")
    lost = Vnic(id="lost", kind="veth", device="xpplost")
    backend.host = {
        "free": SeenVnic(free, in_host=True),
        "mine": SeenVnic(mine, in_host=False),
        "lost": SeenVnic(lost, in_host=False),
    }
    pool = VnicPool(backend, target=2, low_water=0)
    await pool.start(attached={"mine"})
    try:
        assert "lost" not in backend.host  # unrecorded and in some namespace: deleted
        assert pool.free_vnics()[0].id == "free"  # adopted
        assert pool.stats().attached == 1
    finally:
        await pool.stop()


async def test_fixed_inventory_comes_back_only_when_in_host_again() -> None:
    backend = FakeBackend(kind_name="sriov-vf", creatable=False)
    vf = Vnic(id="0000:3b:02.0", kind="sriov-vf", device="ens1f0v0")
    backend.host = {vf.id: SeenVnic(vf, in_host=True)}
    backend.limit = 1
    pool = VnicPool(backend, target=1, low_water=0)
    await pool.start(attached=())
    try:
        taken = await pool.take()
        backend.move_to_pod(taken.id)
        await pool.give_back(taken)
        with pytest.raises(PoolEmptyError):
            await pool.take()
        backend.move_to_host(taken.id)  # the plugin's DEL moved it back
        assert (await pool.take()).id == vf.id
    finally:
        await pool.stop()


async def test_attach_is_idempotent_and_detach_releases(tmp_path: Path) -> None:
    backend, sink = FakeBackend(), RecordingSink()
    att = attacher(tmp_path, backend, sink=sink)
    await att.start()
    try:
        first = await att.attach(pod("a"), "net")
        assert await att.attach(pod("a"), "net") == first
        assert [str(a) for a in first.lease.addresses] == ["10.1.0.2", "fd00:1::2"]
        assert backend.routes[first.vnic.id] == first.lease.addresses
        assert [e.container_id for e in sink.attached] == ["a"]
        assert sink.attached[0].addresses == first.lease.addresses
        released = await att.detach(AttachmentKey("a", "eth0"))
        assert released == first
        assert await att.detach(AttachmentKey("a", "eth0")) is None
        assert att.ipam.leases() == ()
        assert first.vnic.id not in backend.routes
        assert [e.container_id for e in sink.detached] == ["a"]
    finally:
        await att.stop()


async def test_failed_endpoint_install_rolls_everything_back(tmp_path: Path) -> None:
    backend, sink = FakeBackend(), RecordingSink(fail=True)
    att = attacher(tmp_path, backend, sink=sink)
    await att.start()
    try:
        with pytest.raises(EndpointError, match="target write rejected"):
            await att.attach(pod("b"), "net")
        assert att.list() == ()
        assert att.ipam.leases() == ()
        assert backend.routes == {}
        assert att.pool.stats().attached == 0
        saved = JsonStateFile(tmp_path / "state.json").load()
        assert saved is not None
        assert saved["attachments"] == []
    finally:
        await att.stop()


async def test_failures_before_any_change(tmp_path: Path) -> None:
    att = attacher(tmp_path, FakeBackend(limit=1), target=1, low=0)
    await att.start()
    try:
        with pytest.raises(BadRequestError, match="container_id"):
            await att.attach(pod(""), "net")
        with pytest.raises(BadRequestError, match="interface name"):
            await att.attach(pod("c", ifname="x" * 16), "net")
        await att.attach(pod("c"), "net")
        with pytest.raises(PoolEmptyError):
            await att.attach(pod("d"), "net")
        assert [lease.key.container_id for lease in att.ipam.leases()] == ["c"]
    finally:
        await att.stop()


async def test_ips_exhausted_takes_no_vnic(tmp_path: Path) -> None:
    backend = FakeBackend()
    pool = VnicPool(backend, target=2, low_water=0)
    att = Attacher(
        ranges=node_ranges(["10.2.0.0/30"]), pool=pool, store=JsonStateFile(tmp_path / "s.json"), sink=None
    )
    await att.start()
    try:
        await att.attach(pod("e"), "net")
        with pytest.raises(IpamExhaustedError):
            await att.attach(pod("f"), "net")
        assert att.pool.stats().attached == 1
    finally:
        await att.stop()


async def test_restart_restores_attachments_and_never_double_allocates(tmp_path: Path) -> None:
    backend = FakeBackend()
    first = attacher(tmp_path, backend)
    await first.start()
    kept = await first.attach(pod("k"), "net")
    backend.move_to_pod(kept.vnic.id)
    await first.stop()

    second = attacher(tmp_path, backend)
    await second.start()
    try:
        assert second.list() == (kept,)
        other = await second.attach(pod("n"), "net")
        assert other.vnic.id != kept.vnic.id
        assert set(other.lease.addresses).isdisjoint(kept.lease.addresses)
    finally:
        await second.stop()


async def test_gc_releases_unknown_attachments_of_its_network(tmp_path: Path) -> None:
    att = attacher(tmp_path, FakeBackend(), target=4)
    await att.start()
    try:
        for cid in ("g1", "g2"):
            await att.attach(pod(cid), "net")
        await att.attach(pod("other"), "another-net")
        released = await att.gc("net", [AttachmentKey("g1", "eth0")])
        assert released == (AttachmentKey("g2", "eth0"),)
        assert sorted(r.key.container_id for r in att.list()) == ["g1", "other"]
    finally:
        await att.stop()


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    store = JsonStateFile(tmp_path / "deep" / "state.json")
    assert store.load() is None
    store.save({"version": 1, "a": [1]})
    store.save({"version": 1, "a": [2]})
    assert store.load() == {"version": 1, "a": [2]}
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["state.json"]  # no temporary left behind
    (tmp_path / "deep" / "state.json").write_text("{torn")
    with pytest.raises(StateError, match="not JSON"):
        store.load()


# -- concurrency ------------------------------------------------------------------------------


class GatedStore(JsonStateFile):
    """A state file whose writes wait for the test to open a gate; counts and can fail them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a write has started
        self.saves = 0
        self.fail = False

    def save(self, data: dict[str, Any]) -> None:
        self.entered.set()
        self.gate.wait(timeout=30)
        if self.fail:
            raise OSError("disk full (on purpose)")
        self.saves += 1
        super().save(data)


def make(tmp_path: Path, store: GatedStore, target: int = 0) -> Attacher:
    pool = VnicPool(FakeBackend(), target=target, low_water=0)
    return Attacher(ranges=RANGES, pool=pool, store=store)


async def test_concurrent_attaches_share_writes_and_get_distinct_leases(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.json")
    att = make(tmp_path, store)
    await att.start()
    try:
        store.saves = 0
        store.entered.clear()
        store.gate.clear()  # the first write waits: the other attaches pile up behind it
        calls = [asyncio.create_task(att.attach(pod(f"c{n}"), "net")) for n in range(10)]
        await asyncio.to_thread(store.entered.wait, 30)  # the first write is in flight
        store.gate.set()
        records = await asyncio.gather(*calls)
        assert len({r.lease.addresses for r in records}) == 10
        assert len({r.vnic.id for r in records}) == 10
        assert store.saves <= 2  # the first change's write, then one for the other nine
        saved = JsonStateFile(tmp_path / "state.json").load()
        assert saved is not None
        assert len(saved["attachments"]) == 10  # every acknowledged change is on disk
        await asyncio.gather(*(att.detach(AttachmentKey(f"c{n}", "eth0")) for n in range(10)))
        assert att.list() == ()
        assert att.ipam.leases() == ()
    finally:
        await att.stop()


async def test_calls_for_one_pod_run_one_at_a_time(tmp_path: Path) -> None:
    att = make(tmp_path, GatedStore(tmp_path / "state.json"))
    await att.start()
    try:
        first, second = await asyncio.gather(att.attach(pod("same"), "net"), att.attach(pod("same"), "net"))
        assert first == second
        assert att.pool.stats().attached == 1
        detached = await asyncio.gather(*(att.detach(AttachmentKey("same", "eth0")) for _ in range(2)))
        assert sorted(d is None for d in detached) == [False, True]
    finally:
        await att.stop()


async def test_a_failed_write_rolls_back_every_waiting_attach(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "state.json")
    att = make(tmp_path, store)
    await att.start()
    try:
        store.fail = True
        results = await asyncio.gather(
            *(att.attach(pod(f"f{n}"), "net") for n in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, OSError) for r in results), results
        assert att.list() == ()
        assert att.ipam.leases() == ()
        assert att.pool.stats().attached == 0
        store.fail = False
        assert (await att.attach(pod("after"), "net")).key == AttachmentKey("after", "eth0")
    finally:
        await att.stop()


async def test_group_commit_covers_changes_made_during_a_write(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "g.json")
    state = {"n": 0}
    commits = GroupCommit(store, lambda: dict(state))
    store.gate.clear()
    first = asyncio.create_task(commits.persist())
    await asyncio.to_thread(store.entered.wait, 30)
    state["n"] = 5  # changed while the first write (of n=0) is in flight
    later = [asyncio.create_task(commits.persist()) for _ in range(4)]
    store.gate.set()
    await asyncio.gather(first, *later)
    assert store.saves == 2
    assert store.load() == {"n": 5}


@pytest.mark.parametrize("target", [0, 2], ids=["created-on-demand", "from-stock"])
async def test_capacity_holds_under_concurrent_creation(tmp_path: Path, target: int) -> None:
    backend = FakeBackend(limit=3)
    pool = VnicPool(backend, target=target, low_water=0)
    att = Attacher(ranges=RANGES, pool=pool, store=JsonStateFile(tmp_path / "s.json"))
    await att.start()
    try:
        results = await asyncio.gather(
            *(att.attach(pod(f"p{n}"), "net") for n in range(5)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 3
        assert backend.made <= 3
    finally:
        await att.stop()
