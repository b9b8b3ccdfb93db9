"""When has the cluster converged?  Read from the bus, not guessed from time.

Converged means, at one moment:

* every running pod has its policy endpoint intent, and the compiled intents
  give the same verdict as the reference evaluator for every pair the matrix
  looks at (so a policy edit counts only once the compiler has caught up);
* every Service port with a ClusterIP has its lb intent;
* every datapath that publishes a status is ready and has applied at least
  the highest intent revision under its node's prefix and ``global.``.

Polled every 50 ms; the caller bounds it with a timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from xpunet.bus.api import BUCKET_INTENT, BUCKET_STATUS, StateStore
from xpunet.bus.nats import connect as bus_connect
from xpunet.ctl.trace import decode_intent
from xpunet.ir import lb as lb_ir
from xpunet.ir.keys import node_prefix
from xpunet.ir.policy import endpoint_key
from xpunet.model.objects import Namespace, NetworkPolicy, Pod, Service
from xpunet.policy.reference import Cluster, evaluate_intents, is_allowed
from xpunet.wire import WireError, decode

log = logging.getLogger(__name__)

POLL = 0.05


@dataclass(frozen=True, slots=True)
class Progress:
    """Why the cluster is not converged yet (empty: it is)."""

    waiting: tuple[str, ...]

    @property
    def done(self) -> bool:
        return not self.waiting


async def _entries(store: StateStore, prefix: str) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for key in await store.keys(prefix):
        entry = await store.get(key)
        if entry is not None and entry.value is not None:
            out[key] = (entry.revision, entry.value)
    return out


def _family(ip: str) -> lb_ir.Family:
    return "ipv4" if ipaddress.ip_address(ip).version == 4 else "ipv6"


def _same_family(ip: str, candidates: Sequence[str]) -> str | None:
    version = ipaddress.ip_address(ip).version
    return next((c for c in candidates if ipaddress.ip_address(c).version == version), None)


async def check(
    intents_kv: StateStore,
    status_kv: StateStore,
    *,
    pods: Sequence[Pod],
    services: Sequence[Service],
    namespaces: Sequence[Namespace],
    policies: Sequence[NetworkPolicy],
    nodes: Sequence[str],
    datapaths: bool,
) -> Progress:
    waiting: list[str] = []
    raw = await _entries(intents_kv, "")
    decoded: dict[str, object] = {}
    for key, (_rev, value) in raw.items():
        try:
            decoded[key] = decode_intent(key, value)
        except WireError:
            continue
    for pod in pods:
        if pod.node and pod.ips and endpoint_key(pod.node, pod.namespace, pod.name) not in decoded:
            waiting.append(f"policy endpoint of {pod.namespace}/{pod.name}")
    for svc in services:
        for sp in svc.ports:
            for ip in svc.cluster_ips:
                key = lb_ir.service_key(svc.namespace, svc.name, sp.protocol, sp.port, _family(ip))
                if key not in decoded:
                    waiting.append(f"lb intent {key}")
    if not waiting:
        cluster = Cluster(tuple(pods), tuple(namespaces), tuple(policies))
        ported = [(p, cp.port, cp.protocol) for p in pods for cp in p.ports]
        for src in pods:
            for dst, port, proto in ported:
                for sip in src.ips:
                    dip = next(
                        (ip for ip in dst.ips if ":" in ip)
                        if ":" in sip
                        else (ip for ip in dst.ips if ":" not in ip),
                        None,
                    )
                    if dip is None:
                        continue
                    want = is_allowed(cluster, src_ip=sip, dst_ip=dip, port=port, protocol=proto)
                    got = evaluate_intents(decoded, src_ip=sip, dst_ip=dip, port=port, protocol=proto)
                    if want != got:
                        waiting.append(f"policy intents for {src.name} → {dst.name}:{port}/{proto}")
                        break
    if datapaths and not waiting:
        statuses = await _entries(status_kv, "datapath.")
        for node in nodes:
            key = f"datapath.{node.replace('.', '_')}"
            if key not in statuses:
                waiting.append(f"status of datapath {node}")
                continue
            try:
                _schema, body = decode(statuses[key][1])
            except WireError:
                waiting.append(f"a readable status of datapath {node}")
                continue
            prefix = node_prefix(node)
            needed = max((rev for k, (rev, _) in raw.items() if k.startswith((prefix, "global."))), default=0)
            applied = int(body.get("applied_revision", 0))
            if not body.get("ready") or applied < needed:
                waiting.append(f"datapath {node} (applied {applied} of {needed}; {body.get('reason', '')})")
    return Progress(tuple(waiting))


async def wait_converged(
    urls: Sequence[str],
    *,
    pods: Sequence[Pod],
    services: Sequence[Service],
    namespaces: Sequence[Namespace],
    policies: Sequence[NetworkPolicy],
    nodes: Sequence[str],
    datapaths: bool,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> float:
    """Seconds until converged; ``TimeoutError`` names what was still missing."""
    started = time.monotonic()
    bus = await bus_connect(list(urls), name="xpunet-cluster-converge")
    progress = Progress(("nothing checked yet",))
    try:
        intents_kv = await bus.kv(BUCKET_INTENT)
        status_kv = await bus.kv(BUCKET_STATUS)
        deadline = started + timeout
        while time.monotonic() < deadline:
            progress = await check(
                intents_kv,
                status_kv,
                pods=pods,
                services=services,
                namespaces=namespaces,
                policies=policies,
                nodes=nodes,
                datapaths=datapaths,
            )
            if progress.done:
                return time.monotonic() - started
            await asyncio.sleep(POLL)
    finally:
        await bus.close()
    shown = "; ".join(progress.waiting[:5]) + (" ..." if len(progress.waiting) > 5 else "")
    raise TimeoutError(f"not converged within {timeout:.0f}s: waiting for {shown}")
