"""Did the policies a claim compares learn anything? decnode-report's degeneracy check (issue 28).

An averaged model θ̄ whose greedy (argmax) policy plays one fixed behaviour scores the same whatever its parameters:
in results/spread_n10_tuned three DecPG graphs scored exactly −49.52 (seed 1) and −46.53 (seed 2), the value every
agent standing still gets on those episodes. Comparing such groups is evidence of nothing, so a claim resting on
them is "untestable at this budget", never "did not hold". Two signs, per run:

  concentration  the share of the most frequent greedy action (and the entropy of the greedy actions, nats) of θ̄
                 on the train env: from eval.json (the trainer's final evaluation counts them, marl/evaluate.py),
                 otherwise replayed from models.pt on REPLAY_EPISODES episodes; neither: not measured. A models.pt
                 that is damaged or not the run's own is refused, as decnode-eval refuses it (issue 23, class 2).
  ties           the run's evaluation returns equal (to 1e-9) those of a run of another group with the same seed:
                 two different configurations do not land on the same mean of dozens of episodes unless both
                 play the same fixed behaviour (the evaluation episodes depend on the seed only).

A run is degenerate when its top share is ≥ TOP_SHARE or it ties with another group; a group when at least half of
its runs are (its median is then a degenerate run's value, or halfway to one); with fewer flagged it is "not
degenerate" only if every run was measured, else "not checked".
"""

from __future__ import annotations

import math

import numpy as np

from ...cli import AnalysisError
from ...comm.transport import Collectives
from ...marl.evaluate import Evaluator
from .. import evalmodes
from ...job.rundir import MODELS

# Measured here (Simple Spread n=3, one process, 32 evaluation episodes): a constant policy has top share 1; θ̄
# after 3 iterations (out layer still at gain 0.01) 0.97, scoring −71; learned policies of quick_spread_n3's setting
# (120 iterations, lr 0.5) 0.63 and 0.89 (seeds 1, 2; −20.3 and −23.0): a good spread policy walks to a landmark and
# then stays, so one action (stay) dominates even when it learned. Hence a high bar, between 0.89 and 0.97.
TOP_SHARE = 0.95
WHY_THRESHOLD = ("a constant policy has top share 1 and θ̄ after 3 iterations 0.97, while learned Simple Spread "
                 "n=3 policies (quick_spread_n3's setting, 120 iterations) measured 0.63 and 0.89: they walk to a "
                 "landmark and then stay, so the bar sits between 0.89 and 0.97")
REPLAY_EPISODES = 8  # models.pt replay: 8 episodes × 25 steps × n agents choices, cheap next to the report
TIE_TOL = 1e-9
NO_COUNTS = "not measured: no greedy counts in eval.json and no models.pt"
COLUMNS = ["greedy_top_share", "greedy_entropy", "tied_runs", "degenerate"]  # runs.csv numbers (groups.csv aggregates)


def greedy_counts(run) -> tuple[list[int] | None, str]:
    """(θ̄'s greedy action counts on the train env, where they come from or why there are none)."""
    train = (((run.evaluation or {}).get("modes") or {}).get("average") or {}).get("train") or {}
    if train.get("greedy_actions") is not None:
        return list(train["greedy_actions"]), f"eval.json ({train.get('greedy_episodes')} episodes)"
    if not (run.path / MODELS).is_file():
        return None, NO_COUNTS
    try:
        models = evalmodes.load_models(run.path)
    except AnalysisError as err:  # a note would bury it in results.md: the report is refused, in one line
        raise AnalysisError(f"{err} (decnode-report replays it: {run.path / 'eval.json'} has no greedy action "
                            "counts)") from None
    try:
        return replay(models), f"models.pt ({REPLAY_EPISODES} episodes)"
    except Exception as err:  # e.g. an env whose extra is not installed here: the report goes on without it
        return None, f"not measured: replaying models.pt failed: {type(err).__name__}: {err}"


