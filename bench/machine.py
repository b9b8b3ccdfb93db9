"""How much this machine charges for waking up: fixed CPU work timed after idle gaps of different lengths.

The change→intent benchmarks (``bench/policy.py --nats``, ``bench/lb.py``)
time isolated changes: each comes after a quiet gap, as a change in a cluster
does.  On a VM whose vCPUs are halted while idle (and whose host may lower
their clock), the same code then costs more CPU time the longer the gap was,
which inflates those figures independently of xpunet.  This script measures
that penalty with a fixed, allocation-heavy piece of pure Python, so the
benchmarks' figures can be read against the machine they ran on.

Prints a JSON object: per gap, the work's CPU time p50/p90 in milliseconds, and
the ratio of each p50 to the back-to-back one.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def fixed_work(n: int) -> int:
    """A dict of ``n`` small strings: allocation, hashing and dict growth, as decode/compile steps do."""
    d = {}
    for i in range(n):
        d[i] = str(i)
    return len(d)


def measure(gap: float, runs: int, size: int) -> list[float]:
    samples = []
    for _ in range(runs):
        if gap:
            time.sleep(gap)
        t = time.process_time()
        fixed_work(size)
        samples.append((time.process_time() - t) * 1000)
    samples.sort()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--gaps", default="0,0.005,0.025,0.05,0.2", help="idle gaps in seconds, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=100, help="samples per gap")
    parser.add_argument("--size", type=int, default=20_000, help="dict entries built per sample")
    parser.add_argument("--quick", action="store_true", help="20 samples per gap")
    args = parser.parse_args()
    runs = 20 if args.quick else args.runs
    fixed_work(args.size)  # warm-up
    result: dict[str, object] = {"loadavg_start": os.getloadavg(), "size": args.size, "runs": runs}
    base = 0.0
    gaps = {}
    for gap in (float(g) for g in args.gaps.split(",")):
        s = measure(gap, runs, args.size)
        p50, p90 = s[len(s) // 2], s[int(len(s) * 0.9)]
        base = base or p50
        gaps[f"{gap:g}s"] = {
            "cpu_ms_p50": round(p50, 3),
            "cpu_ms_p90": round(p90, 3),
            "vs_back_to_back": round(p50 / base, 2),
        }
    result["gaps"] = gaps
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
