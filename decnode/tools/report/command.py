"""The paper's figures and tables from a sweep, or from any directory tree of runs.

    decnode-report SWEEP_DIR [--out DIR] [--include-unfinished] [--pick-lr OUT.yaml] [--smooth W]

Every directory below SWEEP_DIR holding config.yaml and metrics.jsonl is a run. A run that logged fewer
iterations than its train.iterations is unfinished: left out with a note unless --include-unfinished. Runs are
grouped as decnode-plot groups them (configs equal but for train.seed, algo.agents_per_process and run.*),
separately for each (env, n).

Writes into --out (default SWEEP_DIR/report):
  runs.csv     one row per run (RUN_COLUMNS below)
  groups.csv   one row per group: median, mean, std (over seeds, ddof 0) and count of every number of runs.csv
  train_reward.png (Fig. 2), test_reward.png (Fig. 3), generalisation_gap.png (Fig. 4), entropy.png (Fig. 7),
  noise.png (Fig. 10) — suffixed _<env>_n<n> when the sweep holds several (env, n)
  eval_modes.md  Table 3, when runs have decnode-eval's other modes
  results.md   the setting, a table per (env, n), the degeneracy check (degenerate.py: θ̄'s greedy action
               concentration, ties across groups), the figures, and three of the paper's claims checked on the data
Bars and every number in results.md are groups.csv values, aggregated from runs.csv's rows in aggregate().
--out is new, empty or holds only decnode's files (outputs.py: a user's file there, or one of decnode's the user
edited, is refused before anything is written); files an earlier report wrote that this one does not are removed.

--pick-lr OUT.yaml (a learning-rate search: groups differing in train.lr / min_lr): per algorithm, the
(lr, min_lr) with the best median final training reward over seeds, written as a config overlay
`per_algo: {algo: {lr, min_lr}}` whose comment header lists every candidate. Its first line marks it decnode's
(with the digest of the rest): an existing OUT.yaml is replaced only when it is such an overlay, unedited.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import yaml

from ... import config, extensions, yamlio
from .. import outputs, plots
from . import degenerate, figures as report_figures, graphs as report_graphs, text as report_text
from ..evalmodes import MODES
from ...cli import AnalysisError, OneLineParser, fail
from ...job import metricsfile
from ...job.rundir import CONFIG, MANIFEST

PROG = "decnode-report"
FINAL_FRACTION = 0.1  # final training reward: mean over the last 10% of logged values (at least one)
NAN = float("nan")
ID_COLUMNS = ["run_dir", "group", "env", "n_agents", "algo", "k", "topology", "spectral_gap", "bytes_per_iteration",
              "seed", "lr", "min_lr",
              "iterations", "iterations_logged", "finished"]
# The numbers of a run; groups.csv aggregates each of them.
NUMBERS = ["env_steps", "final_train_reward", "final_eval_reward", "entropy_final", "consensus_distance_final",
           "grad_disagreement_mean",
           "grad_disagreement_final", "update_variance_mean", "update_variance_final",
           *[f"{mode}_{split}" for mode in MODES for split in ("train", "test", "gap")],
           "individual_train_std", "individual_test_std", "wall_seconds", *degenerate.COLUMNS]
# Agent groups (issue 29): their names, and each group's own final noise metrics (JSON: {group: {metric: value}});
# empty for a run of one group.
AGENT_GROUP_COLUMNS = ["agent_groups", "agent_group_noise_final"]
RUN_COLUMNS = ID_COLUMNS + NUMBERS + AGENT_GROUP_COLUMNS + ["git_commit", "greedy_from"]
GROUP_ID = ["env", "n_agents", "group", "legend", "algo", "k", "topology", "spectral_gap", "bytes_per_iteration", "lr",
            "min_lr", "iterations", "seeds"]
STATS = ("median", "mean", "std", "count")
GROUP_COLUMNS = GROUP_ID + [f"{col}_{stat}" for col in NUMBERS for stat in STATS]


# ---- finding and reading runs --------------------------------------------------------------------------------
def find_runs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if CONFIG in filenames and metricsfile.NAME in filenames:
            found.append(Path(dirpath))
            dirnames.clear()  # a run's own subfolders (tb/, plots/) hold no runs
    return sorted(found)


def load_runs(root: Path, include_unfinished: bool) -> tuple[list[plots.Run], list[str], int]:
    """(runs to report, notes on what was skipped or kept unfinished, run directories found)."""
    runs, notes, paths = [], [], find_runs(root)
    for path in paths:
        rel = path.relative_to(root).as_posix() or "."
        try:
            run = plots.load_run(path)
            planned = int(run.cfg["train"]["iterations"])
            _ = (run.cfg["env"]["name"], int(run.cfg["env"]["n_agents"]), run.cfg["algo"]["name"])  # must exist
        except AnalysisError as err:
            notes.append(f"skipped {rel}: {err}")
            continue
        except (KeyError, TypeError, ValueError):
            notes.append(f"skipped {rel}: config.yaml is not a resolved decnode config")
            continue
        if run.cut:
            notes.append(run.cut)
        if not run.metrics:
            why = last_error(path)
            notes.append(f"skipped {rel}: no iteration logged; " + (f"its last attempt ended: {why}" if why else
                         "it stopped before its first iteration ended (its output says why)"))
            continue
        if len(run.metrics) < planned:
            if not include_unfinished:
                why = last_error(path)
                notes.append(f"skipped {rel}: unfinished ({len(run.metrics)} of {planned} iterations logged; "
                             + (f"its last attempt ended: {why}; " if why else "") + "--include-unfinished reports it)")
                continue
            notes.append(f"included unfinished {rel} ({len(run.metrics)} of {planned} iterations logged)")
        runs.append(run)
    return runs, notes, len(paths)


def last_error(run_dir: Path) -> str | None:
    """How the last attempt of a sweep cell ended, when it failed: decnode-run's error line in the sweep's
    logs/<cell>.log (e.g. a NaN in iteration 1, which leaves no line in metrics.jsonl); None otherwise."""
    log = run_dir.parent.parent / "logs" / f"{run_dir.name}.log"
    if run_dir.parent.name != "cells" or not log.is_file():
        return None
    try:
        attempt = log.read_text(errors="replace").rsplit("\n=== ", 1)[-1]  # the sweep starts each attempt so
    except OSError:
        return None
    marker = "decnode-run: error: "
    errors = [line.rpartition(marker)[2].strip() for line in attempt.splitlines() if marker in line]
    return errors[-1] if errors else None


def topology_gap(cfg: dict) -> float | None:
    """Spectral gap per round of the run's graph (Graph.round_gap; PS has no topology, nor an algorithm no loaded
    plugin knows; a graph that cannot be built again, e.g. a file since removed: None)."""
    graph = report_graphs.run_graph(cfg)
    return graph.round_gap() if graph is not None else None


def final_mean(values: list[float]) -> float:
    tail = values[-max(1, int(len(values) * FINAL_FRACTION)):]
    return float(np.mean(tail)) if tail else NAN


def _git_commit(path: Path) -> str | None:
    """The manifest's git_commit and any resumed_git_commits (a resume with other code), ';'-joined; None
    for manifests written before decnode recorded commits."""
    try:
        data = json.loads((path / MANIFEST).read_text())
        commits = [data.get("git_commit"), *(data.get("resumed_git_commits") or [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return ";".join(c for c in commits if isinstance(c, str) and c) or None


def run_row(run: plots.Run, root: Path, label: str) -> dict:
    cfg, metrics = run.cfg, run.metrics

    def series(key):
        return [float(m[key]) for m in metrics if m.get(key) is not None]

    def last(values):
        return values[-1] if values else NAN

    algo = cfg["algo"]["name"]
    row = {"run_dir": run.path.relative_to(root).as_posix() or ".", "group": label, "env": cfg["env"]["name"],
           "n_agents": cfg["env"]["n_agents"], "algo": algo, "k": cfg["algo"]["k"] if report_graphs.gossips(algo) else None,
           **report_graphs.graph_columns(cfg), "seed": cfg["train"]["seed"], "lr": cfg["train"]["lr"],
           "min_lr": cfg["train"]["min_lr"], "iterations": cfg["train"]["iterations"],
           "iterations_logged": len(metrics), "finished": len(metrics) >= cfg["train"]["iterations"],
           "env_steps": metrics[-1].get("env_steps", NAN), "final_train_reward": final_mean(series("train_reward")),
           "final_eval_reward": last(series("eval_reward")), "entropy_final": last(series("entropy")),
           "consensus_distance_final": last(series("consensus_distance"))}
    for key in ("grad_disagreement", "update_variance"):
        values = series(key)
        row[f"{key}_mean"] = float(np.mean(values)) if values else NAN
        row[f"{key}_final"] = last(values)
    modes = (run.evaluation or {}).get("modes") or {}
    for mode in MODES:
        entry = modes.get(mode) or {}
        for split in ("train", "test"):
            row[f"{mode}_{split}"] = entry.get(split, {}).get("return", NAN)
        row[f"{mode}_gap"] = entry.get("gap", NAN)
    for split in ("train", "test"):
        row[f"individual_{split}_std"] = (modes.get("individual") or {}).get(split, {}).get("return_std", NAN)
    per_group = next((m["groups"] for m in reversed(metrics) if isinstance(m.get("groups"), dict)), None)
    row["agent_groups"] = ";".join(per_group) if per_group else None
    row["agent_group_noise_final"] = json.dumps(per_group, sort_keys=False) if per_group else None
    ranks = (run.timing or {}).get("ranks") or []
    row["wall_seconds"] = max(r["wall"]["seconds"] for r in ranks) if ranks else NAN  # the job's wall-clock
    row["git_commit"] = _git_commit(run.path)
    row.update(degenerate.run_columns(run))  # θ̄'s greedy actions; ties and the verdict need the others: tables()
    return row


def aggregate(members: list[dict], legend: str) -> dict:
    """groups.csv's row for one group: the one place where per-run numbers become per-group numbers."""
    out = {key: members[0][key] for key in GROUP_ID if key in members[0]}
    out.update(legend=legend, seeds=len(members))
    for col in NUMBERS:
        v = np.array([m[col] for m in members], dtype=float)
        v = v[~np.isnan(v)]
        stats = (float(np.median(v)), float(v.mean()), float(v.std())) if v.size else (NAN, NAN, NAN)
        out.update({f"{col}_{s}": x for s, x in zip(STATS, stats)}, **{f"{col}_count": int(v.size)})
    return out


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    def cell(v):  # empty for missing; repr keeps every float exactly
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([[cell(r.get(c)) for c in columns] for r in rows])


