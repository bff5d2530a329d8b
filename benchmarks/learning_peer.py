"""Does decnode learn as an independent implementation does? decnode PS against benchmarks/peer_jax.py (shared
weights, JaxMARL's Simple Spread), same settings, several seeds, two step-size schedules (issue 28).

    python benchmarks/learning_peer.py                       # 5 seeds x 2 schedules x 2 implementations
    python benchmarks/learning_peer.py --plot-only           # redraw from results/learning_vs_jax/curves.json

Every run is one process, one after the other (decnode: `decnode-run --nproc 1 --agents-per-process N`; the peer
in its own process so JAX and torch never share one). A finished run (its curve complete on disk under --runs) is
not run again, so an interrupted comparison continues where it stopped. Writes to --out: curves.json (every run's
per-iteration training return and entropy, its wall and CPU seconds), learning.png and results.md.

Both log decnode's definitions (metrics.jsonl): `train_reward`, the rollout's episode return sum_t mean_i r_t^i
averaged over the B = 32 envs; `entropy`, the mean policy entropy at the rollout's parameters (first PPO epoch).
"Final" is the mean over the last 10 iterations of a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decnode import yamlio  # noqa: E402

IMPLS = ("decnode", "jax_peer")
LAST = 10  # iterations averaged for the "final" numbers


def schedules(constant: float) -> dict:
    """name -> (lr, min_lr): the n = 10 search's PS choice (configs/sweeps/tuned/spread_n10.yaml) and a constant."""
    tuned = yamlio.read(ROOT / "configs/sweeps/tuned/spread_n10.yaml")["per_algo"]["ps"]
    return {"tuned": (float(tuned["lr"]), float(tuned["min_lr"])), f"constant {constant:g}": (constant, constant)}


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _curve_decnode(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [{"iteration": x["iteration"], "lr": x["lr"], "train_reward": x["train_reward"], "entropy": x["entropy"]}
            for x in lines if "train_reward" in x]


def _curve_peer(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def run_one(impl: str, lr: float, min_lr: float, seed: int, args, where: Path) -> dict:
    """Run (unless already complete) and return {curve, seconds, cpu_seconds}."""
    done = where / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    where.mkdir(parents=True, exist_ok=True)
    if impl == "decnode":
        cmd = [sys.executable, "-c", "from decnode.job.run import main; main()", "--nproc", "1",
               "--agents-per-process", str(args.n), "--algo", "ps", "--iterations", str(args.iterations),
               "--seed", str(seed), "--set", f"env.n_agents={args.n}", "--set", f"train.lr={lr}",
               "--set", f"train.min_lr={min_lr}", "--set", "eval.interval=1000000", "--set", "eval.test_episodes=32",
               "--out", str(where / "run"), "--overwrite"]
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks/peer_jax.py"), "--n", str(args.n), "--weights", "shared",
               "--iterations", str(args.iterations), "--seed", str(seed), "--lr", str(lr), "--min-lr", str(min_lr),
               "--curve", str(where / "curve.jsonl")]
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    with open(where / "log.txt", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT, timeout=args.timeout)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    curve = _curve_decnode(where / "run") if impl == "decnode" else _curve_peer(where / "curve.jsonl")
    if len(curve) != args.iterations:
        raise RuntimeError(f"{impl} seed {seed}: {len(curve)} of {args.iterations} iterations logged ({where})")
    out = {"seconds": seconds, "cpu_seconds": cpu,
           "train_reward": [x["train_reward"] for x in curve], "entropy": [x["entropy"] for x in curve],
           "lr_curve": [x["lr"] for x in curve]}
    done.write_text(json.dumps(out))
    return out


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name"))
        cores = next(x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("CPU(s)"))
        return f"{name}, {cores} cores"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def collect(args) -> dict:
    runs = []
    for seed in args.seeds:  # seed-major: an interrupted comparison still has both sides of every seed it ran
        for name, (lr, min_lr) in schedules(args.constant).items():
            for impl in IMPLS:
                where = Path(args.runs) / name.replace(" ", "_") / impl / f"seed{seed}"
                r = run_one(impl, lr, min_lr, seed, args, where)
                final = statistics.mean(r["train_reward"][-LAST:])
                print(f"{name:>14} {impl:>8} seed {seed}: final return {final:8.2f} entropy "
                      f"{statistics.mean(r['entropy'][-LAST:]):.3f}  {r['seconds']:.0f} s", flush=True)
                runs.append({**r, "impl": impl, "schedule": name, "lr": lr, "min_lr": min_lr, "seed": seed})
    return {"n": args.n, "iterations": args.iterations, "seeds": args.seeds, "cpu": cpu_name(),
            "final": f"mean over the last {LAST} iterations", "runs": runs}


def _final(run: dict, key: str) -> float:
    return statistics.mean(run[key][-LAST:])


def summary(data: dict) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["schedule"] for r in data["runs"]):
        for impl in IMPLS:
            rs = [r for r in data["runs"] if r["schedule"] == name and r["impl"] == impl]
            if not rs:
                continue
            ret, ent = [_final(r, "train_reward") for r in rs], [_final(r, "entropy") for r in rs]
            rows.append({"schedule": name, "impl": impl, "lr": rs[0]["lr"], "min_lr": rs[0]["min_lr"],
                         "seeds": len(rs), "return": ret, "entropy": ent,
                         "seconds": statistics.median(r["seconds"] for r in rs),
                         "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs)})
    return rows


def _spread(xs: list[float], fmt: str) -> str:
    return f"{statistics.median(xs):{fmt}} [{min(xs):{fmt}}, {max(xs):{fmt}}]"


def write_markdown(data: dict, rows: list[dict], path: Path) -> None:
    lines = [f"# decnode PS against the JAX peer (shared weights): Simple Spread n = {data['n']}, "
             f"{data['iterations']} iterations, seeds {data['seeds']}",
             "", f"Measured on {data['cpu']}, one process per run, one run at a time (`benchmarks/learning_peer.py`). "
             f"Final = {data['final']}; median [min, max] over seeds. Seconds: wall-clock of a whole run (start-up "
             "and JAX's compile included); CPU: user + system seconds of the run's processes.", "",
             "| schedule | implementation | seeds | final train return | final entropy | seconds | CPU seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = f"{r['lr']:g}" if r["lr"] == r["min_lr"] else f"{r['lr']:g} → {r['min_lr']:g}"
        lines.append(f"| {r['schedule']} (lr {lr}) | {r['impl']} | {r['seeds']} | {_spread(r['return'], '.2f')} | "
                     f"{_spread(r['entropy'], '.3f')} | {r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    lines += ["", "Per seed (final train return / final entropy):", ""]
    for r in rows:
        per = ", ".join(f"{a:.2f} / {b:.3f}" for a, b in zip(r["return"], r["entropy"]))
        lines.append(f"- {r['schedule']}, {r['impl']}: {per}")
    lines += ["", "Beyond the seeds' spread? (do the two implementations' [min, max] ranges overlap)", ""]
    for name in dict.fromkeys(r["schedule"] for r in rows):
        pair = [r for r in rows if r["schedule"] == name]
        if len(pair) != 2:
            continue
        for key in ("return", "entropy"):
            a, b = pair[0][key], pair[1][key]
            overlap = min(max(a), max(b)) >= max(min(a), min(b))
            lines.append(f"- {name}, {key}: {'ranges overlap' if overlap else 'ranges do NOT overlap'}")
    path.write_text("\n".join(lines) + "\n")


def plot(data: dict, path: Path, smooth: int = 5) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(dict.fromkeys(r["schedule"] for r in data["runs"]))
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 7), squeeze=False, sharex=True)
    colors = {"decnode": "tab:blue", "jax_peer": "tab:orange"}
    kernel = np.ones(smooth) / smooth
    for col, name in enumerate(names):
        for row, key in enumerate(("train_reward", "entropy")):
            ax = axes[row][col]
            for impl in IMPLS:
                rs = [r for r in data["runs"] if r["schedule"] == name and r["impl"] == impl]
                if not rs:
                    continue
                y = np.array([np.convolve(r[key], kernel, mode="valid") for r in rs])  # moving average per run
                x = np.arange(y.shape[1]) + smooth
                ax.plot(x, np.median(y, 0), color=colors[impl], label=f"{impl} (median of {len(rs)})")
                ax.fill_between(x, y.min(0), y.max(0), color=colors[impl], alpha=0.2)
            lr, min_lr = next((r["lr"], r["min_lr"]) for r in data["runs"] if r["schedule"] == name)
            if row == 0:
                ax.set_title(f"{name}: lr {lr:g}" + ("" if lr == min_lr else f" → {min_lr:g}"))
            ax.set_ylabel("training return" if key == "train_reward" else "policy entropy")
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Simple Spread n = {data['n']}, PS: decnode vs JAX peer; {smooth}-iteration moving average, "
                 f"band = min–max over seeds ({data['cpu']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--constant", type=float, default=0.1, help="the constant step size compared beside the tuned one")
    p.add_argument("--runs", default=str(ROOT / "runs/learning_vs_jax"), help="the runs' own files")
    p.add_argument("--out", default=str(ROOT / "results/learning_vs_jax"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--plot-only", action="store_true", help="redraw learning.png and results.md from curves.json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        data = json.loads((out / "curves.json").read_text())
    else:
        data = collect(args)
        (out / "curves.json").write_text(json.dumps(data))
    write_markdown(data, summary(data), out / "results.md")
    plot(data, out / "learning.png")
    print(f"wrote {out}/curves.json, learning.png, results.md")


if __name__ == "__main__":
    main()
