"""Policy compiler benchmark: cold compile to in-sync, and one-label-change latency.

Synthetic cluster (defaults: 50,000 pods in 1,000 namespaces on 500 nodes,
2,000 NetworkPolicies) mixing default-deny, pod selectors, namespace
selectors with matchExpressions, ipBlocks with except, numeric, range and
named ports (named ports resolve to different numbers on different pods).
Measured in-process on the pure compiler plus wire encoding of every changed
key (what the service hands to ``put_many``); NATS writes are not included.
Each label change is timed in wall-clock and in process CPU time: on a shared
machine the wall-clock tail includes time the process was not scheduled, the
CPU figure does not.  The load average is printed with the figures.

    .venv/bin/python bench/policy.py                # 50,000 then 5,000 pods, prints JSON
    .venv/bin/python bench/policy.py --only 5000    # one size, in a fresh process
    .venv/bin/python bench/policy.py --quick        # small, a few seconds
    .venv/bin/python bench/policy.py --nats         # also through the service and NATS (~3 min)

``--nats`` adds, per size, the service end to end against a real nats-server,
set up as its ``run(ctx)`` does (heap freezing, uvloop; ``--no-freeze`` and
``--loop asyncio`` for comparison): the cluster written to ``xpunet-k8s``,
the policy service started (cold: KV snapshot, compile, every intent written),
then 50 warm-up and 500 measured lone label changes
(``xpunet.runtime.change_probe``): each after a quiet gap of 50-75 ms (longer
than ``flush_interval``, 0.02 s, and jittered), timed from its ``xpunet-k8s``
write to the intent write stamped with its written-at arriving on a watch of
``xpunet-intent``, the same way at both sizes.  A change moves a pod into a
namespace-selector set (``app=app0`` in a ``prod`` namespace) or back out, so
it always writes one set key.  Each sample is split into phases (deliver,
queue, compile, write, observe), GC pauses, CPU, and run-queue waits of this
process and the nats-server; the slowest 1 % is reported next to the middle
half.  ``--no-pure`` skips the in-process figures (NATS part only).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from xpunet.bus.nats import NatsBus, connect
from xpunet.embedded.nats import NatsServer
from xpunet.model.objects import (
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    IPBlock,
    Labels,
    LabelSelector,
    LabelSelectorRequirement,
    Namespace,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    Pod,
)
from xpunet.policy.compiler import DEFAULT_GLOBAL_SET_NODES, PolicyCompiler
from xpunet.policy.service import PolicyOptions, PolicyService, load_existing
from xpunet.runtime.change_probe import headline, lone_changes, run_loop, summary, until_in_sync
from xpunet.runtime.compiler_service import HeapFreezer
from xpunet.wire import encode_object

NATS_WARMUP = 50  # lone changes through NATS before the measured ones
APPS = 20
TEAMS = 20
# pods -> (pods, namespaces, nodes, policies)
SIZES = {
    50000: (50000, 1000, 500, 2000),
    5000: (5000, 100, 50, 200),
    500: (500, 10, 5, 20),
}


def build_cluster(
    pods: int, namespaces: int, nodes: int, policies: int, seed: int = 1
) -> tuple[list[Namespace], list[Pod], list[NetworkPolicy]]:
    rnd = random.Random(seed)
    nss = [
        Namespace(
            f"ns{i}",
            Labels({NAMESPACE_NAME_LABEL: f"ns{i}", "team": f"t{i % TEAMS}", "env": ("prod", "dev")[i % 2]}),
        )
        for i in range(namespaces)
    ]
    out_pods = []
    for i in range(pods):
        ns = f"ns{i % namespaces}"
        app = f"app{rnd.randrange(APPS)}"
        http = (8080, 8081, 9000)[rnd.randrange(3)]  # one name, different numbers per pod
        ip4 = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        ips = (ip4, f"fd00::{i:x}") if i % 4 == 0 else (ip4,)
        out_pods.append(
            Pod(
                namespace=ns,
                name=f"pod{i}",
                uid=f"uid{i}",
                node=f"node{rnd.randrange(nodes)}",
                ips=ips,
                labels=Labels(
                    {"app": app, "tier": ("fe", "be", "db")[rnd.randrange(3)], "pod-template": str(i % 7)}
                ),
                ports=(ContainerPort(http, "TCP", "http"), ContainerPort(9100, "TCP", "metrics")),
                phase="Running",
                ready=True,
            )
        )
    out_pols = []
    for i in range(policies):
        ns = f"ns{i % namespaces}"
        app = f"app{rnd.randrange(APPS)}"
        kind = i % 5
        sel = LabelSelector(Labels({"app": app}))
        if kind == 0:
            pol = NetworkPolicy(ns, f"deny{i}", policy_types=("Ingress", "Egress"))
        elif kind == 1:
            pol = NetworkPolicy(
                ns,
                f"fe-to-app{i}",
                pod_selector=sel,
                ingress=(
                    NetworkPolicyRule(
                        ports=(NetworkPolicyPort("TCP", "http"), NetworkPolicyPort("TCP", 8443)),
                        peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"tier": "fe"}))),),
                    ),
                ),
            )
        elif kind == 2:
            team = f"t{rnd.randrange(TEAMS)}"
            pol = NetworkPolicy(
                ns,
                f"monitoring{i}",
                pod_selector=LabelSelector(),
                ingress=(
                    NetworkPolicyRule(
                        ports=(NetworkPolicyPort("TCP", "metrics"),),
                        peers=(
                            NetworkPolicyPeer(
                                namespace_selector=LabelSelector(
                                    Labels({"team": team}),
                                    (LabelSelectorRequirement("env", "In", ("prod",)),),
                                ),
                                pod_selector=LabelSelector(Labels({"app": "app0"})),
                            ),
                        ),
                    ),
                ),
            )
        elif kind == 3:
            pol = NetworkPolicy(
                ns,
                f"egress-ext{i}",
                pod_selector=sel,
                policy_types=("Egress",),
                egress=(
                    NetworkPolicyRule(
                        ports=(NetworkPolicyPort("TCP", 443), NetworkPolicyPort("TCP", 30000, 32767)),
                        peers=(
                            NetworkPolicyPeer(
                                ip_block=IPBlock("0.0.0.0/0", ("10.0.0.0/8", "192.168.0.0/16"))
                            ),
                        ),
                    ),
                    NetworkPolicyRule(
                        ports=(NetworkPolicyPort("UDP", 53),),
                        peers=(
                            NetworkPolicyPeer(
                                namespace_selector=LabelSelector(Labels({NAMESPACE_NAME_LABEL: "ns0"})),
                                pod_selector=LabelSelector(Labels({"app": "app1"})),
                            ),
                        ),
                    ),
                ),
            )
        else:
            pol = NetworkPolicy(
                ns,
                f"egress-app{i}",
                pod_selector=sel,
                policy_types=("Egress",),
                egress=(
                    NetworkPolicyRule(
                        ports=(NetworkPolicyPort("TCP", "http"),),
                        peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"tier": "be"}))),),
                    ),
                ),
            )
        out_pols.append(pol)
    return nss, out_pods, out_pols


def set_movers(
    nss: list[Namespace], pod_objs: list[Pod], pols: list[NetworkPolicy]
) -> Callable[[int], tuple[str, bytes]]:
    """Lone changes that always write: change i moves a pod into a namespace-selector set and back.

    The pods are those not yet ``app0`` in namespaces some monitoring policy's
    set covers (its team, ``env=prod``): moving one to ``app0`` joins that set,
    and its next turn leaves it again.  Returns (key, encoded pod) of change i.
    """
    teams = {
        peer.namespace_selector.match_labels["team"]
        for p in pols
        if p.name.startswith("monitoring")
        for rule in p.ingress
        for peer in rule.peers
        if peer.namespace_selector is not None
    }
    covered = {n.name for n in nss if n.labels.get("env") == "prod" and n.labels.get("team") in teams}
    movers = [p for p in pod_objs if p.namespace in covered and p.labels["app"] != "app0"]
    random.Random(3).shuffle(movers)
    current = {(p.namespace, p.name): p for p in movers}

    def change(i: int) -> tuple[str, bytes]:
        pod = movers[i % len(movers)]
        label = pod.labels["app"] if current[pod.namespace, pod.name].labels["app"] == "app0" else "app0"
        moved = current[pod.namespace, pod.name] = replace(pod, labels=Labels({**pod.labels, "app": label}))
        return f"pod.{pod.namespace}.{pod.name}", encode_object(moved)

    return change


def encode_all(changes: dict[str, object]) -> int:
    """Encode like the service does: a value shared by many node keys (an IPSet) is encoded once."""
    size = 0
    encoded: dict[int, bytes] = {}
    for value in changes.values():
        if value is not None:
            data = encoded.get(id(value))
            if data is None:
                data = encoded[id(value)] = encode_object(value)
            size += len(data)
    return size


def cold(
    pods: int, namespaces: int, nodes: int, policies: int, global_set_nodes: int = DEFAULT_GLOBAL_SET_NODES
) -> tuple[PolicyCompiler, list[Pod], dict[str, float]]:
    nss, pod_objs, pols = build_cluster(pods, namespaces, nodes, policies)
    gc.collect()
    started = time.perf_counter()
    compiler = PolicyCompiler(global_set_nodes=global_set_nodes)
    for ns in nss:
        compiler.upsert_namespace(ns)
    for pol in pols:
        compiler.upsert_policy(pol)
    for pod in pod_objs:
        compiler.upsert_pod(pod)
    changes = compiler.flush()
    compiled = time.perf_counter()
    size = encode_all(dict(changes))
    done = time.perf_counter()
    figures = {
        "cold_compile_s": round(compiled - started, 3),
        "cold_encode_s": round(done - compiled, 3),
        "cold_in_sync_s": round(done - started, 3),
        "keys": len(changes),
        "endpoint_keys": sum(1 for k in changes if ".policy.ep." in k),
        "ipset_keys": sum(1 for k in changes if ".policy.ipset." in k),
        "global_ipset_keys": sum(1 for k in changes if k.startswith("global.")),
        "bytes": size,
    }
    return compiler, pod_objs, figures


def incremental(compiler: PolicyCompiler, pod_objs: list[Pod], rounds: int) -> dict[str, float]:
    rnd = random.Random(7)
    latencies = []
    cpu = []
    keys_written = []
    for _ in range(rounds):
        i = rnd.randrange(len(pod_objs))
        pod = pod_objs[i]
        changed = replace(pod, labels=Labels({**pod.labels, "app": f"app{rnd.randrange(APPS)}"}))
        started = time.perf_counter()
        cpu_started = time.process_time()
        compiler.upsert_pod(changed)
        changes = compiler.flush()
        encode_all(dict(changes))
        cpu.append((time.process_time() - cpu_started) * 1000)
        latencies.append((time.perf_counter() - started) * 1000)
        keys_written.append(len(changes))
        pod_objs[i] = changed
    latencies.sort()
    cpu.sort()
    keys_written.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(_p99(latencies), 3),
        "max_ms": round(latencies[-1], 3),
        "cpu_p50_ms": round(statistics.median(cpu), 3),
        "cpu_p99_ms": round(_p99(cpu), 3),
        "cpu_max_ms": round(cpu[-1], 3),
        "mean_keys_written": round(statistics.mean(keys_written), 2),
        "max_keys_written": keys_written[-1],
    }


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def through_nats(
    bus: NatsBus,
    size: tuple[int, int, int, int],
    global_set_nodes: int,
    changes: int,
    *,
    gap: float,
    warmup: int,
    freeze: bool,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Cold start and lone label changes through the policy service and a real nats-server."""
    pods, namespaces, nodes, policies = size
    tag = f"bench-policy-{pods}"
    k8s, intents, status = [await bus.kv(f"{tag}-{b}") for b in ("k8s", "intent", "status")]
    try:
        nss, pod_objs, pols = build_cluster(pods, namespaces, nodes, policies)
        batch: dict[str, bytes] = {f"namespace.{n.name}": encode_object(n) for n in nss}
        batch.update({f"networkpolicy.{p.namespace}.{p.name}": encode_object(p) for p in pols})
        batch.update({f"pod.{p.namespace}.{p.name}": encode_object(p) for p in pod_objs})
        keys = list(batch)
        for i in range(0, len(keys), 5000):
            await k8s.put_many({k: batch[k] for k in keys[i : i + 5000]})
        for kind in ("pod", "namespace", "networkpolicy"):
            await k8s.put(f"sync.{kind}", b"\x80")
        del batch

        started = time.perf_counter()
        cpu_started = time.process_time()
        existing, reports = await load_existing(intents, status)
        service = PolicyService(
            PolicyCompiler(global_set_nodes=global_set_nodes),
            k8s=k8s,
            intents=intents,
            status=status,
            flush_interval=PolicyOptions().flush_interval,
            existing=existing,
            existing_reports=reports,
            heap=HeapFreezer() if freeze else None,  # as run(ctx) does
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(service.run(stopping))
        await service.synced.wait()
        cold_s = time.perf_counter() - started
        cold_cpu = time.process_time() - cpu_started
        written = len(service.compiler.intents)

        change = set_movers(nss, pod_objs, pols)
        watch = intents.watch("")
        await until_in_sync(watch)

        run = await lone_changes(
            service, watch, k8s, change, count=changes, warmup=warmup, gap=gap, server_pid=server_pid
        )
        await watch.aclose()
        stopping.set()
        await task
        return {
            "cold_to_in_sync_s": round(cold_s, 3),
            "cold_cpu_s": round(cold_cpu, 3),
            "intent_keys": written,
            "flush_interval_s": PolicyOptions().flush_interval,
            "heap_frozen": freeze,
            **summary(run),
        }
    finally:
        for b in ("k8s", "intent", "status"):
            await bus.delete_kv(f"{tag}-{b}")


async def with_nats(
    sizes: list[tuple[int, int, int, int]], global_set_nodes: int, changes: int, *, freeze: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with NatsServer(name="xpunet-bench-policy") as server:
        bus = await connect(server.url, name="bench-policy", initial_timeout=10, request_timeout=30)
        try:
            for size in sizes:
                out[f"pods_{size[0]}"] = await through_nats(
                    bus,
                    size,
                    global_set_nodes,
                    changes,
                    gap=0.05,
                    warmup=NATS_WARMUP,
                    freeze=freeze,
                    server_pid=server.pid,
                )
        finally:
            await bus.drain()
    return out


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only (5,000 and 500 pods)")
    parser.add_argument("--rounds", type=int, default=500, help="label changes per size")
    parser.add_argument("--only", type=int, choices=sorted(SIZES), help="run one size (pods) only")
    parser.add_argument(
        "--global-set-nodes",
        type=int,
        default=DEFAULT_GLOBAL_SET_NODES,
        help="nodes from which a set is published once under global. (a large value: always per node)",
    )
    parser.add_argument("--nats", action="store_true", help="also through the service and a nats-server")
    parser.add_argument("--nats-changes", type=int, default=500, help="lone label changes through NATS")
    parser.add_argument(
        "--no-freeze", action="store_true", help="--nats without the service's heap freezing (for comparison)"
    )
    parser.add_argument("--no-pure", action="store_true", help="skip the in-process compiler figures")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop (services run on uvloop)"
    )
    args = parser.parse_args(argv)
    if args.only is not None:
        sizes = [SIZES[args.only]]
    elif args.quick:
        sizes = [SIZES[5000], SIZES[500]]
    else:
        sizes = [SIZES[50000], SIZES[5000]]
    result: dict[str, object] = {
        "python": sys.version.split()[0],
        "global_set_nodes": args.global_set_nodes,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    for pods, namespaces, nodes, policies in [] if args.no_pure else sizes:
        compiler, pod_objs, figures = cold(pods, namespaces, nodes, policies, args.global_set_nodes)
        figures["peak_rss_mib"] = peak_rss_mib()  # the largest size runs first, so this is its peak
        figures.update(incremental(compiler, pod_objs, args.rounds))
        result[f"pods_{pods}"] = {
            "namespaces": namespaces,
            "nodes": nodes,
            "policies": policies,
            **figures,
        }
        del compiler, pod_objs
        gc.collect()
    if args.nats:
        result["loop"] = args.loop
        nats = run_loop(
            with_nats(sizes, args.global_set_nodes, args.nats_changes, freeze=not args.no_freeze), args.loop
        )
        result["nats"] = nats
        result["change_to_intent_ms"] = headline(nats)
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
