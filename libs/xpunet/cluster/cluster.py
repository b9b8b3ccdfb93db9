"""The local cluster: a run directory, node namespaces, pods with responders, and the stack wired to them.

Lifecycle (``xpunetctl up``, ``xpunetctl demo``, the e2e fixtures)::

    cluster = LocalCluster(ClusterOptions(...))
    stack_options = await cluster.prepare(base_stack_options)   # namespaces, fabric, softipus, manifests
    async with Stack(stack_options) as stack:                    # the services, one datapath per node
        await stack.wait_ready()
        await cluster.attach_pods(stack)                         # CNI ADD (or plain veth), responders
        await cluster.wait_converged(stack)
        ...                                                      # probes, edits
    await cluster.close()                                        # everything it created, in order

``close`` is safe at any point (after a failure half way, twice); what it
cannot reach because the process died, ``xpunetctl down`` removes from the
state file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from xpunet.cluster import topology, wiring
from xpunet.cluster.converge import wait_converged
from xpunet.cluster.manifests import Declared, load_declared, remove_object, write_object
from xpunet.cluster.netns import ClusterError
from xpunet.cluster.plan import (
    ClusterPlan,
    Overlay,
    PodSpec,
    Target,
    endpoint_slices,
    generated_pods,
    make_plan,
    node_manifest,
    pod_manifest,
)
from xpunet.cluster.pods import (
    RunningPod,
    cni_call,
    result_ips,
    sctp_supported,
    start_responder,
    stop_process,
)
from xpunet.cluster.state import RunDir
from xpunet.cluster.teardown import teardown
from xpunet.ctl.stack import Stack, StackOptions
from xpunet.ipam import AttachmentKey, Ipam, node_ranges
from xpunet.model import parse
from xpunet.model.objects import Namespace, NetworkPolicy, Pod, Service

log = logging.getLogger(__name__)

AttachMode = Literal["cni", "plain", "none"]
SOFTIPU_START_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    nodes: int = 2
    pods_per_node: int = 2  # used when ``manifests`` declares no Pods
    manifests: Path | None = None  # a directory of declared objects (examples/)
    target: Target = "kernel"
    overlay: Overlay = "none"
    attach: Literal["auto", "cni", "plain"] = "auto"
    run: str = ""  # "" = a fresh random id
    state_root: Path | None = None
    kernel: bool | None = None  # None: build namespaces when root


@dataclass(slots=True)
class Wiring:
    """What this run actually uses (after looking at what exists), and why."""

    kernel: bool  # namespaces and real packets
    target: Target  # what the datapaths program
    attach: AttachMode
    notes: list[str] = field(default_factory=list)


def decide(options: ClusterOptions) -> Wiring:
    notes: list[str] = []
    kernel = options.kernel if options.kernel is not None else bool(wiring.is_root())
    if kernel and not (check := wiring.kernel_tools()):
        raise ClusterError(f"cannot build network namespaces: {check.reason}")
    if not kernel:
        notes.append(
            f"no network namespaces ({wiring.is_root().reason or 'kernel side off'}): "
            "softipu target, verdicts from `xpunetctl trace` (the reference pipeline), no real packets"
        )
        return Wiring(False, "softipu", "none", notes)
    # xpunet carries the packets only with both pieces: a kernel target without the CNI would
    # fail closed on the harness's veths (ports it does not know), a CNI needs a datapath target.
    target: Target = options.target
    kernel_check, cni_check = wiring.kernel_target(), wiring.cni()
    if kernel_check and options.overlay == "vxlan":
        kernel_check = wiring.kernel_vxlan()
    if options.attach != "plain" and target == "kernel" and kernel_check and cni_check:
        return Wiring(True, "kernel", "cni", notes)
    if options.attach == "cni":
        reason = kernel_check.reason or cni_check.reason or "--target softipu carries no packets"
        raise ClusterError(f"--attach cni is not possible: {reason}")
    if target == "kernel":
        missing = [c.reason for c in (kernel_check, cni_check) if not c] or ["--attach plain"]
        notes.append(f"kernel target not used ({'; '.join(missing)}): datapaths program softipu")
    notes.append(
        "pods attached by the harness's plain veths and kernel routes: real packets, "
        "but no xpunet policy or service load balancing on them"
    )
    return Wiring(True, "softipu", "plain", notes)


class LocalCluster:
    def __init__(self, options: ClusterOptions) -> None:
        self.options = options
        self.run = options.run or secrets.token_hex(3)
        self.plan: ClusterPlan = make_plan(
            self.run, options.nodes, target=options.target, overlay=options.overlay
        )
        self.wiring = decide(options)
        self.plan = replace(self.plan, target=self.wiring.target)
        self.rd: RunDir | None = None
        self.declared = Declared()
        self.pods: dict[str, RunningPod] = {}
        self.softipus: list[asyncio.subprocess.Process] = []
        self.p4rt_addresses: dict[str, str] = {}
        self.ipams: dict[str, Ipam] = {}
        self.slices: dict[str, Mapping[str, Any]] = {}
        self.extra_objects: dict[tuple[str, str, str], Mapping[str, Any]] = {}  # applied after start
        self.removed: set[tuple[str, str, str]] = set()
        self.manifest_dir: Path | None = None
        self._stack: Stack | None = None
        self._closed = False

    # ------------------------------------------------------------------- setup

    @property
    def kernel(self) -> bool:
        return self.wiring.kernel

    def node_dir(self, node: str) -> Path:
        assert self.rd is not None
        return self.rd.sub("nodes", node)

    async def prepare(self, base: StackOptions) -> StackOptions:
        """Namespaces, fabric, softipus and the manifest directory; the stack options to run with."""
        self.rd = RunDir.create(self.run, root=self.options.state_root)
        self.rd.add_process(os.getpid(), "up")
        self.rd.set_info(
            nodes=[n.name for n in self.plan.nodes],
            target=self.wiring.target,
            overlay=self.plan.overlay,
            attach=self.wiring.attach,
        )
        if self.options.manifests is not None:
            self.declared = load_declared(self.options.manifests)
        if not self.declared.pods:
            self.declared.pods = generated_pods(self.plan, self.options.pods_per_node)
        for spec in self.declared.pods:
            self.plan.node(spec.node)  # a pod on a node the cluster does not have is an error now
        if self.kernel:
            await topology.build_nodes(self.plan, self.rd)
            if self.wiring.attach == "plain":
                await topology.plain_routes(self.plan)
        if self.wiring.target == "softipu":
            for node in self.plan.nodes:
                self.p4rt_addresses[node.name] = await self._start_softipu(node.name)
        self.manifest_dir = self.rd.sub("manifests")
        for node in self.plan.nodes:
            write_object(self.manifest_dir, node_manifest(node, overlay=self.plan.overlay))
        for obj in self.declared.objects:
            write_object(self.manifest_dir, obj)
        for spec in self.declared.pods:
            write_object(self.manifest_dir, spec.manifest)  # Pending until attached
        per_node = {
            node.name: tuple(
                wiring.node_assignments(
                    self.plan,
                    node,
                    node_dir=self.node_dir(node.name),
                    p4rt_address=self.p4rt_addresses.get(node.name, ""),
                    use_cni=self.wiring.attach == "cni",
                )
            )
            for node in self.plan.nodes
        }
        self.rd.set_info(node_settings={k: list(v) for k, v in per_node.items()})
        return replace(
            base,
            nodes=len(self.plan.nodes),
            manifests=self.manifest_dir,
            # The manifest directory changes under the demo: the watcher polls it often.
            assignments=("watcher.poll_interval=0.1", "watcher.leader_election=false", *base.assignments),
            node_assignments=per_node,
            nats_workdir=self.rd.sub("nats"),
        )

    async def _start_softipu(self, node: str) -> str:
        assert self.rd is not None
        port_file = self.node_dir(node) / "softipu.port"
        binary = Path(sys.executable).parent / "xpunet-softipu"
        with (self.rd.sub("logs") / f"softipu-{node}.log").open("ab") as errlog:
            proc = await asyncio.create_subprocess_exec(
                str(binary),
                "--listen",
                "127.0.0.1:0",
                "--port-file",
                str(port_file),
                "--log-level",
                "WARNING",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=errlog,
                start_new_session=True,
            )
        self.rd.add_process(proc.pid, f"softipu {node}")
        self.softipus.append(proc)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SOFTIPU_START_TIMEOUT
        while loop.time() < deadline and proc.returncode is None:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return f"127.0.0.1:{int(port_file.read_text().strip())}"
            await asyncio.sleep(0.05)
        raise ClusterError(f"softipu for {node} did not start; see {self.rd.path / 'logs'}")

    # -------------------------------------------------------------------- pods

    async def attach_pods(self, stack: Stack, *, concurrency: int = 8) -> None:
        """Give every declared pod its namespace, interface and responder; write its status and the slices."""
        self._stack = stack
        sctp = sctp_supported()
        gate = asyncio.Semaphore(concurrency)

        async def one(spec: PodSpec) -> None:
            async with gate:
                await self.add_pod(spec, sctp=sctp, publish=False)

        await asyncio.gather(*(one(s) for s in self.declared.pods))
        self.publish_endpoints()

    async def add_pod(self, spec: PodSpec, *, sctp: bool | None = None, publish: bool = True) -> RunningPod:
        assert self.rd is not None
        assert self.manifest_dir is not None
        node = self.plan.node(spec.node)
        pod = RunningPod(
            spec,
            self.plan.pod_netns(spec.namespace, spec.name) if self.kernel else "",
            self.plan.container_id(spec.namespace, spec.name),
        )
        self.pods[spec.ref] = pod
        if self.kernel:
            self.rd.add_netns(pod.netns)
            from xpunet.cluster.netns import add_netns

            await add_netns(pod.netns)
        if self.wiring.attach == "cni":
            pod.cni_result = await cni_call(
                "ADD", pod, socket_path=str(self.node_dir(node.name) / "infra.sock")
            )
            pod.ips = result_ips(pod.cni_result)
        else:
            ipam = self.ipams.setdefault(node.name, Ipam(node_ranges(node.pod_cidrs)))
            lease = ipam.allocate(AttachmentKey(pod.container_id, "eth0"))
            pod.ips = tuple(str(a) for a in lease.addresses)
            if self.wiring.attach == "plain":
                plans = tuple((str(a), str(ipam.gateway(a.version))) for a in lease.addresses)
                await topology.plain_attach(node, pod.netns, pod.container_id, plans)
        if self.kernel:
            await start_responder(self.rd, pod, sctp=bool(sctp if sctp is not None else sctp_supported()))
        write_object(self.manifest_dir, pod_manifest(spec, pod.ips))
        if publish:
            self.publish_endpoints()
        return pod

    async def remove_pod(self, ref: str) -> None:
        """CNI DEL (or unplug), stop the responder, delete the namespace, and the Pod object."""
        assert self.manifest_dir is not None
        pod = self.pods.pop(ref)
        remove_object(self.manifest_dir, pod.spec.manifest)
        self.publish_endpoints()
        await self._release(pod)

    async def _release(self, pod: RunningPod) -> None:
        await stop_process(pod.responder)
        if self.wiring.attach == "cni":
            node = self.plan.node(pod.spec.node)
            with contextlib.suppress(ClusterError):
                await cni_call("DEL", pod, socket_path=str(self.node_dir(node.name) / "infra.sock"))
        elif pod.spec.node in self.ipams:
            self.ipams[pod.spec.node].release(AttachmentKey(pod.container_id, "eth0"))
        if pod.netns:
            from xpunet.cluster.netns import delete_netns

            await delete_netns(pod.netns)

    # --------------------------------------------------------------- objects

    def running_pods(self) -> list[Pod]:
        out = []
        for pod in self.pods.values():
            if pod.ips:
                parsed = parse.parse_pod(pod_manifest(pod.spec, pod.ips))
                out.append(parsed)
        return out

    def _current(self) -> list[Mapping[str, Any]]:
        objects = {self._key(o): o for o in self.declared.objects}
        objects.update(self.extra_objects)
        for key in self.removed:
            objects.pop(key, None)
        return list(objects.values())

    @staticmethod
    def _key(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
        meta = manifest.get("metadata") or {}
        return (str(manifest.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))

    def services(self) -> list[Service]:
        return [o for o in map(parse.parse_object, self._current()) if isinstance(o, Service)]

    def namespaces(self) -> list[Namespace]:
        return [o for o in map(parse.parse_object, self._current()) if isinstance(o, Namespace)]

    def policies(self) -> list[NetworkPolicy]:
        return [o for o in map(parse.parse_object, self._current()) if isinstance(o, NetworkPolicy)]

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Create or replace an object (a policy edit, a new Service); endpoints follow."""
        assert self.manifest_dir is not None
        parse.parse_object(manifest)  # a bad object fails here, naming the field, not in the watcher
        key = self._key(manifest)
        self.removed.discard(key)
        self.extra_objects[key] = manifest
        write_object(self.manifest_dir, manifest)
        self.publish_endpoints()

    def delete(self, manifest: Mapping[str, Any]) -> None:
        assert self.manifest_dir is not None
        key = self._key(manifest)
        self.extra_objects.pop(key, None)
        self.removed.add(key)
        remove_object(self.manifest_dir, manifest)
        self.publish_endpoints()

    def publish_endpoints(self) -> None:
        """Write the EndpointSlices the current Services and pods imply; remove stale ones."""
        assert self.manifest_dir is not None
        wanted = {
            f"{s['metadata']['namespace']}/{s['metadata']['name']}": s
            for s in endpoint_slices(self.services(), self.running_pods())
        }
        for name, old in list(self.slices.items()):
            if name not in wanted:
                remove_object(self.manifest_dir, old)
                del self.slices[name]
        for name, new in wanted.items():
            if self.slices.get(name) != new:
                write_object(self.manifest_dir, new)
                self.slices[name] = new

    # ---------------------------------------------------------- convergence

    async def wait_converged(self, stack: Stack, *, timeout: float = 30.0) -> float:  # noqa: ASYNC109
        """Seconds until intents match the reference and every datapath applied them."""
        datapaths = any(not m.entry.idle for m in stack.members if m.entry.name == "datapath")
        return await wait_converged(
            stack.nats_urls,
            pods=self.running_pods(),
            services=self.services(),
            namespaces=self.namespaces(),
            policies=self.policies(),
            nodes=[n.name for n in self.plan.nodes],
            datapaths=datapaths,
            timeout=timeout,
        )

    def pod(self, ref: str) -> RunningPod:
        try:
            return self.pods[ref]
        except KeyError:
            raise ClusterError(f"no pod {ref} in the cluster ({', '.join(sorted(self.pods))})") from None

    def service_ip(self, ref: str, family: int = 4) -> str:
        ns, _, name = ref.partition("/")
        for svc in self.services():
            if (svc.namespace, svc.name) == (ns, name):
                for ip in svc.cluster_ips:
                    if ipaddress.ip_address(ip).version == family:
                        return ip
        raise ClusterError(f"no Service {ref} with an IPv{family} ClusterIP")

    # ------------------------------------------------------------- teardown

    async def close(self) -> list[str]:
        """Stop pods (CNI DEL), softipus, and remove every namespace and the run directory."""
        if self._closed or self.rd is None:
            return []
        self._closed = True
        pods = list(self.pods.values())
        self.pods.clear()
        results = await asyncio.gather(*(self._release(p) for p in pods), return_exceptions=True)
        for pod, res in zip(pods, results, strict=True):
            if isinstance(res, BaseException):
                log.warning("releasing pod %s: %s", pod.ref, res)
        await asyncio.gather(*(stop_process(p) for p in self.softipus))
        return await teardown(self.rd.path, up_grace=0)


def pods_summary(cluster: LocalCluster) -> Sequence[str]:
    lines = []
    for pod in sorted(cluster.pods.values(), key=lambda p: p.ref):
        lines.append(f"  {pod.ref:<24}{pod.spec.node:<9}{', '.join(pod.ips):<40}{pod.netns}")
    return lines
