"""decnode-report's figures: the paper's Figures 2, 3, 4, 7 and 10 for one (env, n) of a sweep.

Curves reuse decnode-plot (median over seeds and 95% bootstrap band at the env steps every seed logged); bars
draw groups.csv's median and std over seeds, so a bar shows exactly the numbers written there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import plots
from ..plots import plt


def legend_groups(groups, gaps: dict[str, float | None]) -> list[tuple[str, list]]:
    """Groups relabelled with the spectral gap, as the paper's Figure 2 legend: 'DecPG k=4 (gap 0.35)'."""
    out = []
    for label, runs in groups:
        gap, k = gaps.get(label), runs[0].cfg["algo"]["k"]
        if gap is not None:  # on the kNN ring after its k, as the paper's legend; on any other graph at the end
            label = label.replace(f"k={k}", f"k={k} (gap {gap:.2f})", 1) if f"k={k}" in label else f"{label} (gap {gap:.2f})"
        out.append((label, runs))
    return out


def train_reward(groups, path: Path, title: str, smooth: int = 1) -> Path:
    """Figure 2: θ̄ evaluated deterministically on the train env (the paper's curve) and, beside it, the
    stochastic training rollouts' return (what the final-training-reward column and --pick-lr rank by)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    palette = plots.colours(groups)
    for ax, key, name in ((axes[0], "eval_reward", "average episode reward (θ̄, deterministic, train env)"),
                          (axes[1], "train_reward", "training rollouts' episode reward")):
        if not plots.draw_curves(ax, groups, key, palette, smooth):
            ax.text(0.5, 0.5, f"no '{key}' values logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel(name)
        ax.legend(fontsize=8)
    axes[0].set_title(f"{title}: evaluation (paper Fig. 2)")
    axes[1].set_title(f"{title}: training rollouts")
    return plots.save_figure(fig, path)


def entropy(groups, path: Path, title: str, smooth: int = 1) -> Path:
    """Figure 7."""
    return plots.plot_metric(groups, "entropy", "policy entropy", f"{title}: policy entropy (paper Fig. 7)", path,
                             smooth)


def bars(rows: list[dict], metric: str, ylabel: str, title: str, path: Path) -> Path | None:
    """Figures 3-4: one bar per group, height = median over seeds, error bar = std over seeds (groups.csv's
    <metric>_median and <metric>_std). None when no group has the metric (no eval.json in the sweep)."""
    rows = [r for r in rows if not math.isnan(r[f"{metric}_median"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) + 2), 4.5))
    x = np.arange(len(rows))
    ax.bar(x, [r[f"{metric}_median"] for r in rows], 0.6, yerr=[r[f"{metric}_std"] for r in rows], capsize=4,
           color=[plt.get_cmap("tab10")(i % 10) for i in range(len(rows))])
    ax.set_xticks(x, [f"{r['legend']}\n({r[f'{metric}_count']} seed{'s' if r[f'{metric}_count'] > 1 else ''})"
                      for r in rows], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.axhline(0, color="black", lw=0.8)
    return plots.save_figure(fig, path)