# ---- the report ----------------------------------------------------------------------------------------------
def partitions(runs: list[plots.Run]) -> dict[tuple[str, int], list[tuple[str, list[plots.Run]]]]:
    """(env, n) -> decnode-plot's groups of those runs, in the paper's legend order."""
    by_setting: dict = {}
    for run in runs:
        by_setting.setdefault((run.cfg["env"]["name"], run.cfg["env"]["n_agents"]), []).append(run)
    return {key: plots.group_runs(by_setting[key]) for key in sorted(by_setting, key=lambda k: (k[0], int(k[1])))}


def tables(root: Path, runs: list[plots.Run]) -> list[dict]:
    """One entry per (env, n): its groups (label, runs), run rows and group rows."""
    out = []
    for (env, n), groups in partitions(runs).items():
        gaps = {label: topology_gap(members[0].cfg) for label, members in groups}
        legend = report_figures.legend_groups(groups, gaps)
        rows = [run_row(r, root, label) for label, members in groups for r in members]
        degenerate.mark(rows)
        group_rows = [aggregate([r for r in rows if r["group"] == label], shown)
                      for (label, _), (shown, _) in zip(groups, legend)]
        out.append({"env": env, "n": n, "groups": groups, "legend": legend, "rows": rows, "group_rows": group_rows})
    return out


