"""decnode-report on graphs: each gossiping run's graph, its spectral gap per round and the bytes it puts on the
wire, and the two figures a topology sweep is for — final reward against the gap, and against the bytes.

Bytes are what the graph sends per iteration with one agent per node (every edge of a round carries one row of the
actor's parameters in a frame with a 64-byte header), whatever placement the run itself used: a sweep run with
all agents in one process sends nothing, yet it is the graph's cost on a cluster that the comparison is about.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .. import plots
from ..plots import plt
from ...comm.frames import HEADER_BYTES
from ...config import from_dict
from ...extensions import COMBINERS, topology_label
from ...net.model import job_shapes
from ...topology import GraphError, build_graph


def gossips(algo: str) -> bool:
    """The algorithm gossips on a graph (an algorithm no loaded plugin knows: no)."""
    return algo in COMBINERS and COMBINERS.get(algo).gossips


def run_graph(cfg: dict):
    """The run's graph built again from its config, or None (PS; a graph that cannot be built again, e.g. a file
    since removed)."""
    algo = cfg["algo"]
    if not gossips(algo["name"]):
        return None
    try:
        return build_graph(algo.get("topology", "knn"), int(cfg["env"]["n_agents"]), k=int(algo["k"]),
                           degree=int(algo.get("degree", 3)), weights=algo.get("weights", "uniform"),
                           seed=int(cfg["train"]["seed"]))
    except GraphError:
        return None


def graph_columns(cfg: dict) -> dict:
    """runs.csv's graph columns: topology, spectral_gap (per round: Graph.round_gap), bytes_per_iteration."""
    graph = run_graph(cfg)
    if graph is None:
        return {"topology": None, "spectral_gap": None, "bytes_per_iteration": None}
    mixes = int(cfg["train"]["ppo_epochs"]) if cfg["algo"].get("mix_every", "step") == "step" else 1
    row_bytes = 4 * job_shapes(from_dict(cfg, "config.yaml"))["actor_params"] + HEADER_BYTES
    edges = np.mean([int((W != 0).sum() - (np.diag(W) != 0).sum()) for W in graph.phases])  # per round, on average
    return {"topology": topology_label(cfg["algo"]), "spectral_gap": graph.round_gap(),
            "bytes_per_iteration": float(mixes * edges * row_bytes)}


def _points(ax, rows: list[dict], x: str, metrics: list[tuple[str, str, str]]) -> int:
    """One point per group (median over seeds, bar: std), per metric; returns how many groups were drawn."""
    drawn = [r for r in rows if r.get(x) is not None and not (isinstance(r[x], float) and math.isnan(r[x]))]
    for metric, name, marker in metrics:
        pts = [(r[x], r[f"{metric}_median"], r[f"{metric}_std"], r["legend"]) for r in drawn
               if not math.isnan(r[f"{metric}_median"])]
        if not pts:
            continue
        xs, ys, es, _ = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, fmt=marker, capsize=4, label=name)
        if metric == metrics[0][0]:  # the graph's name (its gap is the x axis), staggered: close points overlap
            for i, (xv, yv, _, legend) in enumerate(sorted(pts)):
                name = re.sub(r" \(gap [^)]*\)", "", legend).replace("DecPG ", "")
                ax.annotate(name, (xv, yv), textcoords="offset points", xytext=(5, 6 + 9 * (i % 3)), fontsize=7)
    return len(drawn)


METRICS = [("final_train_reward", "final training reward", "o"), ("average_test", "test reward (θ̄, perturbed env)", "s")]


def reward_against(rows: list[dict], x: str, xlabel: str, title: str, path: Path, log: bool = False) -> Path | None:
    """Final training and test reward of each gossiping group against `x` (spectral_gap or bytes_per_iteration);
    None with fewer than two graphs to compare."""
    if sum(1 for r in rows if r.get(x) is not None) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _points(ax, rows, x, METRICS)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episode reward (median ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return plots.save_figure(fig, path)
