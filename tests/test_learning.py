"""PS, DecPG (k=1) and push-sum (on the one-peer exponential graph, with bounded staleness) learn Simple Spread N=3
on real processes within a short CI budget.

The criterion is the training return (the stochastic policies' 32 episodes per iteration), averaged over the
first and the last 10 of 120 iterations (seed 1, lr 0.5 constant, entropy 0.01, batch 800). Measured for PS,
seeds 1-3, with the C++ and the Python GRU kernels (six runs that differ only in float rounding): first 10
−25.5 to −26.5, last 10 −22.7 to −21.0, a gain of 3.0 to 5.5. A policy that does not move (lr 1e-9) gains
nothing, which the control test checks. The deterministic evaluation of the averaged policy is too erratic this
early to test: at iteration 120 it ranged from −27.1 to −19.8 over those six runs (a rounding-level change in
the kernel moved seed 1 from −21.4 to −24.0). The paper's lr of 1e-2 with vanilla SGD needs thousands of iterations.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 120
GAIN = 2.0  # last 10 iterations' mean training return over the first 10's
ARGS = ["--nproc", "3", "--k", "1", "--seed", "1", "--set", "train.entropy_coef=0.01", "--set", "eval.interval=50",
        "--set", "run.tensorboard=false"]
# pytest-timeout's limit for each test (pyproject's, stated here because the run's own limit depends on it), and the
# run's, below it: a run too slow fails saying so, not in pytest-timeout's stack dump. One 120-iteration run took
# 150 s at load average 10 on 2 cores.
TEST_TIMEOUT_S = 600
RUN_TIMEOUT_S = TEST_TIMEOUT_S - 60
pytestmark = pytest.mark.timeout(TEST_TIMEOUT_S)


def train(tmp_path: Path, algo: str, iterations: int, lr: float, *extra: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "decnode.run", "--algo", algo, *ARGS, *extra,
                          "--iterations", str(iterations), "--set", f"train.lr={lr}", "--set", f"train.min_lr={lr}",
                          "--out", str(tmp_path / "r")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]


def gain(lines: list[dict]) -> float:
    returns = [d["train_reward"] for d in lines]
    return sum(returns[-10:]) / 10 - sum(returns[:10]) / 10


def test_a_policy_that_does_not_move_gains_nothing(tmp_path):
    """The control: the criterion below fails when nothing is learnt (20 iterations at lr 1e-9)."""
    assert abs(gain(train(tmp_path, "ps", 20, 1e-9))) < GAIN / 2


@pytest.mark.parametrize("algo", ["ps", "decpg"])
def test_training_return_improves(tmp_path, algo):
    lines = train(tmp_path, algo, ITERATIONS, 0.5)
    assert gain(lines) > GAIN, f"{algo}: training return gained {gain(lines):.2f} over {ITERATIONS} iterations"
    assert all(d["eval_reward"] is not None for d in lines if d["iteration"] % 50 == 0 or d is lines[-1])
    assert torch.load(tmp_path / "r" / "models.pt", weights_only=False)["iteration"] == ITERATIONS


def test_push_sum_with_bounded_staleness_learns(tmp_path):
    """Issue 27: push-sum on exp1peer (at n = 3, round t sends to i+1, then i+2: directed, period 2) with τ = 2 on a
    simulated ethernet where rank 1 computes 4× slower (net.compute=model): its shares reach the others up to two
    rounds late, and the criterion is the synchronous runs'. (Synchronous push-sum equals DecPG where both run:
    tests/test_push_sum.py.)"""
    profile = tmp_path / "slow.yaml"
    profile.write_text("preset: ethernet\nname: ethernet-slow1\nspeed: [1, 4, 1]\ncompute: model\n")
    lines = train(tmp_path, "push_sum", ITERATIONS, 0.5, "--topology", "exp1peer", "--net", str(profile),
                  "--set", "algo.staleness=2")
    assert gain(lines) > GAIN, f"push_sum τ=2: training return gained {gain(lines):.2f} over {ITERATIONS} iterations"
    assert max(d["staleness_max"] for d in lines) == 2 and all(d["staleness_max"] <= 2 for d in lines)
