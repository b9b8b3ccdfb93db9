"""The local cluster: nodes and pods as network namespaces, a manifest directory as the API.

What ``xpunetctl up --nodes N --pods-per-node M``, ``xpunetctl down``,
``make demo`` and the end-to-end tests run on (docs/cluster.md):

* ``plan`` (pure): names, the address plan, and the manifests the cluster
  writes for the watcher (Nodes, pods' status, EndpointSlices);
* ``state``: the run directory and its state file, written *before* each
  resource is created so ``down`` removes everything even after ``kill -9``;
* ``netns``, ``topology``, ``pods``: the kernel side (namespaces, the fabric,
  the VXLAN overlay, pod attachment through the real ``xpunet-cni``);
* ``probe``, ``responder``: real TCP/UDP connections between pods;
* ``matrix`` (pure): measured reachability next to the reference evaluator;
* ``cluster``: ties them to the in-process stack (``xpunet.ctl.stack``).
"""

import os as _os

# The cluster forks helpers (ip, xpunet-cni, responders) from a process that also runs gRPC
# (the datapaths' P4Runtime clients); gRPC's fork handlers only log noise on every fork there.
_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
