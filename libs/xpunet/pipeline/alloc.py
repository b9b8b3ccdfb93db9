"""Stable small numbers for names (IP-set membership bits, next-hop ids).  Pure.

A :class:`StableIds` keeps every assignment it made until its name is released,
and gives a new name the first free number from crc32(name) modulo the space
(linear probing), so one name coming or going moves no other name's number,
and the entries that carry numbers change only for the names that changed.

When the space is full, further names wait (they get no number: their rules
are left out, fail closed); a released number goes to the first waiting name
in name order.  Fed every name at once from empty, it assigns exactly what
:func:`xpunet.pipeline.lowering.hashed_ids` assigns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xpunet.pipeline.lowering import probe_start


class StableIds:
    __slots__ = ("_space", "_start", "_taken", "_waiting", "assigned")

    def __init__(self, space: int, *, start: int = 0) -> None:
        if space <= 0:
            raise ValueError(f"an id space needs at least one number, not {space}")
        self._space = space
        self._start = start
        self.assigned: dict[str, int] = {}
        self._taken: dict[int, str] = {}
        self._waiting: set[str] = set()

    @property
    def waiting(self) -> frozenset[str]:
        """Names wanted but without a number (the space is full)."""
        return frozenset(self._waiting)

    def update(self, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> set[str]:
        """Release ``remove``, then number ``add`` (and waiting names) in name order.

        Returns the names whose number changed (assigned, released, or lost).
        """
        changed: set[str] = set()
        for name in remove:
            n = self.assigned.pop(name, None)
            if n is not None:
                del self._taken[n]
                changed.add(name)
            self._waiting.discard(name)
        for name in add:
            if name not in self.assigned:
                self._waiting.add(name)
        if self._waiting and len(self._taken) < self._space:
            for name in sorted(self._waiting):
                if len(self._taken) >= self._space:
                    break
                n = probe_start(name, self._space)
                while n + self._start in self._taken:
                    n = (n + 1) % self._space
                self._taken[n + self._start] = name
                self.assigned[name] = n + self._start
                self._waiting.discard(name)
                changed.add(name)
        return changed

    def snapshot(self) -> Mapping[str, int]:
        return dict(self.assigned)
