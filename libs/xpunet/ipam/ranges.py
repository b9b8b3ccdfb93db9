"""Per-node address ranges derived from Node.spec.podCIDRs: one range per IP family, pure.

The gateway of a family is the first usable address of the node's pod CIDR
(network + 1); it lives on the host side of every pod interface (see
docs/cni.md, "Gateway scheme").  Pods get addresses from network + 2 up to the
last usable address (IPv4 excludes the broadcast address; IPv6 has none).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from xpunet.ipam.errors import IpamConfigError

Family = Literal[4, 6]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Smallest ranges that still hold a gateway and one pod.
_MAX_PREFIX: dict[int, int] = {4: 30, 6: 126}


@dataclass(frozen=True, slots=True)
class FamilyRange:
    """The pod range of one IP family on one node."""

    network: IpNetwork
    gateway: IpAddress
    first: int  # first allocatable address, as an integer
    last: int  # last allocatable address, as an integer

    @property
    def family(self) -> Family:
        return 4 if self.network.version == 4 else 6

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    @property
    def host_prefix(self) -> int:
        """Prefix length a pod address carries (one address: /32 or /128)."""
        return self.network.max_prefixlen

    def address(self, value: int) -> IpAddress:
        return ipaddress.ip_address(value) if self.family == 6 else ipaddress.IPv4Address(value)

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return address.version == self.network.version and self.first <= int(address) <= self.last


def family_range(cidr: str) -> FamilyRange:
    """Build the range of one pod CIDR; raise IpamConfigError naming the CIDR when it is unusable."""
    try:
        network = ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise IpamConfigError(f"pod CIDR {cidr!r} is not a valid network: {exc}") from exc
    if network.prefixlen > _MAX_PREFIX[network.version]:
        raise IpamConfigError(
            f"pod CIDR {cidr!r} is too small: /{network.prefixlen} leaves no address for a pod "
            f"beside the gateway (at most /{_MAX_PREFIX[network.version]})"
        )
    base = int(network.network_address)
    top = int(network.broadcast_address)
    last = top - 1 if network.version == 4 else top
    gateway = ipaddress.ip_address(base + 1) if network.version == 6 else ipaddress.IPv4Address(base + 1)
    return FamilyRange(network=network, gateway=gateway, first=base + 2, last=last)


def node_ranges(pod_cidrs: Iterable[str]) -> tuple[FamilyRange, ...]:
    """The node's ranges, IPv4 first; at most one CIDR per family (as Kubernetes allows)."""
    ranges: dict[int, FamilyRange] = {}
    for cidr in pod_cidrs:
        current = family_range(cidr)
        if current.family in ranges:
            raise IpamConfigError(
                f"two IPv{current.family} pod CIDRs ({ranges[current.family].network} and "
                f"{current.network}): a node has at most one per family"
            )
        ranges[current.family] = current
    if not ranges:
        raise IpamConfigError("no pod CIDR: the node has neither spec.podCIDRs nor a configured range")
    return tuple(ranges[f] for f in sorted(ranges))


def gateways(ranges: Sequence[FamilyRange]) -> tuple[IpAddress, ...]:
    return tuple(r.gateway for r in ranges)
