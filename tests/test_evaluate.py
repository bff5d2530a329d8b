"""Evaluator over real processes: results do not depend on how episodes are split over ranks, also with sampled
actions and the perturbed test env; an env class that is not splittable is played on rank 0 alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decnode.comm.transport import Collectives
from decnode.envs import EnvFactory
from decnode.envs.perturb import PerturbedEnv
from decnode.envs.spread import BatchedSpread
from decnode.marl.evaluate import Evaluator, share
from decnode.nn.models import RecurrentNet, flatten_parameters
from multiproc import run_ranks

N, EPISODES, SEED = 3, 7, 17


class HeavySpread(BatchedSpread):
    splittable = False  # as if it were expensive to start on every rank


def _rows() -> torch.Tensor:
    params, _ = flatten_parameters(RecurrentNet(N, 6 * N, 5, 16), N)
    return torch.randn(params.shape, generator=torch.Generator().manual_seed(0)) * 0.3  # far from argmax-like


def _evaluate(group: Collectives, env_cls=BatchedSpread, perturbed=False, seed=SEED) -> dict:
    wrap = (lambda env: PerturbedEnv(env, np.ones(6 * N), c=0.3, epsilon=0.3, seed=5)) if perturbed else None
    ev = Evaluator(group, EnvFactory(env_cls, {"n_agents": N}), n_agents=N, episodes=EPISODES, obs_dim=6 * N,
                   n_actions=5, hidden=16, wrap=wrap)
    rows = _rows()
    return {det: (ev.run(rows, seed, deterministic=det), ev.mine) for det in (True, False)}


CASES = [(BatchedSpread, False), (BatchedSpread, True), (HeavySpread, False)]


def _worker():
    from decnode.comm.transport import open_collectives
    with open_collectives(timeout_s=60) as group:
        return [_evaluate(group, cls, perturbed) for cls, perturbed in CASES]


@pytest.mark.parametrize("world", [2, 3])  # shares 4+3 and 3+2+2
def test_split_over_ranks_gives_same_returns(world):
    per_rank = run_ranks(_worker, world, timeout=120)
    for case, (cls, perturbed) in enumerate(CASES):
        alone = _evaluate(Collectives(), cls, perturbed)
        for det in (True, False):
            expected = alone[det][0]
            assert expected["episodes"] == EPISODES
            for rank, results in enumerate(per_rank):
                got, mine = results[case][det]
                assert mine == (share(EPISODES, world, rank) if cls.splittable else
                                range(EPISODES) if rank == 0 else range(0))
                assert got["episodes"] == EPISODES
                assert got["return"] == pytest.approx(expected["return"], rel=1e-12, abs=1e-12)


def test_stochastic_draws_depend_on_seed():
    alone = Collectives()
    det, sampled = (_evaluate(alone)[d][0]["return"] for d in (True, False))
    assert sampled == _evaluate(alone)[False][0]["return"]  # same seed, same sampled actions
    assert sampled != det and sampled != _evaluate(alone, seed=SEED + 1)[False][0]["return"]
