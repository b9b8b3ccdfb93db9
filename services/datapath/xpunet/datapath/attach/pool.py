"""The vNIC pool: pre-provisioned stock, background replenishment below a low-water mark.

An Attach takes a vNIC from stock without waiting for creation; taking one
below the low-water mark wakes the replenisher, which creates vNICs (where the
back-end can) until the stock is back at its target size.  Only when the stock
is empty does an Attach create a vNIC itself, and when the back-end cannot
make one either (SR-IOV VFs all in use, a veth capacity reached) it fails
with PoolEmptyError.

On start the pool reconciles the back-end's view of the host with the
attachments the datapath recorded: recorded vNICs stay attached, free ones
go to stock, and veth pairs nobody recorded (left by a crash between creation
and the state write) are deleted, so a restart never leaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from dataclasses import dataclass

from xpunet.datapath.attach.vnic import PoolEmptyError, Vnic, VnicBackend

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # replenishment back-off after a failed creation


@dataclass(frozen=True, slots=True)
class PoolStats:
    kind: str
    free: int
    attached: int
    pending: int
    target: int
    capacity: int | None


class VnicPool:
    def __init__(self, backend: VnicBackend, *, target: int = 8, low_water: int = 2) -> None:
        if target < 0 or low_water < 0 or low_water > target:
            raise ValueError(f"pool sizes: need 0 <= low_water ({low_water}) <= target ({target})")
        self.backend = backend
        self.target = target
        self.low_water = low_water
        self._free: list[Vnic] = []
        self._attached: set[str] = set()
        self._pending: dict[str, Vnic] = {}  # retired, reusable once back in the host namespace
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._creating = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self, attached: Collection[str]) -> None:
        """Reconcile with the host, fill the stock to target, start replenishing."""
        self._attached = set(attached)
        for seen in await self.backend.discover():
            vnic = seen.vnic
            if vnic.id in self._attached:
                continue
            if seen.in_host:
                self._free.append(vnic)
            elif self.backend.kind == "veth":
                log.warning("deleting veth pair %s: no attachment records it", vnic.host_ifname)
                await self.backend.retire(vnic)
            else:
                self._pending[vnic.id] = vnic
        await self._fill()
        self._task = asyncio.create_task(self._replenish(), name=f"vnic-pool-{self.backend.kind}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.backend.close()

    # -- use ----------------------------------------------------------------------------------

    async def take(self, pod_netns: str = "") -> Vnic:
        """A vNIC for a pod: from stock, else created now (a veth then directly in `pod_netns`)."""
        if not self._free and self._pending:
            await self._recover_pending()  # a VF may be back from its pod since the last look
        if self._free:
            vnic = self._free.pop(0)
        elif self._can_create():
            # With no stock by design (target 0: veth made in the pod, see docs/cni.md) this is the rule.
            log.log(
                logging.INFO if self.target else logging.DEBUG, "creating a %s vNIC inline", self.backend.kind
            )
            self._creating += 1  # counted against the capacity while concurrent Attach calls create too
            try:
                vnic = await self.backend.create(pod_netns)
            finally:
                self._creating -= 1
        else:
            raise PoolEmptyError(self._empty_message())
        self._attached.add(vnic.id)
        if len(self._free) < self.low_water:
            self._wake.set()
        return vnic

    async def give_back(self, vnic: Vnic) -> None:
        """Return a detached vNIC: the back-end retires it; a reusable one goes back to stock
        once discovery sees its netdev in the host namespace again."""
        self._attached.discard(vnic.id)
        if await self.backend.retire(vnic):
            self._pending[vnic.id] = vnic
        self._wake.set()
        await self._notify()

    def stats(self) -> PoolStats:
        return PoolStats(
            kind=self.backend.kind,
            free=len(self._free),
            attached=len(self._attached),
            pending=len(self._pending),
            target=self.target,
            capacity=self.backend.capacity,
        )

    def free_vnics(self) -> tuple[Vnic, ...]:
        return tuple(self._free)

    async def wait_stocked(self) -> None:
        """Wait until the stock is at target, or as full as the back-end allows with nothing pending."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: len(self._free) >= self.target or not (self._can_create() or self._pending)
            )

    # -- replenishment ------------------------------------------------------------------------

    def _total(self) -> int:
        return len(self._free) + len(self._attached) + len(self._pending) + self._creating

    def _can_create(self) -> bool:
        if self.backend.kind != "veth":
            return False
        capacity = self.backend.capacity
        return capacity is None or self._total() < capacity

    def _empty_message(self) -> str:
        stats = self.stats()
        return (
            f"vNIC pool empty: no free {stats.kind} vNIC ({stats.attached} attached, "
            f"{stats.pending} not yet back from pods, capacity {stats.capacity or 'unbounded'})"
        )

    async def _fill(self) -> None:
        if self._pending:
            await self._recover_pending()
        while len(self._free) < self.target and self._can_create():
            self._free.append(await self.backend.create())
            await self._notify()
        await self._notify()

    async def _recover_pending(self) -> None:
        back = {s.vnic.id: s.vnic for s in await self.backend.discover() if s.in_host}
        for vnic_id in [i for i in self._pending if i in back]:
            del self._pending[vnic_id]
            self._free.append(back[vnic_id])

    async def _replenish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._fill()
            except Exception:
                log.exception("vNIC pool replenishment failed; retrying in %ss", RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)
                self._wake.set()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
