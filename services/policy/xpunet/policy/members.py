"""A set's member CIDRs kept sorted under single adds and removes.  Pure.

An IP set value lists its CIDRs IPv4 first, numerically within a family
(``xpunet.policy.selectors.sort_cidrs``).  Re-rendering that list from the
set's members costs O(members) address parses and a sort on every change, and
set sizes grow with the cluster; a pod joining or leaving a set should cost
about the same at 50,000 pods as at 5,000.  ``CidrList`` keeps the list
sorted and applies the changes since the last read with a binary search each
(a bulk change re-sorts instead).  Members are reference counted: the same
CIDR may come from an ipBlock and from a pod, or from two pods sharing an IP.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from functools import lru_cache

# (family, network address as int, prefix length, CIDR text): sorts as sort_cidrs does.
CidrEntry = tuple[int, int, int, str]


@lru_cache(maxsize=1 << 18)
def host_entry(ip: str) -> CidrEntry:
    """The entry of a pod IP as a host route (/32 or /128); cached, so sets share the tuples."""
    addr = ipaddress.ip_address(ip)
    return (addr.version, int(addr), addr.max_prefixlen, f"{addr}/{addr.max_prefixlen}")


def cidr_entry(cidr: str) -> CidrEntry:
    net = ipaddress.ip_network(cidr, strict=False)
    return (net.version, int(net.network_address), net.prefixlen, str(net))


class CidrList:
    """Reference-counted CIDRs; ``members()`` returns them sorted (one tuple, shared until a change)."""

    __slots__ = ("_added", "_cidrs", "_entries", "_members", "_refs", "_removed")

    def __init__(self, entries: Iterable[CidrEntry] = ()) -> None:
        self._refs: dict[CidrEntry, int] = {}
        for entry in entries:
            self._refs[entry] = self._refs.get(entry, 0) + 1
        self._entries: list[CidrEntry] = sorted(self._refs)
        self._cidrs: list[str] = [e[3] for e in self._entries]
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

    def members(self) -> tuple[str, ...]:
        if self._members is None:
            self._apply()
            self._members = tuple(self._cidrs)
        return self._members

    def _apply(self) -> None:
        pending = len(self._added) + len(self._removed)
        if not pending:
            return
        if pending > 32 and pending * 8 > len(self._entries):
            # Many changes at once (a cold start, a namespace relabel): one sort beats many inserts.
            self._entries = sorted(self._refs)
            self._cidrs = [e[3] for e in self._entries]
        else:
            entries, cidrs = self._entries, self._cidrs
            for entry in self._removed:
                at = bisect.bisect_left(entries, entry)
                del entries[at]
                del cidrs[at]
            for entry in self._added:
                at = bisect.bisect_left(entries, entry)
                entries.insert(at, entry)
                cidrs.insert(at, entry[3])
        self._added.clear()
        self._removed.clear()
