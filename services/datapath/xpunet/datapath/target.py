"""What the datapath needs from a target (an xPU over P4Runtime, softipu, the Linux kernel).  Pure.

The datapath lowers intents to :class:`~xpunet.pipeline.entries.TableEntry`
values and keeps the target equal to them.  A target implements
:class:`Target`; the reconciler (``xpunet.datapath.reconcile``) decides what
to write, the target only executes it:

* ``wait_ready()`` blocks until the target can be written (P4Runtime: primary,
  pipeline installed) and returns its *generation*.  A new generation means the
  target may have lost or changed state since the datapath last looked (a new
  stream, a target restart, a pipeline commit that cleared the tables, a backup
  that became primary): the datapath then reads it back and reconciles.
* ``read_entries(desired)`` returns the entries xpunet owns on the target
  (entries written by someone else are returned separately, so the datapath
  leaves them alone and never writes over them).  A target that cannot read
  entries back (the kernel holds only their translation into nftables and
  routes) reconciles itself to ``desired`` there, changing only what differs,
  and returns what it then holds.
* ``apply(phases)`` writes the phases of a :class:`~xpunet.pipeline.diff.Batch`
  in order, each acknowledged before the next; per-update rejections come back
  in the result (the rest of the batch still applies).  A failure of a whole
  call (unreachable, no longer primary) raises ``RetryableTargetError``; what
  was applied before it is unknown to the caller, which reconciles.
* ``read_counters(tables)`` returns the direct counters (packets, bytes) per
  entry key, of the named tables only when it can read per table, and
  ``read_drop_counters()`` the packets dropped per drop reason (None: this
  target does not count drops).  ``xpunet.datapath.counter_poll`` turns them
  into per-policy / per-service / per-reason totals.

Errors are ``xpunet.p4rt.errors`` classes (pure, shared by every target).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from xpunet.pipeline.diff import Update
from xpunet.pipeline.entries import EntryKey, TableEntry


@dataclass(frozen=True, slots=True)
class Rejected:
    """One update the target refused, with the reason as the target gave it."""

    update: Update
    code: str  # canonical gRPC code name, e.g. "INVALID_ARGUMENT"
    message: str
    retryable: bool  # the cause may go away (resource pressure, a missing dependency)

    @property
    def origin(self) -> str:
        return self.update.entry.origin


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one ``apply`` did: every update not listed in ``rejected`` was acknowledged."""

    sent: int
    rejected: tuple[Rejected, ...] = ()
    notes: tuple[str, ...] = ()  # target problems not tied to one update (reported as the last error)


@dataclass(frozen=True, slots=True)
class TargetEntries:
    """A read-back of the target: xpunet's entries, and the keys held by entries of other writers."""

    owned: tuple[TableEntry, ...]
    foreign: frozenset[EntryKey] = frozenset()


class Target(Protocol):
    """A programmable dataplane that holds the xpunet pipeline's tables."""

    @property
    def kind(self) -> str:
        """``"p4rt"`` or ``"kernel"`` (for status and logs)."""
        ...

    @property
    def description(self) -> str:
        """Where the target is (an address, a namespace), for status and logs."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def wait_ready(self) -> int:
        """Block until the target accepts writes; returns its generation (see the module docstring)."""
        ...

    def is_ready(self, generation: int) -> bool:
        """Whether the target is still writable in ``generation`` (cheap, no I/O)."""
        ...

    async def wait_changed(self, generation: int) -> None:
        """Return once ``is_ready(generation)`` is false (lost role, stream, pipeline)."""
        ...

    async def read_entries(self, desired: Sequence[TableEntry]) -> TargetEntries: ...

    async def apply(self, phases: Sequence[Sequence[Update]]) -> ApplyResult: ...

    async def read_counters(
        self, tables: Collection[str] | None = None
    ) -> Mapping[EntryKey, tuple[int, int]]:
        """Direct counters, (packets, bytes) per entry key, of ``tables`` (aliases; None: every table
        that has them).  A target that cannot read per table may return more keys than asked for."""
        ...

    async def read_drop_counters(self) -> Mapping[str, tuple[int, int]] | None:
        """(packets, bytes) per drop reason (``xpunet.pipeline.schema.DROP_REASONS``); None when this
        target does not count drops."""
        ...
