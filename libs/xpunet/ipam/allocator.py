"""Address leases per attachment (container id + interface name), pure.

`Ipam` hands each attachment one address per family of the node's ranges.  A
repeated allocation for the same attachment returns the same lease (CNI ADD is
retried by runtimes), release is idempotent, and `gc` releases every lease
whose attachment the runtime no longer knows.  Addresses are handed out from a
rotating cursor so a just-released address is not immediately reused (a stale
conntrack entry or ARP cache on a peer would otherwise hit the new pod).

State is plain data (`to_data`/`from_data`): the adapter decides where it
lives (a state file, a KV bucket).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from xpunet.ipam.errors import IpamExhaustedError, IpamStateError
from xpunet.ipam.ranges import FamilyRange, IpAddress

STATE_VERSION = 1


@dataclass(frozen=True, slots=True, order=True)
class AttachmentKey:
    """CNI identifies an attachment by container id and interface name."""

    container_id: str
    ifname: str

    def __str__(self) -> str:
        return f"{self.container_id}/{self.ifname}"


@dataclass(frozen=True, slots=True)
class Lease:
    key: AttachmentKey
    addresses: tuple[IpAddress, ...]  # one per family, IPv4 first

    def address(self, family: int) -> IpAddress | None:
        return next((a for a in self.addresses if a.version == family), None)


class Ipam:
    """Leases over a node's ranges (at most one per family)."""

    def __init__(self, ranges: Sequence[FamilyRange]) -> None:
        self.ranges: tuple[FamilyRange, ...] = tuple(ranges)
        self._leases: dict[AttachmentKey, Lease] = {}
        self._used: dict[int, set[int]] = {r.family: set() for r in self.ranges}
        self._cursor: dict[int, int] = {r.family: r.first for r in self.ranges}
        # Leases found in persisted state that no longer fit the ranges (the podCIDR changed).
        self.dropped: tuple[Lease, ...] = ()

    # -- queries -------------------------------------------------------------------------------

    def lease(self, key: AttachmentKey) -> Lease | None:
        return self._leases.get(key)

    def leases(self) -> tuple[Lease, ...]:
        return tuple(self._leases[k] for k in sorted(self._leases))

    def free(self, family: int) -> int:
        rng = self._range(family)
        return rng.size - len(self._used[family])

    def gateway(self, family: int) -> IpAddress:
        return self._range(family).gateway

    # -- changes -------------------------------------------------------------------------------

    def allocate(self, key: AttachmentKey) -> Lease:
        """The attachment's lease: the existing one, or new addresses (all families or none)."""
        existing = self._leases.get(key)
        if existing is not None:
            return existing
        taken: list[tuple[FamilyRange, int]] = []
        try:
            for rng in self.ranges:
                taken.append((rng, self._take(rng)))
        except IpamExhaustedError:
            # A dual-stack lease is all or nothing: give back what the other family took.
            for rng, value in taken:
                self._used[rng.family].discard(value)
            raise
        lease = Lease(key=key, addresses=tuple(rng.address(value) for rng, value in taken))
        self._leases[key] = lease
        return lease

    def release(self, key: AttachmentKey) -> Lease | None:
        """Release the attachment's lease; None when it had none (idempotent)."""
        lease = self._leases.pop(key, None)
        if lease is not None:
            for address in lease.addresses:
                self._used[address.version].discard(int(address))
        return lease

    def gc(self, valid: Iterable[AttachmentKey]) -> tuple[Lease, ...]:
        """Release every lease whose attachment is not in `valid`; return them, sorted."""
        keep = set(valid)
        released: list[Lease] = []
        for key in sorted(self._leases):
            if key not in keep:
                lease = self.release(key)
                if lease is not None:
                    released.append(lease)
        return tuple(released)

    def _range(self, family: int) -> FamilyRange:
        for rng in self.ranges:
            if rng.family == family:
                return rng
        raise KeyError(f"no IPv{family} range on this node")

    def _take(self, rng: FamilyRange) -> int:
        used = self._used[rng.family]
        if len(used) >= rng.size:
            raise IpamExhaustedError(rng.family, str(rng.network), rng.size)
        value = self._cursor[rng.family]
        # A free address exists, so the walk ends within `size` steps; in practice in a few,
        # because the cursor sits just past the last allocation.
        while value in used:
            value = rng.first if value >= rng.last else value + 1
        used.add(value)
        self._cursor[rng.family] = rng.first if value >= rng.last else value + 1
        return value

    # -- persistence ---------------------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ranges": [str(r.network) for r in self.ranges],
            "cursors": {str(f): c for f, c in sorted(self._cursor.items())},
            "leases": [
                {
                    "container_id": lease.key.container_id,
                    "ifname": lease.key.ifname,
                    "addresses": [str(a) for a in lease.addresses],
                }
                for lease in self.leases()
            ],
        }

    @classmethod
    def from_data(cls, ranges: Sequence[FamilyRange], data: Mapping[str, Any]) -> Ipam:
        """Restore leases; a lease outside the current ranges lands in `dropped`, not in use."""
        ipam = cls(ranges)
        try:
            if data.get("version") != STATE_VERSION:
                raise IpamStateError(f"IPAM state version {data.get('version')!r} is not {STATE_VERSION}")
            dropped: list[Lease] = []
            for raw in data.get("leases", []):
                key = AttachmentKey(str(raw["container_id"]), str(raw["ifname"]))
                addresses = tuple(ipaddress.ip_address(a) for a in raw["addresses"])
                lease = Lease(key=key, addresses=addresses)
                families = {a.version for a in addresses}
                fits = (
                    families == set(ipam._used)
                    and len(addresses) == len(families)
                    and all(a in ipam._range(a.version) for a in addresses)
                )
                clash = fits and any(int(a) in ipam._used[a.version] for a in addresses)
                if not fits or clash or key in ipam._leases:
                    dropped.append(lease)
                    continue
                ipam._leases[key] = lease
                for a in addresses:
                    ipam._used[a.version].add(int(a))
            for family, cursor in data.get("cursors", {}).items():
                fam = int(family)
                if fam in ipam._cursor:
                    rng = ipam._range(fam)
                    ipam._cursor[fam] = cursor if rng.first <= int(cursor) <= rng.last else rng.first
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IpamStateError(f"IPAM state does not decode: {exc!r}") from exc
        ipam.dropped = tuple(dropped)
        return ipam
