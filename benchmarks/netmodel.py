"""Issue 11's target: the simulated clock vs the α–β prediction for one iteration's communication.

    python benchmarks/netmodel.py                       # n=10, DecPG k=4 and PS, profiles ethernet and wan
    python benchmarks/netmodel.py --nproc 4 --nets wan --iterations 3

Each case trains a short real job with --net (the last iteration, which also evaluates, is left out) and prints
rank 0's simulated wire + waiting per iteration (median) beside decnode.tools.netmodel's prediction; target: a ratio
within 15% of 1. Saves JSON (default benchmarks/results/netmodel.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from decnode.tools.netmodel import compare, format_compare, job_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=10)
    parser.add_argument("--nets", nargs="*", default=["ethernet", "wan"])
    parser.add_argument("--cases", nargs="*", default=["decpg:4", "ps:0"], help="ALGO:K")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "netmodel.json"))
    args = parser.parse_args()
    results = []
    for case in args.cases:
        algo, k = case.split(":")
        cfg = job_config(args.nproc, algo, int(k), None, None, [])
        for net in args.nets:
            r = compare(cfg, net, args.nproc, args.iterations, ["--algo", algo, "--k", k])
            print(format_compare(r), flush=True)
            results.append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    inside = sum(abs(r["ratio"] - 1) <= 0.15 for r in results)
    print(f"{inside} of {len(results)} cases within 15%; wrote {args.out}")


if __name__ == "__main__":
    main()
