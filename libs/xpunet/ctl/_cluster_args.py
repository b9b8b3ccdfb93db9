"""Flags of the local cluster (``xpunetctl up --pods-per-node``, ``xpunetctl demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xpunet.cluster.cluster import ClusterOptions


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("local cluster (network namespaces; see docs/cluster.md)")
    group.add_argument(
        "--pods-per-node",
        type=int,
        metavar="M",
        help="run a local cluster with M generated pods per node (unless --manifests declares Pods)",
    )
    group.add_argument(
        "--target",
        choices=["kernel", "softipu"],
        help="what each node's datapath programs (kernel: real packets; softipu: trace verdicts)",
    )
    group.add_argument("--overlay", choices=["none", "vxlan"], help="link nodes over VXLAN (default: routed)")
    group.add_argument(
        "--attach",
        choices=["auto", "cni", "plain"],
        help="pods through xpunet-cni (cni), the harness's own veths (plain), or cni when wired (auto)",
    )
    group.add_argument("--run", default="", help="run id (default: random); `xpunetctl down --run ID`")


def wants_cluster(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) is not None for k in ("pods_per_node", "target", "overlay", "attach"))


def cluster_options(args: argparse.Namespace, *, manifests: Path | None) -> ClusterOptions:
    if args.pods_per_node is not None and args.pods_per_node < 0:
        raise SystemExit("xpunetctl: --pods-per-node must be >= 0")
    return ClusterOptions(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node if args.pods_per_node is not None else 2,
        manifests=manifests,
        target=args.target or "kernel",
        overlay=args.overlay or "none",
        attach=args.attach or "auto",
        run=args.run,
    )
