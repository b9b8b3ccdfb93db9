"""Wire codec benchmark: objects/s through to_wire, from_wire and the msgpack envelope, plus parsing.

Pods are the hot path (the watcher mirrors every pod of the cluster); a
mid-sized NetworkPolicy shows the cost of deep nesting; Services and
EndpointSlices (10 endpoints each) are what the lb service reads at cold start.  Prints one JSON
object; ``--quick`` runs small sizes for a smoke check.

    .venv/bin/python bench/wire.py              # 150k pods, 10k policies, 10k services and slices
    .venv/bin/python bench/wire.py --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from xpunet.model import (
    ContainerPort,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    Labels,
    NetworkPolicy,
    Pod,
    Service,
    ServicePort,
    parse_object,
    parse_pod,
)
from xpunet.model.samples import sample
from xpunet.wire import decode_object, encode_object, from_wire, to_wire
from xpunet.wire.convert import from_wire_reference, to_wire_reference


def make_pods(n: int) -> list[Pod]:
    return [
        Pod(
            namespace=f"ns-{i % 100}",
            name=f"web-{i}",
            uid=f"9b1c6a52-0000-4000-8000-{i:012d}",
            node=f"node-{i % 500}",
            ips=(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",),
            labels=Labels({"app": f"app-{i % 1000}", "tier": "web", "pod-template-hash": "5d8f7c9b4"}),
            ports=(ContainerPort(8080, "TCP", "http"), ContainerPort(9090, "TCP", "metrics")),
            phase="Running",
            ready=True,
        )
        for i in range(n)
    ]


def make_services(n: int) -> list[Service]:
    return [
        Service(
            namespace=f"ns-{i % 100}",
            name=f"svc-{i}",
            uid=f"5c1d-{i}",
            cluster_ips=(f"10.96.{(i >> 8) & 255}.{i & 255}",),
            ports=(ServicePort(80, "TCP", "http", "http"), ServicePort(443, "TCP", "https", 8443)),
            selector=Labels({"app": f"app-{i}"}),
        )
        for i in range(n)
    ]


def make_slices(n: int, endpoints: int = 10) -> list[EndpointSlice]:
    return [
        EndpointSlice(
            namespace=f"ns-{i % 100}",
            name=f"svc-{i}-abcde",
            service=f"svc-{i}",
            address_type="IPv4",
            endpoints=tuple(
                Endpoint(
                    addresses=(f"10.{(i >> 8) & 255}.{i & 255}.{j}",),
                    node_name=f"node-{j}",
                    zone="zone-a",
                    target_ref=f"ns-{i % 100}/web-{i}-{j}",
                )
                for j in range(endpoints)
            ),
            ports=(EndpointPort(8080, "TCP", "http"),),
        )
        for i in range(n)
    ]


def make_policies(n: int) -> list[NetworkPolicy]:
    out = []
    for i in range(n):
        raw = sample("networkpolicy")
        raw["metadata"]["name"] = f"policy-{i}"
        policy = parse_object(raw)
        assert isinstance(policy, NetworkPolicy)
        out.append(policy)
    return out


def rate(fn: Callable[[Any], Any], items: Sequence[Any], passes: int = 3) -> float:
    """Objects per second of ``fn`` over ``items``: the best of ``passes`` passes after a short warm-up.

    The best pass, because on a shared VM the other passes measure the neighbours.
    """
    for item in items[:100]:
        fn(item)
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, time.perf_counter() - start)
    return round(len(items) / best)


def measure(objs: Sequence[Any]) -> dict[str, Any]:
    cls = type(objs[0])
    wires = [to_wire(o) for o in objs]
    blobs = [encode_object(o) for o in objs]
    return {
        "count": len(objs),
        "bytes_per_object": round(sum(map(len, blobs)) / len(blobs)),
        "to_wire_per_s": rate(to_wire, objs),
        "from_wire_per_s": rate(lambda w: from_wire(cls, w), wires),
        # The plan interpreter alone: what to_wire/from_wire were before per-class generated code.
        "to_wire_interpreted_per_s": rate(to_wire_reference, objs),
        "from_wire_interpreted_per_s": rate(lambda w: from_wire_reference(cls, w), wires),
        "encode_per_s": rate(encode_object, objs),
        "decode_per_s": rate(decode_object, blobs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke check)")
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=10_000, help="services, and as many slices")
    args = parser.parse_args(argv)
    n_pods, n_policies, n_services = (
        (5_000, 500, 500) if args.quick else (args.pods, args.policies, args.services)
    )

    pods = make_pods(n_pods)
    pod_json = []
    for pod in pods[: min(n_pods, 20_000)]:
        raw = sample("pod")
        raw["metadata"]["name"] = pod.name
        raw["status"]["podIPs"] = [{"ip": pod.ips[0]}]
        pod_json.append(copy.deepcopy(raw))
    result = {
        "benchmark": "wire",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "pod": measure(pods),
        "network_policy": measure(make_policies(n_policies)),
        "service": measure(make_services(n_services)),
        "endpoint_slice_10": measure(make_slices(n_services)),
        "parse_pod_json_per_s": rate(parse_pod, pod_json),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
