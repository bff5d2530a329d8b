"""decnode-topology: what a communication graph is and what it costs, before training on it.

    decnode-topology knn ring torus exp exp1peer random_regular complete --n 16 [--procs 4] [--draw graphs.png]

One row per graph: its period, whether it is directed and doubly stochastic (what DSGD needs), the largest
in-degree, the diameter (over one period's edges), the spectral gap of each round's mixing matrix (its range for a
time-varying graph) and of the product over one period, and what one gossip round sends: P processes hold n/P
consecutive agents each (decnode's placement), and each round every process sends each other process one message
holding the rows that process's agents listen to (topology.block_plan) — dim float32 parameters per row plus a
64-byte header per message (comm/frames.py). dim defaults to the actor's parameter count for --env at n agents
(net/model.job_shapes, the α–β model's own count). --draw writes one panel per graph (a time-varying graph: the
union of its rounds, edges coloured by round), refusing to replace a file decnode did not write (tools/outputs.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..cli import OneLineParser, fail
from ..config import ConfigError, TrainConfig
from ..topology import TOPOLOGIES, WEIGHTS, Graph, GraphArgs, block_plan, build_graph, check_graph, split_spec

PROG = "decnode-topology"
HEADER_BYTES = 64  # comm/frames.py's HEADER_BYTES (tools may import comm, but the count needs no torch)
FLOAT_BYTES = 4    # the fabric gossips float32 rows


def round_traffic(W: np.ndarray, procs: int, dim: int) -> tuple[int, int]:
    """(messages, bytes) of one gossip round with mixing matrix W over `procs` processes of n/procs agents."""
    messages = rows = 0
    for rank in range(procs):
        send = block_plan(W, procs, rank).send
        messages += len(send)
        rows += sum(len(r) for r in send.values())
    return messages, rows * dim * FLOAT_BYTES + messages * HEADER_BYTES


def describe(graph: Graph, procs: int, dim: int) -> dict:
    """The graph's row of the table (Graph.describe plus the traffic per round)."""
    row = graph.describe()
    traffic = [round_traffic(W, procs, dim) for W in graph.phases]
    row["messages_per_round"] = [m for m, _ in traffic]
    row["bytes_per_round"] = [b for _, b in traffic]
    return row


def span(values: list, fmt: str) -> str:
    """One value, or the range 'low–high' of a time-varying graph's rounds."""
    low, high = min(values), max(values)
    return format(low, fmt) if low == high else f"{format(low, fmt)}–{format(high, fmt)}"


COLUMNS = [("graph", "<"), ("n", ">"), ("period", ">"), ("directed", "<"), ("doubly stochastic", "<"),
           ("in-degree", ">"), ("diameter", ">"), ("gap per round", "<"), ("gap of period", "<"),
           ("messages/round", ">"), ("bytes/round", ">")]


def table(rows: list[dict]) -> str:
    cells = [[r["topology"], str(r["n"]), str(r["period"]), "yes" if r["directed"] else "no",
              "yes" if r["doubly_stochastic"] else "no", str(r["in_degree"]), str(r["diameter"]),
              span([max(g, 0.0) + 0.0 for g in r["spectral_gap"]], ".3f"), format(r["period_spectral_gap"], ".3f"),
              span(r["messages_per_round"], "d"), span(r["bytes_per_round"], ",d")] for r in rows]
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, (name, _) in enumerate(COLUMNS)]

    def line(values: list[str]) -> str:
        return "  ".join(f"{v:{a}{w}}" for v, (_, a), w in zip(values, COLUMNS, widths)).rstrip()

    return "\n".join([line([name for name, _ in COLUMNS])] + [line(c) for c in cells])


