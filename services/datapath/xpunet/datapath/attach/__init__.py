"""Pod attachment in the datapath: the infra gRPC API, the vNIC pool and its back-ends, IP leases.

The datapath service starts an `AttachServer` (see docs/cni.md) and passes an
`EndpointSink` through which it installs and removes a pod's endpoint entries.
Importing this package stays cheap: the gRPC and netlink modules load with
`server`, `veth`.
"""

from xpunet.datapath.attach.core import (
    Attacher,
    AttachmentRecord,
    EndpointSink,
    NullEndpointSink,
    PodEndpoint,
    PodRef,
)
from xpunet.datapath.attach.settings import AttachSettings, TlsFiles

__all__ = [
    "AttachSettings",
    "Attacher",
    "AttachmentRecord",
    "EndpointSink",
    "NullEndpointSink",
    "PodEndpoint",
    "PodRef",
    "TlsFiles",
]
