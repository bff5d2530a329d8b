"""A short learning check on SMAC 5m_vs_6m (SMAX backend) through the real entry point.

Measured here (DecPG k=2, all 5 agents in one process — layouts are equivalent, see test_training — B=16, T=50,
lr 0.5 constant, clip 0.2): the training episodes' mean return rises from ≈1.55 (first 5 iterations) to a best
5-iteration mean of 3.2–3.8 within 50 iterations (seven runs: seeds 1-3, the C++ and the Python GRU kernel, one
and two threads, which differ only in float rounding). At this lr the trajectory can fall back afterwards: seed 1
with the C++ kernel peaked at 3.2 by iteration 25 and ended its last 5 at 2.0-2.4, the other six at 3.4-3.8. So
the bar is the best 5-iteration mean > 1.8 × the first 5, plus the final deterministic evaluation of the averaged
policy above θ₀'s (1.6; 3.1–6.8 after 50). Table 2's settings (lr 0.1 → 0.01, clip 0.05) learn the same way,
only more slowly than a CI budget allows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 50
# pytest-timeout's limit (pyproject's, stated here because the run's own limit depends on it), and the run's, below it
# with room for the untrained evaluation after it: a run too slow fails saying so, not in pytest-timeout's stack
# dump. The whole test took 176 s at load average 7-10 on 2 cores.
TEST_TIMEOUT_S = 600
RUN_TIMEOUT_S = TEST_TIMEOUT_S - 60


def untrained_eval(seed: int = 1) -> float:
    from decnode.marl.actor import ActorBlock
    from decnode.comm.transport import Collectives
    from decnode.envs import env_factory
    from decnode.marl.evaluate import EVAL_SEED_OFFSET, Evaluator

    make = env_factory("smax:5m_vs_6m", 5)
    env = make(1)
    actor = ActorBlock(range(5), env.obs_dim, env.n_actions, 64, seed)
    evaluator = Evaluator(Collectives(), make, n_agents=5, episodes=32, obs_dim=env.obs_dim,
                          n_actions=env.n_actions, hidden=64)
    return evaluator.run(actor.params, seed + EVAL_SEED_OFFSET)["return"]


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_5m_vs_6m_learns(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "decnode.run", "--nproc", "1", "--agents-per-process", "5", "--config",
           "configs/smac_5m_vs_6m.yaml", "--iterations", str(ITERATIONS), "--out", str(out), "--set", "eval.interval=25",
           "--set", "eval.test_episodes=32", "--set", "run.tensorboard=false", "--set", "train.lr=0.5",
           "--set", "train.min_lr=0.5", "--set", "train.clip=0.2", "--set", "env.n_envs=16",
           "--set", "env.episode_length=50"]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    returns = [d["train_reward"] for d in lines]
    first = sum(returns[:5]) / 5
    best = max(sum(returns[i : i + 5]) / 5 for i in range(len(returns) - 4))
    assert best > 1.8 * first, (first, best)
    assert all(0 <= d["train_reward"] <= 20 for d in lines)  # SMAC's reward scale: at most 20 per episode
    assert lines[-1]["eval_reward"] > untrained_eval() + 0.2
    assert "train_win_rate" in lines[-1] and "eval_win_rate" in lines[-1]
    generalisation = json.loads((out / "eval.json").read_text())["modes"]["average"]
    assert generalisation["test"]["episodes"] == 32
