"""A short learning check on SMAC 5m_vs_6m (SMAX backend) through the real entry point.

Measured here (seed 1, DecPG k=2, all 5 agents in one process — layouts are equivalent, see test_training —
B=16, T=50, lr 0.5 constant, clip 0.2): the training episodes' mean return rises from ≈1.55 (first 5 iterations)
to 3.1–3.4 (last 5, of 20) in 50 iterations, and the averaged policy's deterministic evaluation from 1.6 (θ₀) to
3.1–6.8. The ranges are 1 and 2 intra-op threads: at lr 0.5 float rounding alone moves the trajectory, so the
bar (last > 1.8 × first) leaves a margin either way. Table 2's settings (lr 0.1 → 0.01, clip 0.05) learn the same
way, only more slowly than a CI budget allows.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 50


def untrained_eval(seed: int = 1) -> float:
    from decnode.actor import ActorBlock
    from decnode.collectives import Collectives
    from decnode.envs import env_factory
    from decnode.evaluate import EVAL_SEED_OFFSET, Evaluator

    make = env_factory("smax:5m_vs_6m", 5)
    env = make(1)
    actor = ActorBlock(range(5), env.obs_dim, env.n_actions, 64, seed)
    evaluator = Evaluator(Collectives(), make, n_agents=5, episodes=32, obs_dim=env.obs_dim,
                          n_actions=env.n_actions, hidden=64)
    return evaluator.run(actor.params, seed + EVAL_SEED_OFFSET)["return"]


def test_5m_vs_6m_learns(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "decnode.run", "--nproc", "1", "--agents-per-process", "5", "--config",
           "configs/smac_5m_vs_6m.yaml", "--iterations", str(ITERATIONS), "--out", str(out), "--set", "eval.interval=25",
           "--set", "eval.test_episodes=32", "--set", "run.tensorboard=false", "--set", "train.lr=0.5",
           "--set", "train.min_lr=0.5", "--set", "train.clip=0.2", "--set", "env.n_envs=16",
           "--set", "env.episode_length=50"]
    res = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = sum(d["train_reward"] for d in lines[:5]) / 5
    last = sum(d["train_reward"] for d in lines[-5:]) / 5
    assert last > 1.8 * first, (first, last)
    assert all(0 <= d["train_reward"] <= 20 for d in lines)  # SMAC's reward scale: at most 20 per episode
    assert lines[-1]["eval_reward"] > untrained_eval() + 0.2
    assert "train_win_rate" in lines[-1] and "eval_win_rate" in lines[-1]
    generalisation = json.loads((out / "eval.json").read_text())["modes"]["average"]
    assert generalisation["test"]["episodes"] == 32
