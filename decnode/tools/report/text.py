"""decnode-report's Markdown: results.md, Table 3 (eval_modes.md) and the paper's claims checked on the data.

Every number here is a groups.csv value (a group row of report.aggregate) or a sum of runs.csv's wall_seconds.
A claim line says "held", "did not hold", "not enough data" or "untestable at this budget" (a claim about what the
policies learned, compared on groups the degeneracy check flags: degenerate.py), and gives the numbers it was
decided on.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ... import extensions
from . import degenerate
from ..evalmodes import MODES

HELD, NOT_HELD, NO_DATA = "held", "did not hold", "not enough data"
UNTESTABLE = "untestable at this budget"
MODE_NAMES = {"average": "Average model (deterministic)", "average_stochastic": "Average model (stochastic)",
              "local": "Local models", "individual": "Individual local models (std over agents)"}


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def spread(row: dict, col: str) -> str:
    """'median ± std' over seeds (std only with more than one seed)."""
    if not row[f"{col}_count"]:
        return "–"
    return fmt(row[f"{col}_median"]) + (f" ± {fmt(row[f'{col}_std'])}" if row[f"{col}_count"] > 1 else "")


# ---- the paper's claims --------------------------------------------------------------------------------------
def _graph(row: dict) -> str | None:
    """A group's graph as runs.csv names it ("k=4" on the kNN ring, "exp1peer", ...; None: no graph)."""
    return row.get("topology") or (f"k={row['k']}" if row.get("k") not in (None, "") else None)


def _sparsity(row: dict) -> float:
    """Sort key, sparsest first: the spectral gap per round (k when the gap is unknown, e.g. a removed graph file)."""
    gap = row.get("spectral_gap")
    return gap if isinstance(gap, (int, float)) and gap == gap else float(row.get("k") or 0)


def _one_per_setting(rows: list[dict]) -> tuple[dict, list[str]]:
    """{(algo, graph): group row}, plus the labels of groups that share an (algo, graph) (e.g. an lr search): a
    claim compares one configuration per algorithm and topology."""
    table, twins = {}, []
    for r in rows:
        key = (r["algo"], _graph(r))
        if key in table:
            twins += [table[key]["group"], r["group"]]
        table[key] = r
    return table, sorted(set(twins))


def _has(row: dict, col: str) -> bool:
    return row[f"{col}_count"] > 0


def _entry(algo: str):
    """The algorithm's registry entry; None for one no loaded plugin knows (it takes part in no claim)."""
    return extensions.combiner(algo) if algo in extensions.COMBINERS else None


def _gossiping(table: dict, ok) -> list[dict]:
    """Rows of algorithms that gossip on a graph (DecPG: the claims compare its topologies) passing ok."""
    return [r for (a, _), r in table.items() if _entry(a) is not None and _entry(a).gossips and ok(r)]


def claim_train(table: dict) -> tuple[str, str]:
    col = "final_train_reward"
    baselines = [table[(a, None)] for a, e in extensions.COMBINERS.items()
                 if e.baseline and (a, None) in table and _has(table[(a, None)], col)]
    decpg = sorted(_gossiping(table, lambda r: _has(r, col)), key=lambda r: -_sparsity(r))
    if not decpg or not any(not _entry(b["algo"]).entropy for b in baselines):  # needs plain PS, not only PS+entropy
        return NO_DATA, "needs PS and DecPG runs that logged training rewards"
    bar = max(b[f"{col}_median"] for b in baselines)
    wins = [r for r in decpg if r[f"{col}_median"] >= bar]
    detail = (", ".join(f"{b['group']} {fmt(b[f'{col}_median'])}" for b in baselines) + " vs " +
              ", ".join(f"DecPG {_graph(r)} {fmt(r[f'{col}_median'])}" for r in decpg))
    if wins:
        return HELD, f"{', '.join(_graph(r) for r in wins)} ≥ every PS baseline ({detail})"
    return NOT_HELD, f"no DecPG topology reaches the best PS baseline ({detail})"


def claim_noise(table: dict) -> tuple[str, str]:
    cols = {"gradient disagreement": "grad_disagreement_mean", "update variance": "update_variance_mean"}
    decpg = sorted(_gossiping(table, lambda r: all(_has(r, c) for c in cols.values())), key=_sparsity)
    if len(decpg) < 2:
        return NO_DATA, "needs DecPG runs on at least two graphs (two values of k)"
    parts, ok = [], True
    for name, col in cols.items():
        order = sorted(decpg, key=lambda r: -r[f"{col}_median"])
        ok &= order[0] is decpg[0] and order[-1] is decpg[-1]  # sparsest highest, densest lowest
        parts.append(f"{name} (mean over iterations): " +
                     " > ".join(f"{_graph(r)} {fmt(r[f'{col}_median'])}" for r in order))
    verdict = HELD if ok else NOT_HELD
    return verdict, f"sparsest {_graph(decpg[0])}, densest {_graph(decpg[-1])}; " + "; ".join(parts)


