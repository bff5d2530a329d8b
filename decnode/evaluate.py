"""Play evaluation episodes with given policy rows, spread over the ranks.

`rows` [n, D] holds the flat actor parameters that control agent 0…n−1: the averaged model θ̄ repeated n
times (the paper's headline), each agent's own θᵢ (local models), or one θⱼ for everyone. Episode e is played
from seed (eval_seed, e) wherever it runs, so the numbers do not depend on the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from .comm import Fabric
from .envs.base import BatchedEnv
from .models import RecurrentNet, categorical_sample, flatten_parameters, masked_logits


def share(episodes: int, world: int, rank: int) -> range:
    """Episodes [lo, hi) that `rank` plays when `episodes` are split as evenly as possible."""
    per, extra = divmod(episodes, world)
    lo = rank * per + min(rank, extra)
    return range(lo, lo + per + (1 if rank < extra else 0))


class Evaluator:
    def __init__(self, fabric: Fabric, make_env, *, episodes: int, obs_dim: int, n_actions: int, hidden: int,
                 spread: bool, wrap=None):
        """make_env(n_envs) builds this rank's environments; spread=False plays everything on rank 0
        (for backends too heavy to start on every rank). wrap(env) may add a test-time perturbation."""
        self.fabric = fabric
        world, rank = (fabric.world, fabric.rank) if spread else (1, 0)
        self.mine = share(episodes, world, rank) if (spread or fabric.rank == 0) else range(0)
        self.env: BatchedEnv | None = None
        if len(self.mine):
            self.env = make_env(len(self.mine))
            if wrap is not None:
                self.env = wrap(self.env)
        n = fabric.n_agents
        self.net = RecurrentNet(n, obs_dim, n_actions, hidden)
        self.params, _ = flatten_parameters(self.net, n)
        self.net.requires_grad_(False)

    @torch.no_grad()
    def run(self, rows: torch.Tensor, seed: int, deterministic: bool = True) -> dict[str, float]:
        """Mean episode return (and win rate where the env reports wins) over all ranks' episodes."""
        total = torch.zeros(3, dtype=torch.float64)  # sum of returns, episodes, wins
        if self.env is not None:
            total += self._play(rows, seed, deterministic)
        total = self.fabric.allreduce_sum(total, name="eval")
        count = max(total[1].item(), 1.0)
        return {"return": total[0].item() / count, "win_rate": total[2].item() / count,
                "episodes": int(total[1].item())}

    def _play(self, rows: torch.Tensor, seed: int, deterministic: bool) -> torch.Tensor:
        env, B = self.env, len(self.mine)
        self.params.copy_(rows)
        kwargs = {"first_env": self.mine.start} if self.mine.start else {}
        step = env.reset(seed, **kwargs)
        h = self.net.initial_state(B)
        reset = torch.ones(B, dtype=torch.bool)
        finished = np.zeros(B, dtype=bool)
        returns, wins = np.zeros(B), np.zeros(B)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(env.episode_limit):
            obs = torch.from_numpy(np.ascontiguousarray(step.obs.transpose(1, 0, 2)))
            avail = torch.from_numpy(np.ascontiguousarray(step.avail.transpose(1, 0, 2)))
            logits, h = self.net.step(obs, h, reset)
            logits = masked_logits(logits, avail)
            if deterministic:
                actions = logits.argmax(-1)
            else:
                actions = categorical_sample(logits, torch.rand(logits.shape, generator=gen))
            step = env.step(actions.T.numpy())
            new = step.done & ~finished  # only the first episode of each env counts
            returns[new] = step.info["episode_return"][new]
            if "won" in step.info:
                wins[new] = step.info["won"][new]
            finished |= step.done
            reset = torch.from_numpy(step.done.copy())
            if finished.all():
                break
        return torch.tensor([returns[finished].sum(), finished.sum(), wins[finished].sum()], dtype=torch.float64)
