"""Seconds per training iteration here, every figure as a ratio to a jitted JAX MAPPO measured in the same run.

    python benchmarks/iteration.py                        # Simple Spread N=10, k=4: decpg and ps, 3 placements
    python benchmarks/iteration.py --algos decpg --placements 1 N --no-overhead

1. The peer (benchmarks/peer_jax.py, in its own process, both cores, per-agent and shared weights) is measured
   before and after decnode's jobs; the reference is the faster of its two modes, averaged over the two
   measurements (both are printed, so drift of the machine shows).
2. decnode, per algorithm, in each placement: 1 process holding all N agents (its actors' backward in one row-block
   thread per core, one intra-op thread each),
   blocks (2 processes of N/2) and N processes (one thread each): a real `decnode.run` job with evaluation,
   TensorBoard and checkpoints off (benchmarks/jobs.py reads the figures back). Rank 0's breakdown per iteration
   and the communication share (over ranks) are printed.
3. The default run's overhead: the same job as `make run` (N processes, evaluation every 25 iterations, TensorBoard,
   a checkpoint every 50) against the bare job, both over --overhead-iterations (mean per iteration, so the rare
   evaluations and checkpoints count), plus the per-iteration metrics all-reduce that both pay.
Saves JSON (default benchmarks/results/iteration.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jobs  # benchmarks/jobs.py

ROOT = jobs.ROOT
PLACEMENTS = {"1": lambda n: 1, "block": lambda n: 2, "N": lambda n: n}


def peer(n: int, iterations: int) -> dict:
    """The JAX peer's seconds per iteration in both weight modes (a subprocess: JAX and torch never share one)."""
    out = {}
    for weights in ("per-agent", "shared"):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "peer_jax.py"), "--n", str(n), "--iterations",
               str(iterations), "--weights", weights, "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        out[weights] = json.loads(res.stdout.strip().splitlines()[-1])["seconds_per_iteration"]
    return out


def job_args(n: int, nproc: int, algo: str, iterations: int) -> list[str]:
    return ["--nproc", str(nproc), "--agents-per-process", str(n // nproc), "--algo", algo, "--k", str(min(4, n - 1)),
            "--iterations", str(iterations), *jobs.SHORT_FINAL_EVAL]


def checked(result: dict, what: str) -> dict:
    if "error" in result:
        raise SystemExit(f"{what} failed: {result['error']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--algos", nargs="*", default=["decpg", "ps"])
    parser.add_argument("--placements", nargs="+", default=["1", "block", "N"], choices=list(PLACEMENTS))
    parser.add_argument("--no-peer", action="store_true", help="skip the JAX peer (ratios are then to 1 process)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the default-run overhead measurement")
    parser.add_argument("--overhead-iterations", type=int, default=52, help="two evaluations and a checkpoint")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "iteration.json"))
    args = parser.parse_args()
    n = args.n
    results: dict = {"n": n, "jobs": {}}
    if not args.no_peer:
        results["peer_before"] = peer(n, args.iterations)
        print(f"JAX peer before: {results['peer_before']}", flush=True)
    for algo in args.algos:
        for kind in args.placements:
            nproc = PLACEMENTS[kind](n)
            if n % nproc:
                continue
            r = checked(jobs.run(job_args(n, nproc, algo, args.iterations) + jobs.BARE, args.warmup),
                        f"{algo} in {nproc} processes")
            results["jobs"][f"{algo}/{nproc}x{n // nproc}"] = r
            print(f"{algo:6} {nproc:>2} × {n // nproc:<2}: {r['seconds_per_iteration']:.3f} s/it  row threads "
                  f"{r['row_threads'][0]} × intra-op {r['threads'][0]}  comm {100 * r['comm_share']:.0f}%", flush=True)
    if not args.no_overhead:
        for mode, extra in (("bare", jobs.BARE), ("default", [])):
            results[f"overhead/{mode}"] = r = checked(
                jobs.run(job_args(n, n, "decpg", args.overhead_iterations) + extra, args.warmup), f"{mode} run")
            print(f"make run, {mode:7}: {r['mean_seconds_per_iteration']:.3f} s/it (mean)", flush=True)
    if not args.no_peer:
        results["peer_after"] = peer(n, args.iterations)
        print(f"JAX peer after: {results['peer_after']}", flush=True)
        ref = min((results["peer_before"][w] + results["peer_after"][w]) / 2 for w in ("per-agent", "shared"))
    results["reference_seconds"] = ref = ref if not args.no_peer else None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(report(results, args))
    print(f"saved {args.out}")


def report(results: dict, args) -> str:
    n, ref = results["n"], results["reference_seconds"]
    jobs_ = results["jobs"]
    lines = [f"\nSimple Spread N={n}, k={min(4, n - 1)}, B=32 × T=25, 10 PPO epochs, hidden 64, central critic; s/it = median of "
             f"{args.iterations - args.warmup - 1} iterations"]
    if ref is not None:
        pb, pa = results["peer_before"], results["peer_after"]
        lines.append(f"JAX peer (jitted rollout + GAE + 10 epochs, both cores): per-agent weights {pb['per-agent']:.3f}"
                     f" / {pa['per-agent']:.3f}, shared {pb['shared']:.3f} / {pa['shared']:.3f} s/it (before / after);"
                     f" reference = {ref:.3f}")
    cats = sorted({c for r in jobs_.values() for c in r["breakdown"]})
    lines.append(f"{'':14}{'s/it':>7}{'÷ peer':>8}{'÷ 1 proc':>9}{'comm%':>7}" + "".join(f"{c[:11]:>12}" for c in cats))
    for key, r in jobs_.items():
        algo = key.split("/")[0]
        single = jobs_.get(f"{algo}/1x{n}")
        s = r["seconds_per_iteration"]
        lines.append(f"{key.replace('/', ' '):14}{s:>7.3f}{(s / ref if ref else float('nan')):>8.2f}"
                     f"{(s / single['seconds_per_iteration'] if single else float('nan')):>9.2f}"
                     f"{100 * r['comm_share']:>6.0f}%" + "".join(f"{r['breakdown'].get(c, 0):>12.3f}" for c in cats))
    if "overhead/bare" in results:
        bare, full = results["overhead/bare"], results["overhead/default"]
        stats = full["sections"].get("stats", 0.0)
        extra = full["mean_seconds_per_iteration"] / bare["mean_seconds_per_iteration"]
        lines.append(f"make run ({n} processes, eval every 25, TensorBoard, checkpoint every 50), mean over "
                     f"{full['iterations_measured']} iterations: {full['mean_seconds_per_iteration']:.3f} s/it = "
                     f"{extra:.3f}× the bare job; the metrics all-reduce both pay: {stats:.3f} s/it "
                     f"({100 * stats / bare['mean_seconds_per_iteration']:.1f}% of the bare job)")
    lines.append("targets: 1 process ≤ 1.0× the peer (stretch 0.7×); N processes ≤ 1.2× 1 process; make run ≤ 1.1× bare")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
