"""Figures from run directories: training curves, entropy, noise metrics, consensus, timing, landscapes.

    decnode-plot RUN_DIR [RUN_DIR …] [--out DIR] [--smooth W]

Runs whose resolved configs agree on everything except train.seed, algo.agents_per_process (how agents were
split over processes does not change results) and the run.* section are one group
("DecPG k=2", "PS", "PS+entropy"; groups that would share a name get the differing keys appended). A group's
curve is the median over its seeds at the env-step counts every seed logged; the band is a 95% bootstrap
confidence interval of that median (2000 resamples of the seeds, fixed generator; no band for one seed).
--smooth W first takes a centred running mean over W logged points of every seed's curve (default 1: none).

Writes into --out (default RUN_DIR/plots for one run, ./plots for several): reward.png (eval reward vs env
steps), entropy.png, noise.png (D_m and V_m, paper A.5), consensus.png, timing.png (stacked seconds per
category, summed over ranks; runs with timing.json), generalisation.png (runs with eval.json, decnode-eval) and,
for one run with trace.json, timeline.png (every rank's sections on the host's and the simulated clock).
The directory is new, empty or holds only decnode's figures (outputs.py); a figure an earlier decnode-plot wrote
there that this one does not is removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .. import extensions  # noqa: E402
from ..cli import AnalysisError, OneLineParser, fail  # noqa: E402
from ..config import ConfigError  # noqa: E402
from ..job import metricsfile, rundir  # noqa: E402
from .outputs import Writer, check_dir  # noqa: E402
from ..timing import ORDER, grouped  # noqa: E402

CATEGORY_NAMES = {"setup": "setup", "rollout": "rollout (act + env)", "step_exchange": "obs/action exchange",
                  "actor_update": "actor update (fwd + bwd)", "gossip/allreduce": "gossip / all-reduce",
                  "critic": "critic", "eval": "evaluation", "waiting": "waiting at sync points",
                  "checkpoint": "checkpoint", "other": "other (untimed)"}


@dataclass
class Run:
    path: Path
    cfg: dict
    metrics: list[dict]
    timing: dict | None
    evaluation: dict | None
    cut: str | None = None  # the note when metrics.jsonl's cut-short last line was dropped


def run_label(cfg: dict) -> str:
    return extensions.run_label(cfg["algo"])


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(path: str | Path) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise AnalysisError(f"run directory not found: {path}")
    for name in (rundir.CONFIG, metricsfile.NAME):
        if not (path / name).is_file():
            raise AnalysisError(f"no {name} in {path} (not a decnode run directory?)")
    try:
        metrics = metricsfile.read(path)
        cfg = rundir.read_config(path)
        return Run(path, cfg, metrics.records, _read_json(path / "timing.json"), _read_json(path / "eval.json"),
                   metrics.cut)
    except (metricsfile.MetricsError, ConfigError) as err:  # one line naming the file and line already
        raise AnalysisError(str(err)) from None
    except (json.JSONDecodeError, KeyError) as err:
        raise AnalysisError(f"{path}: unreadable run files ({str(err).splitlines()[0][:100]})") from None


# ---- grouping over seeds -------------------------------------------------------------------------------------
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Not part of what an experiment is: the seed (grouped over), where/how it ran (results do not depend on
# how agents are split over processes).
NOT_IDENTITY = ("train.seed", "algo.agents_per_process")
# Keys named first (and how) when groups that share a label must be told apart.
SHORT_KEYS = {"env.name": "env", "env.n_agents": "n", "algo.critic": "critic", "algo.mix_every": "mix",
              "train.lr": "lr", "train.entropy_coef": "entropy", "train.iterations": "iterations",
              "eval.episodes": "eval episodes"}


def _identity(cfg: dict) -> dict:
    return {k: v for k, v in _flat(cfg).items() if k not in NOT_IDENTITY and not k.startswith("run.")}


def _sort_key(label_and_runs):
    """Baselines first (in registry order), then the others, gossiping ones dense → sparse."""
    cfg = label_and_runs[1][0].cfg
    name = cfg["algo"]["name"]
    baselines = [a for a, entry in extensions.COMBINERS.items() if entry.baseline]
    order = baselines.index(name) if name in baselines else len(baselines)
    gossips = name in extensions.COMBINERS and extensions.combiner(name).gossips
    return order, -cfg["algo"]["k"] if gossips else 0, label_and_runs[0]


def group_runs(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """[(label, runs)] in the paper's legend order (PS, PS+entropy, DecPG dense → sparse)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(_identity(run.cfg), sort_keys=True, default=str), []).append(run)
    labelled = []
    for members in groups.values():
        label = run_label(members[0].cfg)
        twins = [g for g in groups.values() if run_label(g[0].cfg) == label and g is not members]
        if twins:  # same name, different config: name the keys that differ
            mine = _identity(members[0].cfg)
            keys = {k for g in twins for k, v in _identity(g[0].cfg).items() if mine.get(k) != v}
            keys = [k for k in SHORT_KEYS if k in keys] + sorted(keys - set(SHORT_KEYS))  # the telling ones first
            label += " (" + ", ".join(f"{SHORT_KEYS.get(k, k.split('.')[-1])}={mine.get(k)}" for k in keys[:3]) + ")"
        labelled.append((label, members))
    return sorted(labelled, key=_sort_key)


