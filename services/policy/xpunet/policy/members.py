"""A set's member CIDRs, kept sorted and split into shards under single adds and removes.  Pure.

An IP set value lists its CIDRs IPv4 first, numerically within a family
(``xpunet.policy.selectors.sort_cidrs``).  Set sizes grow with the cluster (a
peer of every pod in every namespace holds every pod IP), and a pod joining or
leaving a set should cost about the same at 50,000 pods as at 5,000: not a
re-render of the whole list, and not a rewrite of one value that grows with
the set (nor a value past the bus's message size limit).  So a set is
published as *shards* (``xpunet.ir.policy.IPSet``: shard ``k`` of ``n``), and
``CidrList`` keeps each shard's list sorted, applying the changes since the
last read with a binary search each in the shard they hash to (a bulk change
re-sorts instead), and tells which shards changed.

* A member's shard is the CRC-32 of its CIDR text modulo the shard count:
  stable across processes and machines.
* The shard count is a power of two that follows the member count alone
  (:func:`shard_count`: about ``SHARD_TARGET`` members per shard at most,
  half that on average), so the output is a function of the current members,
  whatever order the changes came in.  Crossing a power of two re-partitions
  the whole set once (every shard changes).

Members are reference counted: the same CIDR may come from an ipBlock and from
a pod, or from two pods sharing an IP.
"""

from __future__ import annotations

import bisect
import ipaddress
import zlib
from collections.abc import Iterable
from functools import lru_cache

# (family, network address as int, prefix length, CIDR text, CRC-32 of the text): sorts as
# sort_cidrs does (the text is unique for its first three fields, so the hash never decides).
CidrEntry = tuple[int, int, int, str, int]

SHARD_TARGET = 64  # members per shard before the shard count doubles


def shard_count(members: int) -> int:
    """Shards of a set of ``members`` CIDRs: the least power of two holding at most SHARD_TARGET each."""
    count = 1
    while count * SHARD_TARGET < members:
        count *= 2
    return count


def _entry(version: int, address: int, prefix: int, text: str) -> CidrEntry:
    return (version, address, prefix, text, zlib.crc32(text.encode()))


@lru_cache(maxsize=1 << 18)
def host_entry(ip: str) -> CidrEntry:
    """The entry of a pod IP as a host route (/32 or /128); cached, so sets share the tuples."""
    addr = ipaddress.ip_address(ip)
    return _entry(addr.version, int(addr), addr.max_prefixlen, f"{addr}/{addr.max_prefixlen}")


def cidr_entry(cidr: str) -> CidrEntry:
    net = ipaddress.ip_network(cidr, strict=False)
    return _entry(net.version, int(net.network_address), net.prefixlen, str(net))


class CidrList:
    """Reference-counted CIDRs, read as sorted shards (``shards()``) or as one sorted tuple (``members()``).

    Each shard's tuple is shared until that shard changes, so a reader can
    tell unchanged shards by identity.
    """

    __slots__ = ("_added", "_changed", "_count", "_members", "_refs", "_removed", "_shards", "_texts")

    def __init__(self, entries: Iterable[CidrEntry] = ()) -> None:
        self._refs: dict[CidrEntry, int] = {}
        for entry in entries:
            self._refs[entry] = self._refs.get(entry, 0) + 1
        self._count = 0  # shards the lists below are split into (0: not built yet)
        self._shards: list[list[CidrEntry]] = []
        self._texts: list[tuple[str, ...]] = []  # per shard, rendered
        self._changed: set[int] | None = None  # shards changed since the last shards() (None: all)
        self._added: set[CidrEntry] = set()
        self._removed: set[CidrEntry] = set()
        self._members: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self._refs)

    def add(self, entry: CidrEntry) -> None:
        count = self._refs.get(entry, 0)
        self._refs[entry] = count + 1
        if count == 0:
            if entry in self._removed:
                self._removed.discard(entry)  # removed and back since the last read: nothing moved
            else:
                self._added.add(entry)
            self._members = None

    def remove(self, entry: CidrEntry) -> None:
        count = self._refs[entry]
        if count > 1:
            self._refs[entry] = count - 1
            return
        del self._refs[entry]
        if entry in self._added:
            self._added.discard(entry)
        else:
            self._removed.add(entry)
        self._members = None

    def shards(self) -> tuple[tuple[str, ...], ...]:
        """Every shard's CIDRs, sorted; ``shard_count(len(self))`` of them (one, maybe empty, at least).

        Costs the shards that changed since the last call, plus one tuple of the shard count.
        """
        self.changed_shards()
        return tuple(self._texts)

    def changed_shards(self) -> set[int] | None:
        """The shards changed since the last call (None: all of them, e.g. re-partitioned); renders them."""
        self._apply()
        changed, self._changed = self._changed, set()
        texts, shards = self._texts, self._shards
        for i in range(len(shards)) if changed is None else changed:
            texts[i] = tuple(e[3] for e in shards[i])
        return changed

    def members(self) -> tuple[str, ...]:
        """All CIDRs in one sorted tuple (the union of the shards)."""
        if self._members is None:
            self._apply()
            self._members = tuple(e[3] for e in sorted(e for shard in self._shards for e in shard))
        return self._members

    def _apply(self) -> None:
        count = shard_count(len(self._refs))
        pending = len(self._added) + len(self._removed)
        if count != self._count or (pending > 32 and pending * 8 > len(self._refs)):
            # Re-partitioned, or many changes at once (a cold start, a namespace relabel):
            # one sort beats many inserts.
            shards: list[list[CidrEntry]] = [[] for _ in range(count)]
            for entry in sorted(self._refs):
                shards[entry[4] % count].append(entry)
            if count == self._count and self._changed is not None:
                self._changed.update(i for i, shard in enumerate(shards) if shard != self._shards[i])
            else:
                self._texts = [()] * count
                self._changed = None
            self._shards = shards
            self._count = count
        elif pending:
            shards = self._shards
            changed = self._changed
            for entry in self._removed:
                shard = shards[entry[4] % count]
                del shard[bisect.bisect_left(shard, entry)]
                if changed is not None:
                    changed.add(entry[4] % count)
            for entry in self._added:
                shard = shards[entry[4] % count]
                shard.insert(bisect.bisect_left(shard, entry), entry)
                if changed is not None:
                    changed.add(entry[4] % count)
        self._added.clear()
        self._removed.clear()
