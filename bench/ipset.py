"""One member joining or leaving a big IP set: what it costs the policy compiler and a datapath.

A set's size grows with the cluster (a peer "every pod of every namespace"
holds every pod IP).  Per set size (default 50, 5,000 and 50,000 members): a
policy compiler with one server pod whose ingress allows from ``app=web`` and
that many web pods; then ``--changes`` lone changes, each a web pod joining
(a new pod) or leaving (deleted) the set, alternating.  Per change:

* compiler: ``flush()`` plus encoding its changed keys (what the service hands
  to ``put_many``), the keys and bytes written;
* datapath: ``NodeLowering`` of the server's node applying those keys and
  flushing (re-classifying the set), and the table entries that changed.

Prints one JSON object: per size, p50/p99 milliseconds and the keys/bytes
written per change.  Both sides should cost about the same at every size
(``docs/intents.md`` "Shards").

Usage: ``.venv/bin/python bench/ipset.py [--sizes 50,5000,50000] [--changes 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from xpunet.model.objects import (
    Labels,
    LabelSelector,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyRule,
    Pod,
)
from xpunet.pipeline.groups import NodePorts
from xpunet.pipeline.incremental import NodeLowering
from xpunet.policy.compiler import PolicyCompiler
from xpunet.wire import encode_object

POLICY = NetworkPolicy(
    "a",
    "db",
    pod_selector=LabelSelector(Labels({"app": "db"})),
    ingress=(
        NetworkPolicyRule(peers=(NetworkPolicyPeer(pod_selector=LabelSelector(Labels({"app": "web"}))),)),
    ),
)


def web(i: int) -> Pod:
    ip = f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
    return Pod("a", f"web{i}", f"uw{i}", node=f"n{1 + i % 100}", ips=(ip,), labels=Labels({"app": "web"}))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def one_size(members: int, changes: int) -> dict[str, Any]:
    compiler = PolicyCompiler()
    compiler.upsert_policy(POLICY)
    compiler.upsert_pod(Pod("a", "db", "udb", node="n0", ips=("10.0.0.2",), labels=Labels({"app": "db"})))
    for i in range(members):
        compiler.upsert_pod(web(i))
    started = time.perf_counter()
    cold = compiler.flush()
    cold_s = time.perf_counter() - started
    node = NodeLowering("n0", NodePorts({"a/db": 10}, host=1, uplinks=(2,)))
    for key, value in cold.items():
        node.set_intent(key, value)
    started = time.perf_counter()
    node.flush()
    node_cold_s = time.perf_counter() - started

    compile_ms: list[float] = []
    lower_ms: list[float] = []
    keys: list[float] = []
    sizes: list[float] = []
    entries: list[float] = []
    for step in range(changes):
        i = members + step // 2
        t0 = time.perf_counter()
        if step % 2 == 0:
            compiler.upsert_pod(web(i))  # joins
        else:
            compiler.delete_pod("a", f"web{i}")  # and leaves again
        out = compiler.flush()
        encoded = {k: encode_object(v) for k, v in out.items() if v is not None}
        t1 = time.perf_counter()
        for key, value in out.items():
            node.set_intent(key, value)
        changed = node.flush()
        t2 = time.perf_counter()
        compile_ms.append((t1 - t0) * 1000)
        lower_ms.append((t2 - t1) * 1000)
        keys.append(len(out))
        sizes.append(sum(len(v) for v in encoded.values()))
        entries.append(len(changed))
    return {
        "members": members,
        "cold_compile_s": round(cold_s, 3),
        "cold_node_lowering_s": round(node_cold_s, 3),
        "set_keys": sum(1 for k in compiler.intents if ".policy.ipset." in k),
        "compile_ms_p50_p99": [pct(compile_ms, 0.5), pct(compile_ms, 0.99)],
        "keys_written_p50_max": [pct(keys, 0.5), max(keys)],
        "bytes_written_p50_max": [pct(sizes, 0.5), max(sizes)],
        "node_lowering_ms_p50_p99": [pct(lower_ms, 0.5), pct(lower_ms, 0.99)],
        "entries_changed_p50_max": [pct(entries, 0.5), max(entries)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="50,5000,50000", help="set sizes, comma-separated")
    parser.add_argument("--changes", type=int, default=200, help="lone changes per size")
    args = parser.parse_args()
    result: dict[str, Any] = {"loadavg_start": [round(x, 2) for x in os.getloadavg()]}
    result["sizes"] = [one_size(int(n), args.changes) for n in args.sizes.split(",")]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
