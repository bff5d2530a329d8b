"""Seconds per training iteration on this machine: n processes vs one process holding all n agents.

    python benchmarks/iteration.py                       # Simple Spread N=10, k=4, decpg and ps, 12 iterations
    python benchmarks/iteration.py --n 10 --iterations 20 --algos decpg

Each configuration is a real `decnode.run` job. Seconds per iteration are taken from metrics.jsonl (rank 0's
sections per iteration, skipping the first iterations as warm-up); the breakdown is rank 0's and the
communication share is averaged over ranks from timing.json. Saves JSON (default benchmarks/results/iteration.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decnode.timing import grouped  # noqa: E402

COMM = ("step_exchange", "gossip/allreduce", "waiting")


def run_job(n: int, nproc: int, algo: str, iterations: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(nproc), "--agents-per-process", str(n // nproc),
               "--algo", algo, "--k", "4", "--iterations", str(iterations), "--out", str(out),
               "--set", "eval.interval=0", "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][warmup:-1]
        timing = json.loads((out / "timing.json").read_text())
    per_iter = [sum(d["timing"].values()) for d in lines]
    breakdown: dict[str, float] = {}
    for d in lines:
        for k, v in grouped({**{s: {"seconds": x} for s, x in d["timing"].items()}, "wall": {"seconds": 0}}).items():
            if k != "wall":
                breakdown[k] = breakdown.get(k, 0.0) + v / len(lines)
    shares = []
    for snap in timing["ranks"]:
        g = grouped(snap)
        shares.append(sum(g.get(c, 0.0) for c in COMM) / g["wall"])
    seconds = statistics.median(per_iter)
    return {"seconds_per_iteration": seconds, "env_steps_per_s": 800 / seconds, "breakdown": breakdown,
            "comm_share_of_wall": statistics.mean(shares)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--algos", nargs="*", default=["decpg", "ps"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "iteration.json"))
    args = parser.parse_args()
    results = {}
    for algo in args.algos:
        for nproc in (args.n, 1):
            results[f"{algo}/{nproc}proc"] = r = run_job(args.n, nproc, algo, args.iterations, args.warmup)
            print(f"{algo:6} {nproc:>2} proc: {r['seconds_per_iteration']:.3f} s/it  "
                  f"{r['env_steps_per_s']:.0f} env steps/s  comm {100 * r['comm_share_of_wall']:.0f}% of wall", flush=True)
    print(f"\nSimple Spread N={args.n}, k=4, batch 800 env steps per iteration (rank 0's breakdown, s/it)")
    cats = sorted({c for r in results.values() for c in r["breakdown"]})
    print(f"{'':16}{'s/it':>7}{'ratio':>7}{'comm%':>7}" + "".join(f"{c[:12]:>13}" for c in cats))
    for algo in args.algos:
        single = results[f"{algo}/1proc"]["seconds_per_iteration"]
        for nproc in (args.n, 1):
            r = results[f"{algo}/{nproc}proc"]
            ratio = r["seconds_per_iteration"] / single
            print(f"{algo + ' ' + str(nproc) + ' proc':16}{r['seconds_per_iteration']:>7.3f}{ratio:>7.2f}"
                  f"{100 * r['comm_share_of_wall']:>6.0f}%" + "".join(f"{r['breakdown'].get(c, 0):>13.3f}" for c in cats))
    print("target: distributed within 1.5x of single-process, communication <= 25% of wall-clock")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
