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
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import replace

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
from xpunet.wire import encode_object

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
    for pods, namespaces, nodes, policies in sizes:
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
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
