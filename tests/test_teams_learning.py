"""Speaker–listener (mpe2, two agents with different spaces, each a group of its own) learns through the PettingZoo
adapter on real processes, checked as Simple Spread is in test_learning.py, plus its evaluated return.

Measured here (2-core AMD EPYC), 2 processes, PS per group, lr 0.5 constant, entropy 0.01, B = 32, T = 25: the
training return over the first 10 iterations was −37.3 / −34.2 / −39.1 (seeds 1–3); over iterations 31–40 it had
gained 16.7 / 14.1 / 15.5 (over 51–60: 18.0 / 15.1 / 20.1). The deterministic evaluation of θ̄ after 40 iterations gave
−18.5 / −18.8 / −16.3 (after 60: −19.5 / −21.0 / −12.0), against −80.2 for the untrained policy (the control below: lr 1e-9, whose greedy speaker and listener keep
one heading). The control's training return moved by 1.5 over 20 iterations (its episodes' noise). DecPG with k = 0
trains these singleton groups bit for bit as PS does (tests/test_teams.py), so one algorithm is checked here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GAIN = 8.0  # last 10 iterations' mean training return over the first 10's
EVAL_GAIN = 20.0  # the trained θ̄'s evaluated return over the untrained one's
ARGS = ["--nproc", "2", "--algo", "ps", "--seed", "1", "--set", "env.name=pettingzoo:mpe2.simple_speaker_listener_v4:"
        "parallel_env", "--set", "train.entropy_coef=0.01", "--set", "run.tensorboard=false",
        "--set", "eval.test_episodes=32"]
TEST_TIMEOUT_S = 600  # pyproject's limit; the run's own is below it, so a slow run fails saying so
RUN_TIMEOUT_S = TEST_TIMEOUT_S - 60
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def train(out: Path, iterations: int, lr: float) -> tuple[list[float], float]:
    res = subprocess.run([sys.executable, "-m", "decnode.run", *ARGS, "--iterations", str(iterations),
                          "--set", f"eval.interval={iterations}", "--set", f"train.lr={lr}",
                          "--set", f"train.min_lr={lr}", "--out", str(out)],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    returns = [d["train_reward"] for d in lines]
    return returns, lines[-1]["eval_reward"]


def gain(returns: list[float]) -> float:
    return sum(returns[-10:]) / 10 - sum(returns[:10]) / 10


def test_speaker_listener_learns_through_the_adapter(tmp_path):
    still, untrained = train(tmp_path / "control", 20, 1e-9)
    assert abs(gain(still)) < GAIN / 2, f"the control (lr 1e-9) moved by {gain(still):.2f}"
    returns, trained = train(tmp_path / "learn", 40, 0.5)
    assert gain(returns) > GAIN, f"training return gained {gain(returns):.2f} over 40 iterations"
    assert trained > untrained + EVAL_GAIN, f"evaluated return {trained:.2f} vs untrained {untrained:.2f}"
