"""Play evaluation episodes with given policy rows, spread over the ranks.

`rows` [n, D] holds the flat actor parameters that control agent 0…n−1: the averaged model θ̄ repeated n
times (the paper's headline), each agent's own θᵢ (local models), or one θⱼ for everyone. Episode e is played
from env seed (eval_seed, e) wherever it runs, and with stochastic actions it draws its uniforms from its own
generator seeded by (eval_seed, e) (`episode_generator`), so the numbers do not depend on the number of ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from .comm import Fabric
from .envs.base import BatchedEnv
from .models import RecurrentNet, categorical_sample, flatten_parameters, masked_logits

EVAL_SEED_OFFSET = 1_000_003  # train-env evaluation: seeds disjoint from the training environments' seed
TEST_SEED_OFFSET = 2_000_029  # test-env evaluation: disjoint from both


def episode_generator(seed: int, episode: int) -> torch.Generator:
    """The generator of episode `episode`'s sampled actions: a 64-bit seed hashed from (seed, episode) by
    numpy's SeedSequence, so nearby (seed, episode) pairs give unrelated streams."""
    word = np.random.SeedSequence([seed, episode, 0x5A3]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(word))


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
        # Stochastic play: episode e (env b = e − first) draws its [n, K] uniforms from its own generator.
        gens = [] if deterministic else [episode_generator(seed, e) for e in self.mine]
        u = None
        for _ in range(env.episode_limit):
            obs = torch.from_numpy(np.ascontiguousarray(step.obs.transpose(1, 0, 2)))
            avail = torch.from_numpy(np.ascontiguousarray(step.avail.transpose(1, 0, 2)))
            logits, h = self.net.step(obs, h, reset)
            logits = masked_logits(logits, avail)
            if deterministic:
                actions = logits.argmax(-1)
            else:
                if u is None:
                    u = torch.empty(B, logits.shape[0], logits.shape[2], dtype=logits.dtype)  # [B, n, K]
                for g, row in zip(gens, u):
                    row.uniform_(generator=g)
                actions = categorical_sample(logits, u.transpose(0, 1))
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