def figures(part: dict, out: Path, suffix: str, smooth: int) -> dict[str, Path | None]:
    title, legend = f"{part['env']}, n={part['n']}", part["legend"]
    return {"train_reward": report_figures.train_reward(legend, out / f"train_reward{suffix}.png", title, smooth),
            "test_reward": report_figures.bars(
                part["group_rows"], "average_test", "test average episode reward (θ̄, deterministic)",
                f"{title}: test reward, perturbed env (paper Fig. 3; median ± std over seeds)",
                out / f"test_reward{suffix}.png"),
            "generalisation_gap": report_figures.bars(
                part["group_rows"], "average_gap", "test − train episode reward",
                f"{title}: generalisation gap (paper Fig. 4; median ± std over seeds)",
                out / f"generalisation_gap{suffix}.png"),
            "entropy": report_figures.entropy(legend, out / f"entropy{suffix}.png", title, smooth),
            "noise": plots.plot_noise(legend, out / f"noise{suffix}.png", smooth),
            "reward_vs_gap": report_graphs.reward_against(
                part["group_rows"], "spectral_gap", "spectral gap per round (1 − |λ₂|; time-varying: of the period's "
                "product, per round)", f"{title}: reward against the graph's spectral gap",
                out / f"reward_vs_gap{suffix}.png"),
            "reward_vs_bytes": report_graphs.reward_against(
                part["group_rows"], "bytes_per_iteration", "bytes on the wire per iteration, one agent per node "
                "(log scale)", f"{title}: reward against the bytes the graph sends", out / f"reward_vs_bytes{suffix}.png",
                log=True)}