def claim_test_trend(table: dict) -> tuple[str, str]:
    col = "average_test"
    decpg = sorted(_gossiping(table, lambda r: _has(r, col)), key=lambda r: -_sparsity(r))
    if len(decpg) < 2:
        return NO_DATA, "needs eval.json of DecPG runs on at least two graphs (two values of k)"
    values = [r[f"{col}_median"] for r in decpg]
    steps = [b - a for a, b in zip(values, values[1:])]
    trend = ("increasing" if all(s > 0 for s in steps) else "decreasing" if all(s < 0 for s in steps)
             else "flat" if all(s == 0 for s in steps) else "mixed")
    detail = "dense → sparse: " + ", ".join(f"{_graph(r)} {fmt(v)}" for r, v in zip(decpg, values))
    return (HELD if trend == "increasing" else NOT_HELD), f"{trend} ({detail})"


def _compared(table: dict) -> list[dict]:
    """Claim 1's groups: the PS baselines and the gossiping ones."""
    return [r for (a, _), r in table.items() if _entry(a) is not None and (_entry(a).baseline or _entry(a).gossips)]


# (text, check, the groups whose policies must have learned for the check to mean anything; None: it is about the
# optimisation's noise, which the graph sets whatever the policies learned)
CLAIMS = (("DecPG ≥ PS on final training reward (5.1, Fig. 2)", claim_train, _compared),
          ("sparser topologies give larger gradient disagreement and update variance (A.5, Fig. 10: k=2 highest, "
           "k=8 lowest)", claim_noise, None),
          ("test reward increases as the topology gets sparser (5.3, Fig. 3; Simple Spread n ≥ 10)",
           claim_test_trend, lambda table: _gossiping(table, lambda r: True)))


def claims(rows: list[dict], runs: list[dict] | None = None) -> list[str]:
    """rows: one (env, n)'s group rows; runs: its run rows (the degeneracy check's reasons; None: no check)."""
    table, twins = _one_per_setting(rows)
    lines = []
    for i, (text, check, learned) in enumerate(CLAIMS, start=1):
        if twins:
            verdict, detail = NO_DATA, f"several configurations share an algorithm and graph ({', '.join(twins[:4])})"
        else:
            verdict, detail = check(table)
            flagged = [r for r in learned(table) if degenerate.group_verdict(r)] if learned and runs else []
            if flagged and verdict != NO_DATA:
                verdict, detail = UNTESTABLE, (
                    "degenerate policies in " + "; ".join(f"{r['group']} ({degenerate.why(r, runs)})"
                                                          for r in flagged)
                    + f"; the numbers, evidence neither way: {detail}")
        lines.append(f"{i}. Paper: {text}. Here: **{verdict}** — {detail}.")
    return lines


# ---- tables --------------------------------------------------------------------------------------------------
COLUMNS = (("final train reward", "final_train_reward"), ("final eval reward", "final_eval_reward"),
           ("test reward", "average_test"), ("generalisation gap", "average_gap"), ("entropy (final)", "entropy_final"),
           ("grad disagreement (mean)", "grad_disagreement_mean"), ("update variance (mean)", "update_variance_mean"))


