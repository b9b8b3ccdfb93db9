"""The kernel target (``xpunet.datapath.kernel``, helper J's) seen through the datapath's Target protocol.

The kernel holds the translation of entries (nftables elements, routes), not
the entries themselves, so it cannot be read back entry by entry: at each
reconciliation ``read_entries(desired)`` asks the kernel target to reconcile
its table and routes to ``desired`` (it changes only what differs) and
reports ``desired`` as what the target holds.  Later passes send only the
difference through ``apply``.  The kernel does not restart under the
datapath, so the generation is fixed once started.  Entries the kernel
cannot express come back as notes (reported as the last error), not as
per-update rejections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence

from xpunet.datapath.counters import drops_from_kernel
from xpunet.datapath.kernel.target import KernelTarget
from xpunet.datapath.target import ApplyResult, TargetEntries
from xpunet.pipeline.diff import Batch, Update
from xpunet.pipeline.entries import EntryKey, TableEntry


class KernelTargetAdapter:
    kind = "kernel"

    def __init__(self, *, netns: str = "", port_names: Mapping[int, str] | None = None) -> None:
        self.kernel = KernelTarget(netns=netns, port_names=port_names)
        self.netns = netns
        self._started = False
        self._never = asyncio.Event()
        # Port renames (pods attaching) and the apply loop's writes both change the kernel state:
        # one at a time, so each renders and commits against what the previous one left.
        self._lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return f"netns {self.netns}" if self.netns else "own network namespace"

    async def start(self) -> None:
        return None  # the ruleset is installed on first use, inside wait_ready's retries

    async def close(self) -> None:
        await self.kernel.close()

    async def wait_ready(self) -> int:
        if not self._started:
            await self.kernel.start()
            self._started = True
        return 1

    def is_ready(self, generation: int) -> bool:
        return self._started and generation == 1

    async def wait_changed(self, generation: int) -> None:
        if self.is_ready(generation):
            await self._never.wait()

    async def read_entries(self, desired: Sequence[TableEntry]) -> TargetEntries:
        async with self._lock:
            await self.kernel.reconcile(desired)
        return TargetEntries(tuple(desired))

    async def apply(self, phases: Sequence[Sequence[Update]]) -> ApplyResult:
        batch = Batch(tuple(tuple(p) for p in phases))
        async with self._lock:
            result = await self.kernel.apply(batch)
        return ApplyResult(len(batch), (), tuple(result.problems) + tuple(result.route_errors))

    async def set_port_names(self, names: Mapping[int, str]) -> None:
        """Which interface each port id is (uplinks, pods' veth host sides); re-renders what names them."""
        async with self._lock:
            if dict(names) == self.kernel.state.port_names:
                return
            await self.kernel.set_port_names(names)  # before the first write: only remembered

    async def read_counters(
        self, tables: Collection[str] | None = None
    ) -> Mapping[EntryKey, tuple[int, int]]:
        """The ACL entries' counters (the only entries the kernel target counts), whatever ``tables``."""
        return await self.kernel.counters()

    async def read_drop_counters(self) -> Mapping[str, tuple[int, int]]:
        """The ruleset's named ``drop_<reason>`` / ``deny_<direction>`` counters, per drop reason."""
        return drops_from_kernel(await self.kernel.drop_counters())