def aligned(runs: list[Run], key: str, smooth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(env steps logged by every run, values [runs, steps]) for one metric."""
    per_run = []
    for run in runs:
        pts = {m["env_steps"]: m[key] for m in run.metrics if m.get(key) is not None}
        per_run.append(pts)
    common = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    values = np.array([[p[s] for s in common] for p in per_run], dtype=float).reshape(len(runs), len(common))
    if smooth > 1 and len(common) >= smooth:
        kernel = np.ones(smooth) / smooth
        pad = [(0, 0), (smooth // 2, smooth - 1 - smooth // 2)]
        values = np.stack([np.convolve(np.pad(v, pad[1], mode="edge"), kernel, mode="valid") for v in values])
    return np.array(common, dtype=float), values


def median_band(values: np.ndarray, resamples: int = 2000) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Median over seeds (axis 0) and its 95% bootstrap confidence interval (None for one seed)."""
    median = np.median(values, axis=0)
    if values.shape[0] < 2:
        return median, None, None
    rng = np.random.default_rng(0)
    idx = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    boot = np.median(values[idx], axis=1)  # [resamples, steps]
    return median, np.percentile(boot, 2.5, axis=0), np.percentile(boot, 97.5, axis=0)


# ---- figures -------------------------------------------------------------------------------------------------
def colours(groups) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, (label, _) in enumerate(groups)}


def draw_curves(ax, groups, key, palette, smooth, log=False) -> bool:
    """Each group's median over seeds and its 95% band for one metric vs env steps; False if nothing was drawn."""
    drawn = False
    for label, runs in groups:
        steps, values = aligned(runs, key, smooth)
        if not steps.size:
            continue
        median, lo, hi = median_band(values)
        name = f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        if log:
            keep = median > 0
            if not keep.any():
                ax.plot([], [], color=palette[label], label=f"{name}: ≡ 0, not shown")
                continue
            steps, median = steps[keep], median[keep]
            if lo is not None:  # a band reaching 0 cannot be drawn on a log axis: leave those stretches open
                lo, hi = np.where(lo[keep] > 0, lo[keep], np.nan), np.where(lo[keep] > 0, hi[keep], np.nan)
        ax.plot(steps, median, color=palette[label], lw=1.8, label=name)
        if lo is not None:
            ax.fill_between(steps, lo, hi, color=palette[label], alpha=0.2, lw=0)
        drawn = True
    if log and drawn:
        ax.set_yscale("log")
    ax.set_xlabel("environment steps")
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    return drawn


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path


