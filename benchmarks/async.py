"""Gossip that does not wait for the slowest node (issue 27): n=10 under `ethernet`, one node 4× slower, simulated
seconds per iteration of synchronous DecPG, push-sum τ=0 and push-sum τ=2, and the training reward they reach.

    python benchmarks/async.py                        # 3 seeds × 3 algorithms, 30 iterations each
    python benchmarks/async.py --iterations 10 --seeds 1 --out results/async_n10.json

Every cell is a real `decnode.run` job with `--net` (the slow node is rank SLOW, not rank 0, which steps the
environments) and net.compute=model: compute is charged fixed seconds per section and agent row (net/compute.py
COMPUTE_S) × the node's slowdown, so the simulated figures are the same on any host and under any load.
Seconds per iteration: mean over every iteration of rank 0's metrics.jsonl `sim` (the ranks join their clocks in
each iteration's statistics all-reduce, so it is the job's); compute / waiting: the slow node's and a fast one's,
from timing.json's simulated clocks. Reward: the training return averaged over the last 5 iterations.
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
from decnode.job.metricsfile import records  # noqa: E402

N, SLOW = 10, 5
CELLS = {"DecPG (sync)": ["--algo", "decpg"], "push-sum τ=0": ["--algo", "push_sum"],
         "push-sum τ=2": ["--algo", "push_sum", "--set", "algo.staleness=2"]}


def profile_file(directory: Path, preset: str = "ethernet", slowdown: float = 4) -> Path:
    path = directory / f"{preset}-slow.yaml"
    speed = [slowdown if r == SLOW else 1 for r in range(N)]
    path.write_text(f"preset: {preset}\nname: {preset}-slow{SLOW}x{slowdown:g}\nspeed: {speed}\ncompute: model\n")
    return path


def run_cell(flags: list[str], seed: int, iterations: int, profile: Path, k: int, lr: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(N), "--k", str(k), *flags, "--net", str(profile),
               "--seed", str(seed), "--iterations", str(iterations), "--out", str(out), "--no-preflight",
               "--set", f"train.lr={lr}", "--set", f"train.min_lr={lr}", "--set", "train.entropy_coef=0.01",
               "--set", "eval.interval=0", "--set", "eval.episodes=4", "--set", "eval.test_episodes=4",
               "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0",
               "--set", "run.trace_iterations=0"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        lines = records(out)
        timing = json.loads((out / "timing.json").read_text())
    sims = [line["sim"]["seconds"] for line in lines]
    clocks = timing.get("simulated", {}).get("ranks") or []
    return {"seconds": statistics.mean(sims), "reward": statistics.mean(line["train_reward"] for line in lines[-5:]),
            "staleness_max": max((line.get("staleness_max") or 0) for line in lines),
            "staleness_mean": statistics.mean((line.get("staleness_mean") or 0) for line in lines),
            "clocks": clocks}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--k", type=int, default=2, help="the kNN ring's k (every cell's graph)")
    p.add_argument("--lr", type=float, default=0.5, help="constant SGD step size (the learning test's)")
    p.add_argument("--wan-iterations", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "async_n10.json")
    args = p.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        profile = profile_file(Path(tmp))
        for name, flags in CELLS.items():
            for seed in range(1, args.seeds + 1):
                results.setdefault(name, []).append(run_cell(flags, seed, args.iterations, profile, args.k, args.lr))
                cell = results[name][-1]
                print(f"{name:<14} seed {seed}: {cell['seconds']:.4f} s/iteration, reward {cell['reward']:.2f}",
                      flush=True)
    sync = statistics.mean(c["seconds"] for c in results["DecPG (sync)"])
    lines = [f"n={N}, ethernet, rank {SLOW} 4× slower, net.compute=model, kNN k={args.k}, {args.iterations} iterations, "
             f"lr {args.lr}, {args.seeds} seeds",
             f"{'':<16}{'s/iteration':>12}{'× sync':>8}{'slow: compute':>15}{'fast: waiting':>15}"
             f"{'reward (last 5)':>26}{'staleness mean/max':>20}"]
    for name, cells in results.items():
        secs = statistics.mean(c["seconds"] for c in cells)
        rewards = [c["reward"] for c in cells]
        spread = f"{statistics.mean(rewards):.2f} [{min(rewards):.2f}, {max(rewards):.2f}]"
        stale = f"{statistics.mean(c['staleness_mean'] for c in cells):.2f}/{max(c['staleness_max'] for c in cells)}"
        per_it = [(c["clocks"][SLOW]["compute"] / args.iterations, c["clocks"][SLOW - 1]["waiting"] / args.iterations)
                  for c in cells]
        slow, fast = (statistics.mean(x[i] for x in per_it) for i in (0, 1))
        lines.append(f"{name:<16}{secs:>11.4f}s{secs / sync:>8.2f}{slow:>14.4f}s{fast:>14.4f}s{spread:>26}{stale:>20}")
    print("\n".join(lines))
    # Where asynchrony does remove waiting: the gossip's latency on a slow network with no slow node (seconds per
    # iteration are deterministic here, so a few iterations and one seed measure them).
    wan = {}
    with tempfile.TemporaryDirectory() as tmp:
        profile = profile_file(Path(tmp), "wan", 1)
        for name in ("DecPG (sync)", "push-sum τ=2"):
            wan[name] = run_cell(CELLS[name], 1, args.wan_iterations, profile, args.k, args.lr)
    lines.append(f"wan (α 20 ms), no slow node, {args.wan_iterations} iterations: " + ", ".join(
        f"{name} {c['seconds']:.4f} s/iteration" for name, c in wan.items())
        + f" ({wan['push-sum τ=2']['seconds'] / wan['DecPG (sync)']['seconds']:.2f}× sync)")
    print(lines[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"table": lines, "cells": results, "wan": wan, "n": N, "slow_rank": SLOW,
                                    "k": args.k, "iterations": args.iterations, "lr": args.lr,
                                    "cpu": "AMD EPYC, 2 cores (simulated figures: host-independent)"}, indent=1))


if __name__ == "__main__":
    main()