def write_report(root: Path, runs: list[plots.Run], notes: list[str], out: Path, smooth: int = 1) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    parts = tables(root, runs)
    for part in parts:
        suffix = f"_{re.sub(r'[^A-Za-z0-9_.-]+', '-', part['env'])}_n{part['n']}" if len(parts) > 1 else ""
        part["figures"] = figures(part, out, suffix, smooth)
    written = [out / "runs.csv", out / "groups.csv", out / "results.md"]
    write_csv(written[0], [r for p in parts for r in p["rows"]], RUN_COLUMNS)
    write_csv(written[1], [g for p in parts for g in p["group_rows"]], GROUP_COLUMNS)
    modes_table = report_text.eval_modes(parts)
    if modes_table:
        (out / "eval_modes.md").write_text(modes_table)
        written.append(out / "eval_modes.md")
    written[2].write_text(report_text.results_md(root, parts, notes, out, modes_table))
    return written + [p for part in parts for p in part["figures"].values() if p is not None]


# ---- learning-rate choice ------------------------------------------------------------------------------------
def pick_lr(rows: list[dict], path: Path, root: Path) -> tuple[str, list[str]]:
    """The per_algo overlay with each algorithm's best (lr, min_lr) for `path`, and the lines to print."""
    settings = sorted({(r["env"], r["n_agents"]) for r in rows}, key=str)
    if len(settings) > 1:
        raise AnalysisError(f"--pick-lr needs runs of one env and n (per_algo holds one lr per algorithm), "
                            f"found {', '.join(f'{e} n={n}' for e, n in settings)}")
    per_k = {a for a in {r["algo"] for r in rows} if len({r["k"] for r in rows if r["algo"] == a}) > 1}
    candidates: dict[str, dict[tuple[float, float], list[float]]] = {}
    for r in rows:
        if math.isnan(r["final_train_reward"]):
            continue
        keys = [r["algo"]] + ([f"{r['algo']} k={r['k']}"] if r["algo"] in per_k else [])
        for key in keys:  # with several k, DecPG is chosen per k (printed) and over all k (per_algo.decpg)
            candidates.setdefault(key, {}).setdefault((r["lr"], r["min_lr"]), []).append(r["final_train_reward"])
    if not candidates:
        raise AnalysisError("--pick-lr: no run logged a training reward")
    header = [f"# decnode-report --pick-lr from {root}: per algorithm, the (lr, min_lr) with the best median final",
              f"# training reward over seeds (mean train_reward over the last {FINAL_FRACTION:.0%} of logged "
              "iterations)."]
    if per_k:
        header.append("# DecPG per k is listed for reference; per_algo.decpg is the best over all k pooled.")
    chosen, printed = {}, []
    for key, options in sorted(candidates.items()):
        medians = {lr: float(np.median(v)) for lr, v in options.items()}
        best = max(medians, key=lambda lr: (medians[lr], -lr[0]))  # ties: the smaller step
        for lr, med in sorted(medians.items()):
            header.append(f"#   {key}: lr={lr[0]:g} min_lr={lr[1]:g}: median {med:.4f} over {len(options[lr])} "
                          f"run{'s' if len(options[lr]) > 1 else ''}{'  <- chosen' if lr == best else ''}")
        printed.append(f"{key}: lr={best[0]:g} min_lr={best[1]:g} (median final training reward "
                       f"{medians[best]:.4f} over {len(options[best])} run{'s' if len(options[best]) > 1 else ''}; "
                       f"{len(options)} candidate{'s' if len(options) > 1 else ''})")
        if key in extensions.COMBINERS:
            chosen[key] = {"lr": best[0], "min_lr": best[1]}
    text = "\n".join(header) + "\n" + yaml.safe_dump({"per_algo": chosen}, sort_keys=False)
    try:  # what the main sweep will read must load with decnode's own loader: checked before it is written
        config.compose([(str(path), yamlio.parse(text, str(path)))])
    except (config.ConfigError, yamlio.YamlError) as err:
        raise AnalysisError(f"--pick-lr: decnode could not read the overlay it made for {path}: {err}") from None
    return text, printed + [f"wrote {path}"]


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog=PROG, description="The paper's figures, tables and claims from a sweep directory.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/report)")
    p.add_argument("--include-unfinished", action="store_true", help="report runs that logged fewer iterations "
                   "than train.iterations")
    p.add_argument("--pick-lr", metavar="OUT.yaml", default=None,
                   help="write each algorithm's best (lr, min_lr) as a per_algo config overlay")
    p.add_argument("--smooth", type=int, default=1, help="running mean over W logged points of the curves")
    args = p.parse_args(argv)
    try:
        root = Path(args.sweep_dir)
        if not root.is_dir():
            raise AnalysisError(f"sweep directory not found: {root}")
        if args.smooth < 1:
            raise AnalysisError(f"--smooth must be ≥ 1, got {args.smooth}")
        out = Path(args.out) if args.out else root / "report"
        outputs.check_dir(out)  # before the work, not after it: new, empty or decnode's own report
        if args.pick_lr:
            outputs.check_files([args.pick_lr])  # new, or an overlay decnode wrote and nobody edited since
        runs, notes, found = load_runs(root, args.include_unfinished)
        if not runs:
            raise AnalysisError(f"no run directories (config.yaml + metrics.jsonl) below {root}" if not found else
                                f"none of the {found} run directories below {root} can be reported: {notes[0]}")
        rows = [row for part in tables(root, runs) for row in part["rows"]]
        overlay, picked = pick_lr(rows, Path(args.pick_lr), root) if args.pick_lr else (None, [])
    except (AnalysisError, ValueError) as err:
        fail(PROG, str(err))
    for note in notes:
        print(note)
    try:
        with outputs.Writer(out, whole=True) as report:  # put in place together once every file is whole
            made = write_report(root, runs, notes, report.stage, args.smooth)
        if overlay is not None:
            with outputs.Writer(Path(args.pick_lr).parent, record=False) as w:  # its first line marks it decnode's
                w.text(Path(args.pick_lr).name, overlay, f"{PROG} --pick-lr")
    except OSError as err:
        fail(PROG, f"could not write the report into {out}: {err.strerror or err}")
    for path in made:
        print(f"wrote {report.final(path)}")
    for line in picked:
        print(line)


if __name__ == "__main__":
    main()
