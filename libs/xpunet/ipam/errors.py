"""IPAM errors: a bad range configuration, an exhausted range, unreadable persisted state."""

from __future__ import annotations


class IpamError(Exception):
    """Base of every IPAM error."""


class IpamConfigError(IpamError):
    """The node's pod CIDRs cannot be used (malformed, too small, two of a family)."""


class IpamExhaustedError(IpamError):
    """Every address of a family's range is leased."""

    def __init__(self, family: int, network: str, size: int) -> None:
        super().__init__(f"IPv{family} range {network} is exhausted: all {size} pod addresses are leased")
        self.family = family
        self.network = network


class IpamStateError(IpamError):
    """Persisted IPAM state does not decode."""
