"""Benchmark the SMAX backend (decnode.envs.smax.SmaxEnv) on the four DecPG SMAC maps.

For each map, in a fresh subprocess (so that peak RSS is per map): jit compile time of reset and step, env
steps/s with uniformly random available actions (env steps = B x step calls; includes sampling the actions in
numpy and the device->host copy of every Step), obs/state/action sizes, and the process's peak RSS
(resource.getrusage ru_maxrss). Prints a table and writes JSON.

    .venv/bin/python benchmarks/smax.py [--n-envs 8] [--seconds 5] [--maps 5m_vs_6m ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MAPS = ("5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "6h_vs_8z")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def bench_one(map_name: str, n_envs: int, seconds: float, seed: int, reward: str) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    import jax  # noqa: F401  (import time reported separately from compile time)

    from decnode.envs.smax import SmaxEnv

    t_import = time.perf_counter() - t0
    env = SmaxEnv(map_name, n_envs, reward=reward)
    rng = np.random.default_rng(seed)

    def act(step):
        return np.argmax(rng.random(step.avail.shape) * step.avail, axis=-1)

    t0 = time.perf_counter()
    step = env.reset(seed)
    t_reset = time.perf_counter() - t0
    t0 = time.perf_counter()
    step = env.step(act(step))
    t_step = time.perf_counter() - t0
    for _ in range(5):  # warm-up
        step = env.step(act(step))

    calls, episodes, wins, returns = 0, 0, 0, 0.0
    t0 = time.perf_counter()
    while True:
        step = env.step(act(step))
        calls += 1
        done = step.done
        if done.any():
            episodes += int(done.sum())
            wins += int(step.info["won"][done].sum())
            returns += float(step.info["episode_return"][done].sum())
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
    return {
        "map": map_name,
        "n_envs": n_envs,
        "n_agents": env.n_agents,
        "n_enemies": env.n_enemies,
        "obs_dim": env.obs_dim,
        "state_dim": env.state_dim,
        "n_actions": env.n_actions,
        "episode_limit": env.episode_limit,
        "import_s": round(t_import, 3),
        "compile_reset_s": round(t_reset, 3),
        "compile_step_s": round(t_step, 3),
        "compile_s": round(t_reset + t_step, 3),
        "step_calls": calls,
        "measure_s": round(elapsed, 3),
        "ms_per_call": round(1000 * elapsed / calls, 4),
        "env_steps_per_s": round(calls * n_envs / elapsed, 1),
        "random_episodes": episodes,
        "random_mean_return": round(returns / episodes, 4) if episodes else None,
        "random_win_rate": round(wins / episodes, 4) if episodes else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_in_subprocess(map_name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--single", map_name, "--n-envs", str(args.n_envs),
           "--seconds", str(args.seconds), "--seed", str(args.seed), "--reward", args.reward]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark of {map_name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    cols = [("map", "map", 11), ("B", "n_envs", 3), ("N", "n_agents", 3), ("E", "n_enemies", 3),
            ("obs_dim", "obs_dim", 7), ("state_dim", "state_dim", 9), ("n_act", "n_actions", 5),
            ("limit", "episode_limit", 5), ("compile_s", "compile_s", 9), ("ms/call", "ms_per_call", 8),
            ("steps/s", "env_steps_per_s", 8), ("rand_ret", "random_mean_return", 8),
            ("peak_RSS_MB", "peak_rss_mb", 11)]
    print("  ".join(f"{h:>{w}}" for h, _, w in cols))
    for r in rows:
        print("  ".join(f"{str(r[k]):>{w}}" for _, k, w in cols))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", nargs="+", default=list(MAPS), choices=MAPS)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="measurement time per map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reward", default="smac", choices=("smac", "native"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "smax.json"))
    p.add_argument("--in-process", action="store_true", help="no subprocess per map (peak RSS then cumulative)")
    p.add_argument("--single", default=None, help=argparse.SUPPRESS)  # internal: one map, JSON to stdout
    args = p.parse_args()

    if args.single:
        print(json.dumps(bench_one(args.single, args.n_envs, args.seconds, args.seed, args.reward)))
        return

    rows = []
    for m in args.maps:
        row = bench_one(m, args.n_envs, args.seconds, args.seed, args.reward) if args.in_process \
            else run_in_subprocess(m, args)
        rows.append(row)
        print(f"done {m}: {row['env_steps_per_s']} env steps/s", file=sys.stderr, flush=True)
    print_table(rows)

    import importlib.metadata

    import jax

    result = {
        "benchmark": "smax",
        "n_envs": args.n_envs,
        "seconds": args.seconds,
        "reward": args.reward,
        "per_map_subprocess": not args.in_process,
        "versions": {"python": platform.python_version(), "jax": jax.__version__,
                     "jaxmarl": importlib.metadata.version("jaxmarl")},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "results": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