def replay(models: dict, episodes: int = REPLAY_EPISODES) -> list[int]:
    """θ̄ greedy on the first `episodes` of the trainer's evaluation episodes (same env seed), in this process."""
    cfg = models["config"]
    n = models["actor_rows"].shape[0]
    evaluator = Evaluator(Collectives(), evalmodes.env_factory(cfg, n), n_agents=n, episodes=episodes,
                          **evalmodes.model_shapes(models))
    return evaluator.run(evalmodes.mean_rows(models), evalmodes.eval_seeds(cfg)[0])["greedy_actions"]


def concentration(counts: list[int] | None) -> tuple[float, float]:
    """(share of the most frequent action, entropy of the action frequencies in nats); NaN without counts."""
    c = np.asarray(counts if counts else [], dtype=float)
    if not c.size or c.sum() <= 0:
        return math.nan, math.nan
    p = c / c.sum()
    nz = p[p > 0]
    return float(p.max()), float(-(nz * np.log(nz)).sum()) + 0.0  # + 0.0: no "-0.0" for a constant policy


def run_columns(run) -> dict:
    counts, source = greedy_counts(run)
    top, entropy = concentration(counts)
    return {"greedy_top_share": top, "greedy_entropy": entropy, "greedy_actions": counts, "greedy_from": source}


def _values(row: dict) -> tuple[float, ...] | None:
    """The numbers two runs must share to tie: eval.json's train and test return, else the last evaluation."""
    both = (row["average_train"], row["average_test"])
    if not any(math.isnan(v) for v in both):
        return both
    return None if math.isnan(row["final_eval_reward"]) else (row["final_eval_reward"],)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=TIE_TOL, abs_tol=TIE_TOL) for x, y in zip(a, b))


def mark(rows: list[dict]) -> None:
    """Fill tied_runs, tied_with and degenerate of one (env, n)'s run rows (after run_columns)."""
    for r in rows:
        mine = _values(r)
        r["tied_with"] = [] if mine is None else [
            o["group"] for o in rows if o is not r and o["group"] != r["group"] and o["seed"] == r["seed"]
            and _values(o) is not None and _same(mine, _values(o))]
        r["tied_runs"] = float(len(r["tied_with"]))
        top = r["greedy_top_share"]
        r["degenerate"] = (1.0 if r["tied_with"] or top >= TOP_SHARE else
                           math.nan if math.isnan(top) else 0.0)


def seeds_identical(rows: list[dict], group: str) -> bool:
    """Every seed of the group scored the same (two seeds or more): the policy ignores what it is shown."""
    values = [_values(r) for r in rows if r["group"] == group]
    return len(values) > 1 and None not in values and all(_same(values[0], v) for v in values[1:])


def group_verdict(group_row: dict) -> bool | None:
    """True: degenerate (at least half its runs flagged); False: every run measured and fewer flagged; None: fewer
    flagged but some runs could not be checked (their concentration unknown, no tie)."""
    count = group_row["degenerate_count"]  # runs measured or tied (0/1 each); the others are NaN
    flagged = round(group_row["degenerate_mean"] * count) if count else 0
    if flagged and flagged >= group_row["seeds"] / 2:
        return True
    return False if count == group_row["seeds"] else None


def why(group_row: dict, rows: list[dict]) -> str:
    """The numbers behind a group's verdict, in a few words."""
    members = [r for r in rows if r["group"] == group_row["group"]]
    flagged = [r for r in members if r["degenerate"] == 1.0]
    tops = [f"{r['greedy_top_share']:.3g}" for r in members if not math.isnan(r["greedy_top_share"])]
    parts = [f"{len(flagged)} of {len(members)} runs degenerate"]
    if tops:
        parts.append(f"greedy top share {', '.join(tops)} (threshold {TOP_SHARE:g})")
    tied = sorted({g for r in members for g in r["tied_with"]})
    if tied:
        parts.append(f"{sum(1 for r in members if r['tied_with'])} tied with {', '.join(tied)} at the same seed")
    if seeds_identical(rows, group_row["group"]):
        parts.append("every seed scored the same")
    return "; ".join(parts)
