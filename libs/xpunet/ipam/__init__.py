"""Pod IPAM, pure: node ranges from podCIDRs (IPv4 and IPv6), a gateway per family, leases per attachment.

No I/O here: the datapath's attach server persists `Ipam.to_data()` where it keeps its state.
"""

from xpunet.ipam.allocator import AttachmentKey, Ipam, Lease
from xpunet.ipam.errors import IpamConfigError, IpamError, IpamExhaustedError, IpamStateError
from xpunet.ipam.ranges import FamilyRange, family_range, node_ranges

__all__ = [
    "AttachmentKey",
    "FamilyRange",
    "Ipam",
    "IpamConfigError",
    "IpamError",
    "IpamExhaustedError",
    "IpamStateError",
    "Lease",
    "family_range",
    "node_ranges",
]
