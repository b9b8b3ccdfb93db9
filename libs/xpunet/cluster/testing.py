"""Test helpers for the local cluster: the whole stack on a cluster, removed even on failure.

``running_cluster`` builds a cluster from a manifest directory (or generated
pods), runs every service on a private nats-server, attaches the pods and
waits for convergence; on exit everything is torn down and the test checks
that no namespace of the run is left.

Tests that need xpunet on the packets (policy, services) skip with
``dataplane_missing()`` as the reason (it names the missing piece) until the
kernel target and the CNI are wired (``xpunet.cluster.wiring``), and run as
soon as they are.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from xpunet.cluster import wiring
from xpunet.cluster.cluster import ClusterOptions, LocalCluster
from xpunet.cluster.netns import list_netns
from xpunet.cluster.plan import Overlay
from xpunet.ctl.stack import Stack, StackOptions
from xpunet.embedded.nats import NatsServer

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "cluster"


def dataplane_missing() -> str:
    """Why xpunet does not carry the cluster's packets yet ("" when it does)."""
    for check in (wiring.kernel_target(), wiring.cni()):
        if not check:
            return check.reason
    return ""


def write_manifests(directory: Path, text: str) -> Path:
    """A manifest directory from one YAML stream (tests declare their cluster inline)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cluster.yaml").write_text(textwrap.dedent(text))
    return directory


def pod(
    ns: str, name: str, node: str, labels: Mapping[str, str], ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "labels": dict(labels)},
        "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
    }


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


@contextlib.asynccontextmanager
async def running_cluster(
    tmp_path: Path,
    *,
    manifests: Path | None = None,
    nodes: int = 2,
    pods_per_node: int = 2,
    overlay: Overlay = "none",
    nats: NatsServer | None = None,
) -> AsyncIterator[tuple[LocalCluster, Stack]]:
    options = ClusterOptions(
        nodes=nodes,
        pods_per_node=pods_per_node,
        manifests=manifests,
        overlay=overlay,
        state_root=tmp_path / "runs",
    )
    cluster = LocalCluster(options)
    base = StackOptions(nats_urls=(nats.url,) if nats is not None else ())
    stack: Stack | None = None
    try:
        stack = Stack(await cluster.prepare(base))
        await stack.start()
        assert await stack.wait_ready()
        await cluster.attach_pods(stack)
        await cluster.wait_converged(stack)
        yield cluster, stack
    finally:
        if stack is not None:
            await stack.stop()
        await cluster.close()
        assert list_netns(cluster.plan.prefix) == [], "namespaces of the run left behind"
