"""Env steps per second: BatchedSpread (numpy) vs Mpe2Spread (B real mpe2 envs).

An "env step" is one step of one environment, so one batched step of B envs counts B.
Each backend is timed over whole batched steps with pre-drawn random actions (auto-resets
included), taking the best of `--repeats` timed windows to damp noise from a shared machine.

    python benchmarks/env.py [--n-envs 32] [--agents 3 10] [--seconds 2] [--out benchmarks/results/env.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from decnode.envs.mpe2_ref import Mpe2Spread  # noqa: E402
from decnode.envs.spread import BatchedSpread  # noqa: E402


def env_steps_per_sec(env, seconds: float, repeats: int) -> float:
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, env.n_actions, (64, env.n_envs, env.n_agents))
    env.step(actions[0])  # warm-up
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / repeats or n == 0:
            env.step(actions[n % len(actions)])
            n += 1
        best = max(best, n * env.n_envs / elapsed)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-envs", type=int, default=32)
    p.add_argument("--agents", type=int, nargs="+", default=[3, 10])
    p.add_argument("--seconds", type=float, default=2.0, help="timing budget per backend and N")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "env.json"))
    args = p.parse_args()

    rows = []
    for n in args.agents:
        fast = env_steps_per_sec(BatchedSpread(args.n_envs, n), args.seconds, args.repeats)
        slow = env_steps_per_sec(Mpe2Spread(args.n_envs, n), args.seconds, args.repeats)
        rows.append({"n_envs": args.n_envs, "n_agents": n, "batched_spread_steps_per_s": fast,
                     "mpe2_steps_per_s": slow, "speedup": fast / slow})

    print(f"env steps/s (B={args.n_envs}; one env step = one step of one environment)")
    print(f"{'N':>4} {'BatchedSpread':>15} {'mpe2':>10} {'speedup':>9}")
    for r in rows:
        print(f"{r['n_agents']:>4} {r['batched_spread_steps_per_s']:>15,.0f} {r['mpe2_steps_per_s']:>10,.0f} "
              f"{r['speedup']:>8.1f}x")

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "seconds_per_backend": args.seconds, "repeats": args.repeats}
    with open(args.out, "w") as f:
        json.dump({"results": rows, "meta": meta}, f, indent=2)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