def plot_metric(groups, key: str, ylabel: str, title: str, path: Path, smooth: int = 1, log: bool = False) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if not draw_curves(ax, groups, key, colours(groups), smooth, log):
        ax.text(0.5, 0.5, f"no '{key}' values logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=9)
    return save_figure(fig, path)


def plot_noise(groups, path: Path, smooth: int = 1) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    palette = colours(groups)
    for ax, key, title in ((axes[0], "grad_disagreement", r"inter-agent gradient disagreement $\mathcal{D}_m$"),
                           (axes[1], "update_variance", r"inter-agent update variance $\mathcal{V}_m$")):
        draw_curves(ax, groups, key, palette, smooth, log=True)
        ax.set_title(title)
        ax.set_ylabel(key.replace("_", " ") + " (log scale)")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def timing_totals(run: Run) -> dict[str, float]:
    """Seconds per readable category summed over ranks, plus 'other' = Σ wall − Σ categories."""
    per_rank = [grouped(snap) for snap in run.timing["ranks"]]
    total: dict[str, float] = {}
    for snap in per_rank:
        for cat, sec in snap.items():
            total[cat] = total.get(cat, 0.0) + sec
    wall = total.pop("wall")
    total["other"] = max(wall - sum(total.values()), 0.0)
    return total


def plot_timing(runs: list[Run], path: Path) -> Path | None:
    """One stacked bar per run that has timing.json (written at the end of a run); None if none has."""
    runs = [r for r in runs if r.timing and r.timing.get("ranks")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(10, 1.4 + 0.5 * max(len(runs), 1)))
    totals = [timing_totals(r) for r in runs]
    present = {c for t in totals for c, s in t.items() if s > 0}
    cats = [c for c in ORDER if c in present] + sorted(present - set(ORDER) - {"other"}) + ["other"]
    cmap = plt.get_cmap("tab10")
    names = [f"{run_label(r.cfg)} · seed {r.cfg['train']['seed']} · {len(r.timing['ranks'])} proc · {r.path.name}"
             for r in runs]
    left = np.zeros(len(runs))
    for i, cat in enumerate(cats):
        secs = np.array([t.get(cat, 0.0) for t in totals])
        ax.barh(names, secs, left=left, color=cmap(i % 10), label=CATEGORY_NAMES.get(cat, cat), edgecolor="white")
        left += secs
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.1f}s", va="center", fontsize=8)
    ax.set_xlabel("seconds, summed over ranks (each rank's wall-clock split by category)")
    ax.set_title("where the time goes")
    ax.invert_yaxis()
    ax.set_xlim(0, max(left.max() * 1.12, 1e-3))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="category", title_fontsize=8)
    return save_figure(fig, path)