def group_table(rows: list[dict]) -> str:
    graphs = any(r.get("bytes_per_iteration") is not None for r in rows)  # the graph's cost, when a group has one
    head = ["group", "spectral gap", *(["MB/iteration (1 agent per node)", "consensus distance (final)"] if graphs
                                        else []), "seeds", *(name for name, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        wire = r.get("bytes_per_iteration")
        extra = [fmt(wire / 1e6) if wire is not None else "", spread(r, "consensus_distance_final")] if graphs else []
        cells = [r["group"], fmt(r["spectral_gap"]), *extra, str(r["seeds"]), *(spread(r, col) for _, col in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _runs(count: int) -> str:
    return f"{count} run{'s' if count != 1 else ''}"


def degeneracy(group_rows: list[dict], runs: list[dict]) -> list[str]:
    """The degeneracy check's table: per group, θ̄'s greedy action concentration and ties, and a verdict."""
    head = ["group", "greedy top share", "greedy action entropy (nats)", "runs tied with another group", "verdict"]
    lines = [f"θ̄ acting greedily on the train env: the share of its most frequent action and the entropy of its "
             f"actions (median ± std over the seeds measured), and the runs whose evaluation returns equal (to "
             f"{degenerate.TIE_TOL:g}) those of another group's run with the same seed. A run is degenerate when its "
             f"top share is ≥ {degenerate.TOP_SHARE:g} or it ties; a group when half its runs are (fewer, with some runs not measured: not checked). Why "
             f"{degenerate.TOP_SHARE:g}: {degenerate.WHY_THRESHOLD}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in group_rows:
        members = [r for r in runs if r["group"] == g["group"]]
        flag = degenerate.group_verdict(g)
        verdict = ("not checked" if flag is None else "**degenerate**" if flag else "not degenerate")
        tied = sum(1 for r in members if r["tied_with"])
        measured = g["greedy_top_share_count"]
        lines.append(f"| {g['group']} | {spread(g, 'greedy_top_share')} ({measured} of {len(members)} measured) | "
                     f"{spread(g, 'greedy_entropy')} | {tied} of {len(members)} | {verdict} |")
    sources = sorted({r["greedy_from"] for r in runs})
    lines += ["", "Greedy actions from: " + "; ".join(
        f"{_runs(sum(1 for r in runs if r['greedy_from'] == s))} {s}" for s in sources) + "."]
    return lines


def eval_modes(parts: list[dict]) -> str:
    """Table 3 (A.6): median over seeds of every mode's train and test return, for groups that have any mode
    besides the average model's; "" if none has."""
    out = []
    for part in parts:
        rows = [r for r in part["group_rows"] if any(_has(r, f"{m}_train") for m in MODES[1:])]
        if not rows:
            continue
        head = ["group", "split", *(MODE_NAMES[m] for m in MODES)]
        lines = [f"### Evaluation modes (Table 3): {part['env']}, n={part['n']}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            for split in ("train", "test"):
                cells = [fmt(r[f"{m}_{split}_median"]) for m in MODES]
                if _has(r, f"individual_{split}_std"):
                    cells[-1] += f" ({fmt(r[f'individual_{split}_std_median'])})"
                lines.append(f"| {r['group']} | {split} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def _values(rows: list[dict], col: str) -> list:
    return sorted({r[col] for r in rows if r[col] is not None and r[col] == r[col]})  # one type per column


def setting(rows: list[dict]) -> list[str]:
    walls = [r["wall_seconds"] for r in rows if not math.isnan(r["wall_seconds"])]
    commits = sorted({c for value in _values(rows, "git_commit") for c in value.split(";")})
    envs = sorted({f"{r['env']} n={r['n_agents']}" for r in rows})
    return [f"- env: {', '.join(envs)}",
            f"- iterations: {', '.join(map(str, _values(rows, 'iterations')))}; env steps (last logged): "
            f"{', '.join(fmt(v) for v in _values(rows, 'env_steps'))}",
            f"- seeds: {', '.join(map(str, sorted(set(r['seed'] for r in rows))))} ({len(rows)} runs)",
            f"- budget: {sum(walls):.1f} wall-clock seconds summed over the {len(walls)} runs with timing.json",
            f"- git commits: {', '.join(c[:12] for c in commits) if commits else 'not recorded'}"]


def results_md(root: Path, parts: list[dict], notes: list[str], out: Path, modes_table: str) -> str:
    all_rows = [r for p in parts for r in p["rows"]]
    lines = [f"# decnode report: {root}", "",
             f"{len(all_rows)} runs in {sum(len(p['group_rows']) for p in parts)} groups. Numbers are median ± std "
             "over seeds from groups.csv (per run: runs.csv). Final train reward: mean training-rollout return over "
             "the last 10% of logged iterations; final eval reward: the last evaluation of θ̄ on the train env; "
             "test reward and gap: eval.json's average model (deterministic) on the perturbed test env.", "",
             "## Setting", "", *setting(all_rows), ""]
    if notes:
        lines += ["Runs left out or kept unfinished:", "", *(f"- {n}" for n in notes), ""]
    for part in parts:
        own = [*setting(part["rows"]), ""] if len(parts) > 1 else []  # one setting: said above already
        lines += [f"## {part['env']}, n={part['n']}", "", *own, group_table(part["group_rows"]), "",
                  "### Did the policies learn? (degeneracy check)", "", *degeneracy(part["group_rows"], part["rows"]),
                  "", "### The paper's claims vs here", "", *claims(part["group_rows"], part["rows"]), "",
                  "### Figures", ""]
        for name, path in part["figures"].items():
            if path is None and name.startswith("reward_vs"):
                continue  # fewer than two graphs: nothing to compare
            if path is None:
                lines.append(f"- {name.replace('_', ' ')}: no run has eval.json, no figure")
            else:
                lines.append(f"![{name.replace('_', ' ')}]({Path(os.path.relpath(path, out)).as_posix()})")
        lines.append("")
    if modes_table:
        lines += ["## Evaluation modes", "", modes_table]
    return "\n".join(lines) + "\n"
