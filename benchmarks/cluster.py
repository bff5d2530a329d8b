"""What an iteration takes on a simulated cluster: PS vs DecPG k, per network profile (README "Simulating real nodes").

    python benchmarks/cluster.py                                  # n=10: PS, DecPG k=2, k=4 on ethernet and wan
    python benchmarks/cluster.py --n 10 --profiles datacenter edge --ks 2 4 8 --iterations 5
    python benchmarks/cluster.py --n 16 --ks --topologies ring torus exp exp1peer random_regular complete

Each cell is a real `decnode.run` job with `--net PROFILE` on this machine. The figures are the simulated
clock's (net/profile.py): compute is each rank's own CPU time, so they do not depend on how many processes share
the host's cores.
Seconds per iteration: median over iterations after the first (warm-up), from rank 0's metrics.jsonl `sim`;
compute / wire / waiting and the communication share: averaged over ranks and iterations from timing.json.
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


def run_cell(n: int, algo: str, graph: list[str], profile: str, iterations: int) -> dict:
    """graph: decnode-run's flags for the graph (--k K or --topology NAME)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(n), "--algo", algo, *graph, "--net", profile,
               "--iterations", str(iterations), "--out", str(out), "--set", "eval.interval=0",
               "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0", "--set", "run.trace_iterations=0",
               "--set", "eval.test_episodes=10"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        lines = records(out)
        ranks = json.loads((out / "timing.json").read_text())["simulated"]["ranks"]
    per_it = lambda key: statistics.mean(r[key] for r in ranks) / iterations  # noqa: E731
    seconds = statistics.median(d["sim"]["seconds"] for d in lines[1:])
    return {"seconds": seconds, "compute": per_it("compute"), "wire": per_it("wire"), "waiting": per_it("waiting"),
            "comm_share": statistics.mean((r["wire"] + r["waiting"]) / r["seconds"] for r in ranks)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--profiles", nargs="+", default=["ethernet", "wan"])
    p.add_argument("--ks", nargs="*", type=int, default=[2, 4], help="DecPG on the kNN ring of each k (none: --ks)")
    p.add_argument("--topologies", nargs="*", default=[], help="DecPG on each graph of the zoo (README 'Topologies')")
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cluster.json"))
    args = p.parse_args()
    cells = [("ps", "PS", ["--k", "0"])] + [("decpg", f"DecPG k={k}", ["--k", str(k)]) for k in args.ks] + \
        [("decpg", f"DecPG {t}", ["--topology", t]) for t in args.topologies]
    results = {}
    print(f"Simple Spread n={args.n} on {args.n} simulated nodes, simulated seconds per iteration", flush=True)
    print(f"{'profile':<12}{'algorithm':<22}{'s/it':>8}{'compute':>9}{'wire':>9}{'waiting':>9}{'comm':>7}", flush=True)
    for profile in args.profiles:
        for algo, name, graph in cells:
            r = results[f"{profile}/{name}"] = run_cell(args.n, algo, graph, profile, args.iterations)
            print(f"{profile:<12}{name:<22}{r['seconds']:>8.3f}{r['compute']:>9.3f}{r['wire']:>9.3f}"
                  f"{r['waiting']:>9.3f}{100 * r['comm_share']:>6.0f}%", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
