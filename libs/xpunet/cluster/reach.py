"""Measuring the reachability matrix: real connections, or ``xpunetctl trace`` verdicts.

With network namespaces every cell is one TCP connect from the client pod's
namespace (all cells at once, so denied cells cost one timeout in total).
Without them (not root, softipu target) every cell is a trace through the
reference pipeline on the live intents — the same lowering the datapath uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from xpunet.cluster import probe
from xpunet.cluster.cluster import LocalCluster
from xpunet.cluster.matrix import Cell, Destination, Seen, destinations, expected
from xpunet.ctl.trace import TraceError, read_state, run_trace
from xpunet.model.objects import Pod
from xpunet.pipeline.interpreter import Drop, Reject

Source = Literal["tcp", "trace"]


@dataclass(frozen=True, slots=True)
class Matrix:
    source: Source
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]

    @property
    def disagreements(self) -> list[Cell]:
        return [c for c in self.cells.values() if not c.agrees]


def _node_address(cluster: LocalCluster, src: Pod, family: int) -> str:
    node = cluster.plan.node(src.node or cluster.plan.nodes[0].name)
    return node.address4 if family == 4 else node.address6


async def measure(
    cluster: LocalCluster,
    urls: Sequence[str],
    *,
    source: Source,
    family: int = 4,
    timeout: float = probe.DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> Matrix:
    pods = cluster.running_pods()
    namespaces, policies = cluster.namespaces(), cluster.policies()
    columns = destinations(pods, cluster.services(), family=family)
    rows = sorted(pods, key=lambda p: (p.namespace, p.name))
    cells: dict[tuple[str, str], Cell] = {}
    node_addresses = {n.name: n.address4 if family == 4 else n.address6 for n in cluster.plan.nodes}

    if source == "tcp":

        async def one(src: Pod, dst: Destination) -> tuple[Seen, str]:
            ip = dst.ip or _node_address(cluster, src, family)
            result = await probe.tcp(
                cluster.pod(f"{src.namespace}/{src.name}").netns, ip, dst.port, timeout=timeout
            )
            return result.outcome, result.peer

        pairs = [(p, d) for p in rows for d in columns]
        seen = await asyncio.gather(*(one(s, d) for s, d in pairs))
        measured = dict(zip([(f"{s.namespace}/{s.name}", d.label) for s, d in pairs], seen, strict=True))
    else:
        objects, intents, _problems = await read_state(list(urls), connect_within=5.0)
        measured = {}
        for src in rows:
            ref = f"{src.namespace}/{src.name}"
            for dst in columns:
                if dst.kind == "pod" and dst.ref == ref:
                    measured[(ref, dst.label)] = ("open", ref)  # its own address: the pod's loopback
                    continue
                if dst.kind == "pod":
                    spec = f"{dst.ref}:{dst.port}/tcp"
                elif dst.kind == "cluster_ip":
                    spec = f"svc/{dst.ref}:{dst.port}"
                else:
                    ip = _node_address(cluster, src, family)
                    spec = f"{ip}:{dst.port}/tcp" if family == 4 else f"[{ip}]:{dst.port}/tcp"
                try:
                    _lines, result = run_trace(objects, intents, src=ref, dst=spec)
                except TraceError as exc:
                    measured[(ref, dst.label)] = ("unreachable", str(exc))
                    continue
                verdict = result.verdict
                outcome: Seen = "open"
                if isinstance(verdict, Drop):
                    outcome = "timeout"
                elif isinstance(verdict, Reject):
                    outcome = "refused"
                measured[(ref, dst.label)] = (outcome, "")
    for src in rows:
        ref = f"{src.namespace}/{src.name}"
        for dst in columns:
            outcome, peer = measured[(ref, dst.label)]
            want = expected(
                pods, namespaces, policies, src, dst, family=family, node_addresses=node_addresses
            )
            cells[(ref, dst.label)] = Cell(ref, dst.label, want, outcome, peer)
    return Matrix(
        source,
        tuple(f"{p.namespace}/{p.name}" for p in rows),
        tuple(d.label for d in columns),
        cells,
    )