# ---- the row size ------------------------------------------------------------------------------------------------
def actor_dim(env: str, n: int, hidden: int) -> int:
    """The actor's parameter count per agent for `env` at n agents (the row a gossip round sends)."""
    from ..config import compose
    from ..extensions import env_agents
    from ..net.model import job_shapes

    fixed = env_agents(env)
    if fixed is not None and fixed != n:
        raise ValueError(f"--env {env} has {fixed} agents, but --n is {n}; give the row size with --dim instead")
    cfg = compose([], [("--env", {"env": {"name": env, "n_agents": n}, "train": {"hidden": hidden}})])
    try:
        return int(job_shapes(cfg)["actor_params"])
    except ImportError as err:  # an environment whose extra is not installed
        raise ValueError(f"--env {env}: {err}; or give the row size with --dim") from None


# ---- the drawing -------------------------------------------------------------------------------------------------
def positions(spec: str, args: GraphArgs) -> np.ndarray:
    """[n, 2] node positions: the graph's own layout (a torus: its grid), else a circle, agent 0 at the top,
    clockwise (a ring's neighbours side by side)."""
    entry = TOPOLOGIES.get(split_spec(spec)[0])
    if entry.layout is not None:
        return np.asarray(entry.layout(args), dtype=float)
    angle = np.pi / 2 - 2 * np.pi * np.arange(args.n) / args.n
    return np.stack([np.cos(angle), np.sin(angle)], axis=1)


def hidden(xy: np.ndarray, i: int, j: int) -> bool:
    """The straight line from node i to node j runs through another node (so it would pass for two edges)."""
    p, d = xy[i], xy[j] - xy[i]
    t = np.clip((xy - p) @ d / (d @ d), 0.0, 1.0)
    near = np.linalg.norm(p + t[:, None] * d - xy, axis=1) < 0.02 * np.ptp(xy, axis=0).max()
    near[[i, j]] = False
    return bool(near.any())


def draw_graph(ax, graph: Graph, xy: np.ndarray) -> None:
    """Edges of every round in the round's colour: a line for an edge both ways in that round, an arrow (sender →
    receiver) for a one-way edge; nodes numbered."""
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch

    n = graph.n
    handles = []
    for t, W in enumerate(graph.phases):
        colour = f"C{t % 10}"
        A = (W != 0) & ~np.eye(n, dtype=bool)  # A[i, j]: i receives from j
        pairs = [(i, j) for i, j in zip(*np.nonzero(A & A.T)) if i < j]
        straight = [(xy[i], xy[j]) for i, j in pairs if not hidden(xy, i, j)]
        if straight:
            ax.add_collection(LineCollection(straight, colors=colour, linewidths=1.2, alpha=0.8, zorder=1, gid="edges"))
        # an arc where a straight line would run through other nodes (a torus's wrap-around); an arrow one way
        arcs = [(i, j, "-", 0.25) for i, j in pairs if hidden(xy, i, j)]
        arcs += [(i, j, "-|>", 0.08 * (1 + t % 4)) for i, j in zip(*np.nonzero(A & ~A.T))]
        for i, j, style, rad in arcs:
            ax.add_patch(FancyArrowPatch(xy[j], xy[i], arrowstyle=style, mutation_scale=9, color=colour, lw=1.0,
                                         alpha=0.8, shrinkA=6, shrinkB=6, zorder=1, gid="edge",
                                         connectionstyle=f"arc3,rad={rad}"))
        handles.append(Line2D([], [], color=colour, label=f"round {t}"))
    ax.scatter(xy[:, 0], xy[:, 1], s=110 if n <= 32 else 30, c="white", edgecolors="black", zorder=2)
    if n <= 32:
        for i, (x, y) in enumerate(xy):
            ax.text(x, y, str(i), ha="center", va="center", fontsize=7, zorder=3)
    gaps = graph.gaps()
    title = f"{graph.name}  (n={n}, gap {max(gaps[0], 0.0):.3f})" if not graph.time_varying else (
        f"{graph.name}  (n={n}, period {graph.period}, gap of period {graph.period_gap():.3f})")
    ax.set_title(title, fontsize=9)
    if graph.time_varying:
        ax.legend(handles=handles, fontsize=7, loc="upper right", bbox_to_anchor=(1.12, 1.0), frameon=False)
    ax.set_aspect("equal")
    ax.margins(0.08)
    ax.axis("off")


