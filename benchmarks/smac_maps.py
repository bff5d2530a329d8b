"""Seconds per iteration and peak memory of a real training job on each SMAC map (SMAX backend).

    python benchmarks/smac_maps.py                      # every map, 4 iterations, the process counts below
    python benchmarks/smac_maps.py --maps 27m_vs_30m --nproc 9 --iterations 3

The first iteration (JAX compilation) is excluded from seconds per iteration. Memory is each process's peak
RSS; their sum bounds the job's peak from above. Saves JSON (default benchmarks/results/smac_maps.json).
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
# One process per agent where that fits comfortably on 2 cores; 27m_vs_30m: 3 agents per process (9 processes).
DEFAULT_NPROC = {"5m_vs_6m": 5, "10m_vs_11m": 10, "6h_vs_8z": 6, "27m_vs_30m": 9}


def run_map(name: str, nproc: int, iterations: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(nproc), "--config", f"configs/smac_{name}.yaml",
               "--iterations", str(iterations), "--out", str(out), "--set", "eval.interval=0",
               "--set", "eval.test_episodes=32", "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        lines = records(out)
        timing = json.loads((out / "timing.json").read_text())
    per_iter = [sum(d["timing"].values()) for d in lines[1:]]
    seconds = statistics.median(per_iter)
    memory = timing["peak_rss_mb"]
    steps = lines[-1]["env_steps"] / len(lines)
    return {"processes": nproc, "agents_per_process": timing["n_agents"] // nproc, "seconds_per_iteration": seconds,
            "env_steps_per_iteration": steps, "env_steps_per_s": steps / seconds, "peak_rss_mb": memory,
            "rank0_rss_mb": memory[0], "max_other_rss_mb": max(memory[1:], default=0.0), "sum_rss_mb": sum(memory)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", nargs="*", default=list(DEFAULT_NPROC))
    parser.add_argument("--nproc", type=int, default=None, help="processes (default: per map, see DEFAULT_NPROC)")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "smac_maps.json"))
    args = parser.parse_args()
    results = {}
    print(f"{'map':<12}{'procs':>6}{'agents/proc':>12}{'s/it':>8}{'steps/s':>9}{'rank0 MB':>10}{'other MB':>10}"
          f"{'sum MB':>9}")
    for name in args.maps:
        r = results[name] = run_map(name, args.nproc or DEFAULT_NPROC[name], args.iterations)
        print(f"{name:<12}{r['processes']:>6}{r['agents_per_process']:>12}{r['seconds_per_iteration']:>8.2f}"
              f"{r['env_steps_per_s']:>9.0f}{r['rank0_rss_mb']:>10.0f}{r['max_other_rss_mb']:>10.0f}"
              f"{r['sum_rss_mb']:>9.0f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