def plot_generalisation(groups, path: Path) -> Path | None:
    """Average-model (deterministic) train/test reward and gap per group from eval.json (paper Figs. 3, 4)."""
    rows = []
    for label, runs in groups:
        evals = [r.evaluation["modes"]["average"] for r in runs
                 if r.evaluation and "average" in r.evaluation.get("modes", {})]
        if evals:
            arr = np.array([[e["train"]["return"], e["test"]["return"], e["gap"]] for e in evals])
            rows.append((label, np.median(arr, axis=0), arr.std(axis=0), len(evals)))
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(rows))
    for j, (name, offset) in enumerate((("train", -0.2), ("test", 0.2))):
        axes[0].bar(x + offset, [r[1][j] for r in rows], 0.4, yerr=[r[2][j] for r in rows], capsize=3, label=name)
    axes[1].bar(x, [r[1][2] for r in rows], 0.6, yerr=[r[2][2] for r in rows], capsize=3, color="tab:gray")
    for ax, title in ((axes[0], "average episode reward (θ̄, deterministic)"),
                      (axes[1], "generalisation gap (test − train)")):
        ax.set_xticks(x, [f"{r[0]}\n({r[3]} seed{'s' if r[3] > 1 else ''})" for r in rows], fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.axhline(0, color="black", lw=0.8)
    axes[0].legend()
    return save_figure(fig, path)


def plot_landscape(alphas, betas, values, name: str, label: str, surface_path: Path, hist_path: Path) -> None:
    """3-D surface over (α, β) and a histogram of the grid values (paper Figs. 5, 8, 9)."""
    A, B = np.meshgrid(alphas, betas, indexing="ij")  # values[i, j] is at (alphas[i], betas[j])
    fig = plt.figure(figsize=(7, 5.5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(A, B, values, cmap="viridis", edgecolor="none", antialiased=True)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel(r"$\alpha$")
    ax.set_ylabel(r"$\beta$")
    ax.set_zlabel(name, labelpad=8)
    ax.set_title(f"{name} landscape\n{label}")
    save_figure(fig, surface_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    flat = np.asarray(values, dtype=float).ravel()
    ax.hist(flat[np.isfinite(flat)], bins=max(5, min(30, flat.size // 3)), color="tab:blue", alpha=0.8)
    centre = values[len(alphas) // 2, len(betas) // 2] if len(alphas) % 2 and len(betas) % 2 else None
    if centre is not None:
        ax.axvline(centre, color="tab:red", lw=1.5, label=r"$\bar\theta$ (centre)")
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(6))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax.set_xlabel(name)
    ax.set_ylabel("grid points")
    ax.set_title(f"{name} histogram\n{label}")
    save_figure(fig, hist_path)


def plot_timeline(run: Run, path: Path) -> Path | None:
    """timeline.png from trace.json: each rank's sections over the traced iterations, on the host's wall-clock and
    (with a network profile) on the simulated cluster's clock; nested sections drawn over their parents."""
    trace = _read_json(run.path / "trace.json")
    if not trace:
        return None
    events = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    pids = sorted({e["pid"] for e in events})
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    categories = [c for c in ORDER if any(e["cat"] == c for e in events)]
    colours = dict(zip(categories, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(len(pids), 1, figsize=(12, 1.2 + 0.5 * len(pids) * (1 + max(e["tid"] for e in events))),
                             squeeze=False)
    for ax, pid in zip(axes[:, 0], pids):
        for e in sorted((e for e in events if e["pid"] == pid), key=lambda e: -e["dur"]):
            ax.broken_barh([(e["ts"] / 1e3, max(e["dur"] / 1e3, 1e-3))], (e["tid"] - 0.4, 0.8),
                           color=colours.get(e["cat"], "grey"))
        ax.set_title(names.get(pid, str(pid)), fontsize=10)
        ax.set_xlabel("ms")
        ax.set_yticks(sorted({e["tid"] for e in events}), [f"rank {t}" for t in sorted({e["tid"] for e in events})])
        ax.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in categories]
    fig.legend(handles, [CATEGORY_NAMES.get(c, c) for c in categories], loc="upper right", fontsize=8, ncol=3)
    fig.suptitle(f"{run_label(run.cfg)}: the first traced iterations", x=0.01, ha="left")
    return save_figure(fig, path)


def make_plots(runs: list[Run], out: Path, smooth: int = 1) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    made = [plot_metric(groups, "eval_reward", "average episode reward (θ̄, deterministic)", "training curves",
                        out / "reward.png", smooth),
            plot_metric(groups, "entropy", "policy entropy", "policy entropy", out / "entropy.png", smooth),
            plot_noise(groups, out / "noise.png", smooth),
            plot_metric(groups, "consensus_distance", r"$\frac{1}{n}\sum_i\|\theta_i-\bar\theta\|^2$ (log scale)",
                        "consensus distance", out / "consensus.png", smooth, log=True),
            plot_timing(runs, out / "timing.png"), plot_generalisation(groups, out / "generalisation.png"),
            plot_timeline(runs[0], out / "timeline.png") if len(runs) == 1 else None]
    return [path for path in made if path is not None]


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog="decnode-plot", description="Training curves, noise metrics and timing of runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/plots for one run, else ./plots)")
    p.add_argument("--smooth", type=int, default=1, help="running mean over W logged points (default 1: none)")
    args = p.parse_args(argv)
    try:
        if args.smooth < 1:
            raise AnalysisError(f"--smooth must be ≥ 1, got {args.smooth}")
        runs = [load_run(d) for d in args.run_dirs]
        out = Path(args.out) if args.out else (runs[0].path / "plots" if len(runs) == 1 else Path("plots"))
        check_dir(out)  # before the work, not after it: new, empty or holding only decnode's figures
    except (AnalysisError, ValueError) as err:
        fail("decnode-plot", str(err))
    for run in runs:
        if run.cut:
            print(f"decnode-plot: {run.cut}", flush=True)
    try:
        with Writer(out, whole=True) as figures:  # put in place together once every figure is whole
            made = make_plots(runs, figures.stage, args.smooth)
    except OSError as err:
        fail("decnode-plot", f"could not write the figures into {out}: {err.strerror or err}")
    for path in made:
        print(f"wrote {figures.final(path)}")


if __name__ == "__main__":
    main()