def draw(graphs: list[tuple[Graph, np.ndarray]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save_figure

    cols = min(3, len(graphs))
    rows = math.ceil(len(graphs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.4 * rows), squeeze=False)
    for ax, (graph, xy) in zip(axes.flat, graphs):
        draw_graph(ax, graph, xy)
    for ax in axes.flat[len(graphs):]:
        fig.delaxes(ax)
    return save_figure(fig, path)


# ---- the command -------------------------------------------------------------------------------------------------
def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description="Degree, diameter, spectral gap and bytes per gossip round of "
                      "communication graphs; --draw draws them. Graphs: " + "; ".join(
                          f"{name}{':' + e.arg if e.arg else ''}: {e.doc}" for name, e in TOPOLOGIES.items()))
    p.add_argument("graphs", nargs="+", metavar="NAME", help="a topology: " + ", ".join(
        f"{name}[:{e.arg}]" if e.arg else name for name, e in TOPOLOGIES.items()))
    p.add_argument("--n", type=int, required=True, help="number of agents")
    p.add_argument("--k", type=int, default=GraphArgs.k, help=f"knn's k (default {GraphArgs.k})")
    p.add_argument("--degree", type=int, default=GraphArgs.degree,
                   help=f"random_regular's degree (default {GraphArgs.degree})")
    p.add_argument("--weights", choices=WEIGHTS, default="uniform", help="mixing weights of an edge list")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (random_regular; default 0)")
    p.add_argument("--procs", type=int, default=None, help="processes, each holding n/P consecutive agents "
                   "(default n: one agent each)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--dim", type=int, default=None, help="parameters per agent row (default: the actor's for --env)")
    size.add_argument("--env", default="simple_spread", help="environment whose actor sets dim (default "
                      "simple_spread)")
    p.add_argument("--hidden", type=int, default=TrainConfig.hidden, help="hidden width of that actor "
                   f"(default {TrainConfig.hidden})")
    p.add_argument("--draw", metavar="OUT.png", default=None, help="draw the graphs into this PNG")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        n = args.n
        if n < 1:
            raise ValueError(f"--n must be ≥ 1, got {n}")
        procs = n if args.procs is None else args.procs
        if procs < 1 or n % procs:
            raise ValueError(f"--procs {procs} must divide n={n}: each process holds n/P consecutive agents")
        for flag in ("dim", "hidden"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise ValueError(f"--{flag} must be ≥ 1, got {getattr(args, flag)}")
        out = Path(args.draw) if args.draw else None
        if out is not None:
            from .outputs import check_files

            if out.suffix.lower() != ".png":
                raise ValueError(f"--draw writes a PNG: name a file ending in .png, got {out}")
            check_files([out])  # before the work: new, or a figure decnode wrote and nobody edited since
        graphs = []
        for spec in args.graphs:
            graph = build_graph(spec, n, k=args.k, degree=args.degree, weights=args.weights, seed=args.seed)
            check_graph(graph, stochastic="row", algorithm="gossip")
            graphs.append(graph)
        dim = args.dim if args.dim is not None else actor_dim(args.env, n, args.hidden)
        what = f"{args.env} actor, hidden {args.hidden}" if args.dim is None else "--dim"
        rows = [describe(g, procs, dim) for g in graphs]
    except (ConfigError, ValueError) as err:
        fail(PROG, str(err))
    print(f"n={n} agents on {procs} process{'es' if procs > 1 else ''} ({n // procs} each), {args.weights} weights "
          "(of edge lists)")
    print(f"a row: {dim:,} float32 parameters ({what}) = {dim * FLOAT_BYTES:,} bytes, plus a {HEADER_BYTES}-byte "
          "header per message")
    print(table(rows))
    if out is not None:
        from .outputs import Writer

        try:
            with Writer(out.parent) as w:
                draw([(g, positions(spec, GraphArgs(n=n, k=args.k, degree=args.degree, seed=args.seed,
                                                    arg=split_spec(spec)[1])))
                      for spec, g in zip(args.graphs, graphs)], w.path(out.name))
        except OSError as err:
            fail(PROG, f"could not write {out}: {err.strerror or err}")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
