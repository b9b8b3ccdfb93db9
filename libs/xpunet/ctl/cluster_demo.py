"""``xpunetctl demo`` / ``make demo``: a 2-node local cluster from examples/, measured, edited, torn down.

Steps after the stack is ready (``run_demo`` prints the health table first):

1. attach the pods (network namespaces, ``xpunet-cni`` or the harness's veths),
   wait for convergence and print how long it took;
2. the reachability matrix: pods x pods and pods x Services (ClusterIP,
   NodePort), each cell ``seen/expected`` where *seen* is a real TCP connect
   (root) or the reference pipeline's verdict (``trace``), and *expected* is
   the policy service's reference evaluator; a NodePort is dialled on the
   client's own node address;
3. replace one NetworkPolicy (examples/edits/), wait for convergence, print the
   matrix again and the cells that changed;
4. tear everything down (also on failure or Ctrl-C).

Which verdicts are xpunet's is stated plainly: until the kernel target and the
CNI are wired, real packets run over the harness's plain kernel routes (no
policy, no services) and the demo says so; the trace matrix is then the one
that must agree with the policies.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import yaml

from xpunet.cluster import wiring
from xpunet.cluster.cluster import ClusterOptions, LocalCluster, pods_summary
from xpunet.cluster.matrix import format_matrix
from xpunet.cluster.netns import ClusterError
from xpunet.cluster.plan import PlanError
from xpunet.cluster.reach import Matrix, Source, measure
from xpunet.ctl.demo import run_demo
from xpunet.ctl.stack import Stack, StackOptions

CONVERGE_TIMEOUT = 30.0


class DemoCheckError(RuntimeError):
    """The dataplane disagrees with what the policies say."""


def default_examples() -> Path:
    """``examples/cluster`` of the source tree this runs from (or of the working directory)."""
    here = Path(__file__).resolve().parents[3] / "examples" / "cluster"
    return here if here.is_dir() else Path("examples/cluster")


def default_edit(manifests: Path) -> Path:
    return manifests.parent / "edits" / "web-ingress-shop-only.yaml"


def _print_matrix(say: object, title: str, matrix: Matrix) -> None:
    assert callable(say)
    say(title)
    for line in format_matrix(matrix.rows, matrix.columns, matrix.cells):
        say("  " + line)
    bad = matrix.disagreements
    say(
        f"  {len(matrix.cells)} cells, {len(bad)} disagree with the policies" + (" (marked !)" if bad else "")
    )


def _sources(cluster: LocalCluster) -> tuple[list[Source], Source]:
    """The matrices to show, and the one that must agree with the policies."""
    if not cluster.wiring.kernel:
        return ["trace"], "trace"
    if cluster.wiring.target == "kernel" and cluster.wiring.attach == "cni":
        return ["tcp"], "tcp"
    return ["tcp", "trace"], "trace"


async def cluster_demo(
    base: StackOptions,
    manifests: Path,
    stop: asyncio.Event | None = None,
    *,
    nodes: int = 2,
    edit: Path | None = None,
    kernel: bool | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """The demo; returns the exit code.  ``kernel=False`` forces the trace-only (not-root) mode."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    began = time.monotonic()
    if kernel is False or not wiring.is_root():
        why = "not root" if not wiring.is_root() else "asked not to use the kernel"
        say(f"xpunet demo: {why}, so no network namespaces and no real packets: the datapaths program")
        say("  softipu and every verdict comes from the reference pipeline (xpunetctl trace)")
    try:
        cluster = LocalCluster(
            ClusterOptions(nodes=nodes, manifests=manifests, pods_per_node=0, target="kernel", kernel=kernel)
        )
    except (ClusterError, PlanError) as exc:
        say(f"xpunet demo: {exc}")
        return 2
    edit_path = edit or default_edit(manifests)
    shown, authoritative = _sources(cluster)
    say(f"xpunet demo: {nodes}-node local cluster from {manifests} (run {cluster.run})")
    for note in cluster.wiring.notes:
        say(f"note: {note}")
    matrices: dict[str, Matrix] = {}

    async def show(stack: Stack, label: str) -> None:
        for source in shown:
            matrix = await measure(cluster, stack.nats_urls, source=source)
            what = "real TCP connects" if source == "tcp" else "trace through the reference pipeline"
            if source == "tcp" and authoritative != "tcp":
                what += " over the harness's plain routes: no xpunet policy or services on these packets"
            _print_matrix(say, f"reachability {label}, seen/expected ({what}):", matrix)
            matrices[f"{label}:{source}"] = matrix
            if source == authoritative and matrix.disagreements:
                first = matrix.disagreements[0]
                raise DemoCheckError(
                    f"{len(matrix.disagreements)} cell(s) disagree with the policies, e.g. "
                    f"{first.src} → {first.dst}: seen {first.seen}, expected {first.expected}"
                )

    async def pods(stack: Stack, _out: TextIO) -> None:
        started = time.monotonic()
        await cluster.attach_pods(stack)
        attached = time.monotonic() - started
        converged = await cluster.wait_converged(stack, timeout=CONVERGE_TIMEOUT)
        say(f"{len(cluster.pods)} pods attached ({cluster.wiring.attach}) in {attached:.2f}s:")
        for line in pods_summary(cluster):
            say(line)
        say(
            f"converged {converged * 1000:.0f} ms after the last pod (intents = reference, datapaths applied)"
        )

    async def initial(stack: Stack, _out: TextIO) -> None:
        await show(stack, "before the edit")

    async def edited(stack: Stack, _out: TextIO) -> None:
        manifest = yaml.safe_load(edit_path.read_text())
        meta = manifest["metadata"]
        say(f"editing NetworkPolicy {meta['namespace']}/{meta['name']} ({edit_path}):")
        for line in edit_path.read_text().splitlines():
            if line and not line.startswith("#"):
                say(f"  | {line}")
        cluster.apply(manifest)
        converged = await cluster.wait_converged(stack, timeout=CONVERGE_TIMEOUT)
        say(f"converged {converged * 1000:.0f} ms after the edit")
        await show(stack, "after the edit")
        changes = _changes(
            matrices.get(f"before the edit:{authoritative}"), matrices[f"after the edit:{authoritative}"]
        )
        say(f"changed by the edit ({authoritative}):" if changes else "the edit changed no cell")
        for line in changes:
            say(f"  {line}")

    code = 1
    try:
        options = await cluster.prepare(base)
        code = await run_demo(options, stop, steps=[pods, initial, edited], out=out)
    except (ClusterError, PlanError) as exc:
        say(f"xpunet demo: {exc}")
    finally:
        removed = await cluster.close()
        say(f"torn down: {len(removed)} namespace(s)/process group(s) removed")
    say(f"xpunet demo: {'done' if code == 0 else 'FAILED'} in {time.monotonic() - began:.1f}s")
    return code


def _changes(before: Matrix | None, after: Matrix) -> Sequence[str]:
    if before is None:
        return []
    out = []
    for key, cell in sorted(after.cells.items()):
        old = before.cells.get(key)
        if old is not None and (old.seen, old.expected) != (cell.seen, cell.expected):
            out.append(f"{cell.src} → {cell.dst}: {old.seen}/{old.expected} → {cell.seen}/{cell.expected}")
    return out
