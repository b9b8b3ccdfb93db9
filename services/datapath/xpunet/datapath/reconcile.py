"""Desired entries vs what the target holds → the next batch to write.  Pure (the clock is passed in).

The :class:`Reconciler` keeps the datapath's view of the target:

* ``applied`` — xpunet's entries on the target, as read back at the last
  reconciliation and updated with every acknowledged write;
* ``foreign`` — keys held by entries another writer put there: never modified
  or deleted; a desired entry on such a key is reported as a conflict and not
  written (the owner may remove it; it is retried at every reconciliation);
* ``rejected`` — updates the target refused: each keeps its error and, when the
  cause may be transient, a retry time with exponential backoff; a permanent
  rejection is retried only when the desired entry changes (or a new
  reconciliation reads the target back).

:meth:`Reconciler.plan` computes only the difference, never a flush: after a
datapath restart the read-back entries equal the desired ones and nothing is
written.  Deletes of stale entries (``sweep``) are withheld until every intent
source is in sync, so a partial view never removes live entries.

Given ``changed`` (the keys whose desired entry the incremental lowering
changed), a plan looks only at those keys, the rejected ones and the stale
ones still waiting for the sweep: every other key is known to be applied as
desired (the invariant every plan and record keeps), so one intent change
costs O(its entries), not O(node).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from xpunet.bus.backoff import Backoff
from xpunet.datapath.target import ApplyResult, Rejected, TargetEntries
from xpunet.pipeline.diff import Batch, Update, new_update, phased
from xpunet.pipeline.entries import EntryKey, TableEntry

# Codes that mean "our view of the target is wrong": read it back instead of retrying blindly.
_STALE_VIEW = {("INSERT", "ALREADY_EXISTS"), ("MODIFY", "NOT_FOUND")}


@dataclass(frozen=True, slots=True)
class Rejection:
    """An update the target refused, as reported in status (``origin`` names the intent)."""

    kind: str
    entry: TableEntry
    code: str
    message: str
    retryable: bool
    attempts: int
    retry_at: float  # math.inf when only a change of the desired entry retries it

    @property
    def origin(self) -> str:
        return self.entry.origin

    def describe(self) -> str:
        again = "retrying" if self.retryable else "permanent"
        return (
            f"{self.kind} {self.entry.alias} from {self.entry.origin or '?'}: {self.code}: "
            f"{self.message} ({again}, {self.attempts} attempt(s))"
        )


@dataclass(slots=True)
class Reconciler:
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.2, factor=2.0, maximum=30.0))
    applied: dict[EntryKey, TableEntry] = field(default_factory=dict)
    foreign: frozenset[EntryKey] = frozenset()
    rejected: dict[EntryKey, Rejection] = field(default_factory=dict)
    conflicts: dict[EntryKey, TableEntry] = field(default_factory=dict)
    needs_resync: bool = True  # no read-back yet
    _stale: set[EntryKey] = field(default_factory=set)  # applied, not desired, waiting for the sweep
    _counts: dict[str, int] = field(default_factory=dict)  # applied entries per table alias
    # A plan from empty: its batch and what it inserts (a copy of desired), so that recording its
    # full acknowledgement is one dict, not millions of inserts (see record).
    _inserting: tuple[Batch, dict[EntryKey, TableEntry]] | None = None

    # ------------------------------------------------------------------ view

    def reset(self, actual: TargetEntries) -> None:
        """Take the target's read-back as the truth (after a start, a target restart, a stale view)."""
        self.applied = _tracked({e.key: e for e in actual.owned})
        per_table: dict[str, int] = {}
        for e in self.applied.values():
            per_table[e.table] = per_table.get(e.table, 0) + 1
        self._counts = {}
        for table, n in per_table.items():
            alias = table.rsplit(".", 1)[-1]
            self._counts[alias] = self._counts.get(alias, 0) + n
        self.foreign = actual.foreign
        self._stale = set()
        self._inserting = None
        # A retry is due now: the target may be a different one (restarted, new pipeline).
        self.rejected = {
            k: Rejection(r.kind, r.entry, r.code, r.message, r.retryable, r.attempts, 0.0)
            for k, r in self.rejected.items()
        }
        self.needs_resync = False

    def forget(self) -> None:
        """The view is unknown (a write failed midway): reconcile before the next write."""
        self.needs_resync = True
        self._inserting = None

    # ------------------------------------------------------------------ plan

    def plan(
        self,
        desired: Mapping[EntryKey, TableEntry],
        *,
        sweep: bool,
        now: float,
        changed: Iterable[EntryKey] | None = None,
    ) -> Batch:
        """The updates that bring the target to ``desired``, minus what must wait.

        ``changed=None`` compares every key (after a read-back); otherwise only
        ``changed`` and the keys this reconciler still owes (rejected, stale).
        """
        applied = self.applied
        self._inserting = None
        self.conflicts = {k: desired[k] for k in self.foreign if k in desired}
        for key in list(self.rejected):
            r = self.rejected[key]
            want = desired.get(key)
            if r.kind == "DELETE":
                if want is not None or key not in applied:
                    del self.rejected[key]  # wanted again, or gone
            elif want is None or (want.action, want.params) != (r.entry.action, r.entry.params):
                del self.rejected[key]  # the intent changed: a new attempt right away
        if changed is None:
            self._stale = set()
            if not applied and not self.rejected and not self.conflicts:
                # From empty (a node's first programming): every desired entry is an INSERT.
                batch = phased([new_update("INSERT", e) for e in desired.values()])
                # Copied after the sort (not beside its transient keys: a lower peak), same content:
                # nothing runs in between.
                self._inserting = (batch, dict(desired))
                return batch
            # Every key: the desired ones, then the applied ones no longer desired (no union set
            # of both: at 10M entries it costs a hash per key and hundreds of MB).
            return phased(
                self._compare(desired, desired.keys(), sweep=sweep, now=now)
                + self._compare(desired, (k for k in applied if k not in desired), sweep=sweep, now=now)
            )
        if self._stale or self.rejected:
            keys: Iterable[EntryKey] = set(changed) | self._stale | self.rejected.keys()
        else:
            keys = changed  # the common case: nothing owed, no copy
        return phased(self._compare(desired, keys, sweep=sweep, now=now))

    def _compare(
        self, desired: Mapping[EntryKey, TableEntry], keys: Iterable[EntryKey], *, sweep: bool, now: float
    ) -> list[Update]:
        """The updates ``keys`` need (keeps the stale set: applied keys not desired, not yet swept)."""
        applied = self.applied
        updates: list[Update] = []
        stale = self._stale
        conflicts = self.conflicts
        waiting = bool(self.rejected)
        for key in keys:
            want = desired.get(key)
            have = applied.get(key)
            if want is None:
                if have is None:
                    stale.discard(key)
                elif not sweep:
                    stale.add(key)
                elif not (waiting and self._waiting(key, now)):
                    stale.discard(key)
                    updates.append(Update("DELETE", have))
                continue
            if stale:
                stale.discard(key)
            if have is not None and have.action == want.action and have.params == want.params:
                continue
            if (conflicts and key in conflicts) or (waiting and self._waiting(key, now)):
                continue
            updates.append(new_update("INSERT" if have is None else "MODIFY", want))
        return updates

    def _waiting(self, key: EntryKey, now: float) -> bool:
        r = self.rejected.get(key)
        return r is not None and r.retry_at > now

    def next_retry(self) -> float | None:
        """When the earliest transient rejection is due again (None: nothing to retry)."""
        due = [r.retry_at for r in self.rejected.values() if r.retryable]
        return min(due) if due else None

    # ---------------------------------------------------------------- record

    def record(self, batch: Batch, result: ApplyResult, *, now: float) -> list[Rejection]:
        """Fold an acknowledged batch into the view; returns the new rejections (for reports)."""
        inserting, self._inserting = self._inserting, None
        if not result.rejected and not self.rejected:
            if inserting is not None and inserting[0] is batch and not self.applied:
                # The plan from empty, all acknowledged: applied is what it inserted (C-level copy
                # made at plan time, ~30x faster than inserting 10M keys one by one).
                self.applied = inserting[1]
                per_table = Counter(map(attrgetter("table"), self.applied.values()))
                self._counts = {}
                for table, n in per_table.items():
                    alias = table.rsplit(".", 1)[-1]
                    self._counts[alias] = self._counts.get(alias, 0) + n
                return []
            self._record_all(batch)
            return []
        refused: dict[EntryKey, Rejected] = {r.update.entry.key: r for r in result.rejected}
        fresh: list[Rejection] = []
        for u in batch.updates:
            key = u.entry.key
            r = refused.get(key) if refused else None
            if r is None:
                self._done(u)
                if self.rejected:
                    self.rejected.pop(key, None)
                continue
            if u.kind == "DELETE" and r.code == "NOT_FOUND":
                self._unapply(key)  # already gone: that is what we wanted
                self.rejected.pop(key, None)
                continue
            if (u.kind, r.code) in _STALE_VIEW:
                self.needs_resync = True
            previous = self.rejected.get(key)
            attempts = previous.attempts + 1 if previous is not None else 1
            retry_at = now + self.backoff.ceiling(attempts) if r.retryable else math.inf
            rejection = Rejection(u.kind, u.entry, r.code, r.message, r.retryable, attempts, retry_at)
            self.rejected[key] = rejection
            fresh.append(rejection)
        return fresh

    def _record_all(self, batch: Batch) -> None:
        """Every update acknowledged, nothing owed: the fast path of :meth:`record` (one key and one
        table-count step per update; counted per table, not per entry)."""
        applied = self.applied
        counts = self._counts
        for phase in batch.phases:
            added: dict[str, int] = {}
            for u in phase:
                e = u.entry
                key = e.key
                if u.kind == "DELETE":
                    gone = applied.pop(key, None)
                    if gone is not None:
                        added[gone.table] = added.get(gone.table, 0) - 1
                else:
                    n = len(applied)
                    applied[key] = e
                    if len(applied) != n:
                        added[e.table] = added.get(e.table, 0) + 1
            for table, n in added.items():
                alias = table.rsplit(".", 1)[-1]
                counts[alias] = counts.get(alias, 0) + n

    def _done(self, u: Update) -> None:
        if u.kind == "DELETE":
            self._unapply(u.entry.key)
        else:
            if u.entry.key not in self.applied:
                self._counts[u.entry.alias] = self._counts.get(u.entry.alias, 0) + 1
            self.applied[u.entry.key] = u.entry

    def _unapply(self, key: EntryKey) -> None:
        gone = self.applied.pop(key, None)
        if gone is not None:
            self._counts[gone.alias] -= 1

    # ---------------------------------------------------------------- report

    def occupancy(self) -> dict[str, int]:
        """xpunet's entries per table alias, as acknowledged by the target (kept per write, O(tables))."""
        return {alias: n for alias, n in sorted(self._counts.items()) if n}

    def problems(self) -> list[str]:
        lines = [r.describe() for r in self.rejected.values()]
        lines += [
            f"{e.alias} from {e.origin or '?'}: key held by an entry xpunet did not write; left alone"
            for e in self.conflicts.values()
        ]
        return lines


def _tracked(d: dict[EntryKey, TableEntry]) -> dict[EntryKey, TableEntry]:
    """``d``, made a container the cyclic GC tracks now rather than at its first insert.

    CPython tracks a dict once it holds a tracked object.  An empty read-back's
    dict would become tracked during the first write, after the datapath froze
    the heap (``gc.freeze``), and sit in the young generation: every young
    collection would then walk its millions of entries.  Tracked from the start,
    it is frozen with the rest.  (Only a GC-cost matter: no behaviour depends on it.)"""
    if not d:
        d[_TRACKER_KEY] = _TRACKER_ENTRY
        del d[_TRACKER_KEY]
    return d


_TRACKER_ENTRY = TableEntry("", (), "")
_TRACKER_KEY = _TRACKER_ENTRY.key


def desired_by_key(entries: Iterable[TableEntry]) -> dict[EntryKey, TableEntry]:
    return {e.key: e for e in entries}
