"""Evaluator: results do not depend on how episodes are split over ranks, also with sampled actions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decnode.envs.perturb import PerturbedEnv
from decnode.envs.spread import BatchedSpread
from decnode.evaluate import Evaluator, share

N, EPISODES = 3, 7


class FakeFabric:
    """What Evaluator uses of a fabric; allreduce_sum is the identity (we add the ranks' sums by hand)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.n_agents = rank, world, N

    def allreduce_sum(self, x, name="allreduce"):
        return x


def _evaluators(world: int, wrap=None) -> list[Evaluator]:
    return [Evaluator(FakeFabric(r, world), lambda b: BatchedSpread(b, N), episodes=EPISODES, obs_dim=6 * N,
                      n_actions=5, hidden=16, spread=True, wrap=wrap) for r in range(world)]


@pytest.fixture(scope="module")
def rows():
    torch.manual_seed(0)
    params = _evaluators(1)[0].params
    return torch.randn_like(params) * 0.3  # a policy far from argmax-deterministic


def _total(world: int, rows, seed: int, deterministic: bool, wrap=None) -> torch.Tensor:
    evs = _evaluators(world, wrap)
    assert [ev.mine for ev in evs] == [share(EPISODES, world, r) for r in range(world)]
    return sum(ev._play(rows, seed, deterministic) for ev in evs)


@pytest.mark.parametrize("perturbed", [False, True])
@pytest.mark.parametrize("deterministic", [True, False])
def test_split_over_ranks_gives_same_returns(rows, deterministic, perturbed):
    wrap = (lambda env: PerturbedEnv(env, np.ones(6 * N), c=0.3, epsilon=0.3, seed=5)) if perturbed else None
    one = _total(1, rows, 17, deterministic, wrap)
    assert one[1] == EPISODES
    for world in (2, 3):  # shares 4+3 and 3+2+2
        split = _total(world, rows, 17, deterministic, wrap)
        assert split[1] == EPISODES
        assert split[0].item() == pytest.approx(one[0].item(), rel=1e-12, abs=1e-12)


def test_stochastic_draws_depend_on_seed(rows):
    det = _total(1, rows, 17, True)[0].item()
    a, b = _total(1, rows, 17, False)[0].item(), _total(1, rows, 18, False)[0].item()
    assert a == _total(1, rows, 17, False)[0].item()  # same seed, same sampled actions
    assert a != det and a != b
