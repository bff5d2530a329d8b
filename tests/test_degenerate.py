"""decnode-report's degeneracy check (issue 28) on real tiny runs: the trainer's evaluation counts θ̄'s greedy
actions; a run without them is replayed from models.pt; and a claim compared on a constant greedy policy is
"untestable at this budget", while the same sweep with policies that look at their observations gets a verdict."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from decnode.job.checkpoint import atomic_save
from decnode.tools import evalmodes
from decnode.tools.report import command as report, degenerate, text as report_text

CELLS = {"ps": ("ps", 1), "decpg-k1": ("decpg", 1), "decpg-k2": ("decpg", 2)}  # seed 1 each: runs can tie
EPISODES, STEPS, N = 4, 25, 3


def _train(out: Path, algo: str, k: int) -> None:
    from decnode.job.run import main
    main(["--nproc", "1", "--algo", algo, "--k", str(k), "--iterations", "3", "--seed", "1", "--out", str(out),
          "--set", "env.n_agents=3", "--set", "env.n_envs=4", "--set", "eval.interval=1",
          "--set", f"eval.episodes={EPISODES}", "--set", "eval.test_episodes=4", "--set", "run.tensorboard=false"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("degenerate")
    for name, (algo, k) in CELLS.items():
        _train(root / "cells" / name, algo, k)
    return root


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _claims(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("1. Paper", "2. Paper", "3. Paper"))]


def _verdict(line: str) -> str:
    return next(v for v in (report_text.UNTESTABLE, report_text.NOT_HELD, report_text.NO_DATA, report_text.HELD)
                if f"**{v}**" in line)


def test_the_trainers_evaluation_counts_greedy_actions(sweep):
    """eval.json's greedy counts cover every choice of every agent in every train episode, and replaying models.pt
    on the same episodes (the report's fallback) counts the same actions."""
    for name in CELLS:
        run = sweep / "cells" / name
        train = json.loads((run / "eval.json").read_text())["modes"]["average"]["train"]
        assert train["greedy_episodes"] == EPISODES
        assert sum(train["greedy_actions"]) == EPISODES * STEPS * N  # Simple Spread: every action always available
        assert degenerate.replay(evalmodes.load_models(run), EPISODES) == train["greedy_actions"], name


def _craft(run: Path, rng: np.random.Generator | None) -> None:
    """Replace the run's models by a crafted θ̄ (every agent's row the same) and evaluate them with decnode-eval,
    whose eval.json has the returns and no greedy counts: the report must replay models.pt. rng None: a constant
    policy (the out layer's bias favours action 0, its weights are zero); else random out-layer weights of gain
    ~1, so the greedy action depends on what the agent observes."""
    models = evalmodes.load_models(run)
    K, hidden = models["n_actions"], models["config"]["train"]["hidden"]
    mean = models["actor_mean"].clone()
    out_w = slice(len(mean) - K - hidden * K, len(mean) - K)  # out.weight [hidden, K], then out.bias [K]
    if rng is None:
        mean[out_w] = 0.0
        mean[-K:] = torch.tensor([10.0] + [0.0] * (K - 1))
    else:
        mean[out_w] = torch.from_numpy(rng.standard_normal(hidden * K)).float()
    models["actor_mean"], models["actor_rows"] = mean, mean.expand(N, -1).clone()
    atomic_save(models, run / "models.pt")
    evalmodes.main([str(run), "--mode", "average"])


@pytest.mark.parametrize("constant", [True, False], ids=["constant", "observing"])
def test_claims_on_a_constant_policy_are_untestable(sweep, tmp_path, constant, capsys):
    root = tmp_path / "sweep"
    shutil.copytree(sweep / "cells", root / "cells")
    for i, name in enumerate(CELLS):
        _craft(root / "cells" / name, None if constant else np.random.default_rng(i))
    report.main([str(root), "--out", str(tmp_path / "report")])
    capsys.readouterr()
    rows, groups = _csv(tmp_path / "report" / "runs.csv"), _csv(tmp_path / "report" / "groups.csv")
    assert {r["greedy_from"] for r in rows} == {f"models.pt ({degenerate.REPLAY_EPISODES} episodes)"}
    tops = [float(r["greedy_top_share"]) for r in rows]
    text = (tmp_path / "report" / "results.md").read_text()
    verdicts = [_verdict(line) for line in _claims(text)]
    if constant:
        assert tops == [1.0] * 3 and all(float(r["greedy_entropy"]) == 0.0 for r in rows)
        # the constant policy scores the same in every group (same seed, same episodes): each ties with the others
        assert all(float(r["tied_runs"]) == 2 for r in rows)
        assert all(float(g["degenerate_mean"]) == 1.0 for g in groups)
        assert verdicts[0] == verdicts[2] == report_text.UNTESTABLE
        assert "greedy top share 1 (threshold 0.95)" in _claims(text)[2]
        assert verdicts[1] in (report_text.HELD, report_text.NOT_HELD)  # gradient noise: the graph's, still tested
        assert text.count("| **degenerate** |") == 3
    else:
        assert max(tops) < degenerate.TOP_SHARE and all(float(r["tied_runs"]) == 0 for r in rows)
        assert all(float(g["degenerate_mean"]) == 0.0 for g in groups)
        assert report_text.UNTESTABLE not in text and text.count("| not degenerate |") == 3
        assert all(v in (report_text.HELD, report_text.NOT_HELD) for v in verdicts)


@pytest.mark.parametrize("constant", [True, False], ids=["constant", "observing"])
def test_without_counts_or_models_only_ties_decide(sweep, tmp_path, constant, capsys):
    """Runs from before the counts whose models.pt is gone (the committed sweeps): concentration not measured, said
    so; ties between groups at the same seed still flag a constant policy; otherwise the groups are not checked."""
    root = tmp_path / "sweep"
    shutil.copytree(sweep / "cells", root / "cells")
    for i, name in enumerate(CELLS):
        _craft(root / "cells" / name, None if constant else np.random.default_rng(i))
        (root / "cells" / name / "models.pt").unlink()
    report.main([str(root), "--out", str(tmp_path / "report")])
    capsys.readouterr()
    rows = _csv(tmp_path / "report" / "runs.csv")
    assert {(r["greedy_from"], r["greedy_top_share"]) for r in rows} == {(degenerate.NO_COUNTS, "")}
    text = (tmp_path / "report" / "results.md").read_text()
    assert "(0 of 1 measured)" in text and f"Greedy actions from: 3 runs {degenerate.NO_COUNTS}." in text
    verdicts = [_verdict(line) for line in _claims(text)]
    if constant:
        assert text.count("| **degenerate** |") == 3 and verdicts[0] == verdicts[2] == report_text.UNTESTABLE
        assert "1 tied with DecPG k=1, DecPG k=2 at the same seed" in _claims(text)[0]
    else:
        assert text.count("| not checked |") == 3 and report_text.UNTESTABLE not in text
