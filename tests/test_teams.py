"""Heterogeneous teams through the real entry point, over real processes (issue 29): mpe2's speaker–listener (two
agents with different spaces) through the PettingZoo adapter, and SMAX 3s5z with its unit types as groups."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decnode.marl.actor import ActorBlock
from decnode.nn.grouped import GroupShape, width
from decnode.tools import plots
from decnode.tools.report import command as report_command
from decnode.topology import build_graph

ROOT = Path(__file__).resolve().parent.parent
SPEAKER_LISTENER = ["--set", "env.name=pettingzoo:mpe2.simple_speaker_listener_v4:parallel_env"]
SMALL = ["--set", "env.n_envs=4", "--set", "env.episode_length=10", "--set", "eval.interval=0", "--set",
         "eval.episodes=4", "--set", "eval.test_episodes=4", "--set", "run.tensorboard=false", "--set", "train.lr=0.5",
         "--no-preflight"]


def run(out: Path, *args: str, timeout: int = 300) -> dict:
    res = subprocess.run([sys.executable, "-m", "decnode.run", "--out", str(out), *SMALL, *args], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evaluated = out / "eval.json"  # (a run stopped before its end has none)
    return {"models": torch.load(out / "models.pt", weights_only=False), "lines": lines,
            "eval": json.loads(evaluated.read_text()) if evaluated.exists() else None}


def test_speaker_listener_trains_per_group_under_ps_and_decpg_alike(tmp_path):
    """Each agent is a group of its own (speaker: observation 3, 3 actions; listener: 11, 5): PS shares a network
    within each group of one, DecPG with k = 0 gossips with nobody, so both are independent learners and their
    parameters agree bit for bit; the listener's wider row leaves the speaker's tail columns zero."""
    ps = run(tmp_path / "ps", "--nproc", "2", "--iterations", "3", "--algo", "ps", *SPEAKER_LISTENER)
    decpg = run(tmp_path / "decpg", "--nproc", "2", "--iterations", "3", "--algo", "decpg", "--k", "0",
                *SPEAKER_LISTENER)
    models = ps["models"]
    assert models["groups"] == [{"name": "speaker", "agents": [0, 1], "obs_dim": 3, "n_actions": 3},
                                {"name": "listener", "agents": [1, 2], "obs_dim": 11, "n_actions": 5}]
    rows = models["actor_rows"]
    assert rows.shape == (2, width(11, 5, 64)) and not rows[0, width(3, 3, 64):].any()
    assert torch.equal(rows, decpg["models"]["actor_rows"])
    start = ActorBlock(range(2), 11, 5, 64, seed=1, shapes=[GroupShape(0, slice(0, 1), 3, 3),
                                                           GroupShape(1, slice(1, 2), 11, 5)], width=rows.shape[1])
    assert start.params.shape == rows.shape and not torch.equal(rows[0], start.params[0])  # trained from θ₀
    assert not torch.equal(rows[1], start.params[1])
    last = ps["lines"][-1]
    assert set(last["groups"]) == {"speaker", "listener"} and last["consensus_distance"] == 0.0
    row = report_command.run_row(plots.load_run(tmp_path / "ps"), tmp_path, "PS")  # decnode-report's runs.csv row
    assert row["agent_groups"] == "speaker;listener" and json.loads(row["agent_group_noise_final"]) == last["groups"]
    # a speaker chooses among 3 actions, a listener among 5: the mean entropy starts near (ln 3 + ln 5) / 2
    assert abs(ps["lines"][0]["entropy"] - (1.0986 + 1.6094) / 2) < 0.05
    assert all(abs(ps["eval"]["modes"]["average"][split]["return"]) < 1e4 for split in ("train", "test"))


def test_speaker_listener_resumes_exactly(tmp_path):
    """The adapter's checkpointed episodes (each copy's seed and the actions since) resume bit for bit."""
    common = ["--nproc", "2", "--iterations", "4", "--algo", "decpg", "--k", "0", "--set", "env.episode_length=7",
              *SPEAKER_LISTENER]
    whole = run(tmp_path / "whole", *common)
    stopped = tmp_path / "stopped"
    run(stopped, *common, "--set", "run.stop_after=2")
    res = subprocess.run([sys.executable, "-m", "decnode.run", "--resume", str(stopped)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = torch.load(stopped / "models.pt", weights_only=False)
    assert torch.equal(resumed["actor_rows"], whole["models"]["actor_rows"])


@pytest.mark.parametrize("algo", ["ps", "decpg"])
def test_smax_3s5z_trains_with_unit_types_as_groups(tmp_path, algo):
    """3 stalkers and 5 zealots on two processes (rank 0 holds three stalkers and a zealot): PS shares one network
    per unit type; DecPG gossips on a kNN ring (k = 2) within each type."""
    out = run(tmp_path / algo, "--nproc", "2", "--iterations", "2", "--algo", algo, "--k", "2",
              "--set", "env.name=smax:3s5z", "--set", "env.episode_length=20", timeout=400)
    models, last = out["models"], out["lines"][-1]
    assert [(g["name"], g["agents"]) for g in models["groups"]] == [("stalker", [0, 3]), ("zealot", [3, 8])]
    rows = models["actor_rows"]
    assert torch.isfinite(rows).all() and set(last["groups"]) == {"stalker", "zealot"}
    if algo == "ps":
        assert all(torch.equal(rows[i], rows[0]) for i in range(3)) and all(torch.equal(rows[i], rows[3])
                                                                            for i in range(3, 8))
        assert not torch.equal(rows[0], rows[3])
    else:
        gaps = [build_graph("knn", size, k=2).gaps()[0] for size in (3, 5)]
        assert last["spectral_gap"] == pytest.approx(min(gaps)) and last["consensus_distance"] > 0
        assert not torch.equal(rows[0], rows[1])
    assert 0 <= out["eval"]["modes"]["average"]["train"]["return"] <= 20  # SMAC's reward scale


PZ = "env.name=pettingzoo:mpe2.simple_speaker_listener_v4"


@pytest.mark.parametrize("sets, needle", [
    ([f"{PZ}:parallel_env", "algo.groups=all", "algo.k=1"],
     "one group (algo.groups=all) holds agents with different spaces (agent 0: observation 3, 3 actions; agent 1: "
     "observation 11, 5 actions)"),
    ([PZ], "expected pettingzoo:<module>:<factory>"),
    ([f"{PZ}:env"], "builds an AEC env"),
    (["env.name=pettingzoo:no_such_module:parallel_env"], "cannot import module 'no_such_module'"),
    (["env.kwargs={N: 3}", "algo.k=1"], "env.kwargs is for a pettingzoo:<module>:<factory> environment"),
    (["env.name=pettingzoo:mpe2.simple_spread_v3:parallel_env", "env.kwargs={M: 3}"],
     "env.kwargs of pettingzoo:mpe2.simple_spread_v3:parallel_env"),
    (["env.name=smax:3s5z", "algo.k=3"], "group 'stalker' of 3: algo.k must be in [0, 2] for n=3 agents"),
    (["env.n_agents=4", "algo.k=1", "algo.groups={a: [0, 2], b: [1, 3]}"],
     "algo.groups.a must be consecutive agent ids, got [0, 2]"),
])
def test_what_groups_and_the_adapter_refuse_is_one_line_at_config_time(sets, needle):
    from decnode import config

    with pytest.raises(config.ConfigError) as err:
        config.resolve(config.load(None, sets), 2)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_decnode_run_refuses_before_anything_starts(tmp_path):
    """The same refusal through the command: one line, exit 2, no run directory."""
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "decnode.run", "--nproc", "2", "--iterations", "1", "--out", str(out),
                          "--set", f"{PZ}:parallel_env", "--set", "algo.groups=all", "--k", "1"], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("decnode-run: error: ") and "holds agents with different spaces" in lines[0]
    assert not out.exists()
