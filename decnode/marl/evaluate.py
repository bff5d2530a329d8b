"""Play evaluation episodes with given policy rows, split over the ranks.

`rows` [n, D] holds the flat actor parameters that control agent 0…n−1: the averaged model θ̄ repeated n
times (the paper's headline), each agent's own θᵢ (local models), or one θⱼ for everyone. Episode e is played
from env seed (eval_seed, e) wherever it runs, and with stochastic actions it draws its uniforms from its own
generator seeded by (eval_seed, e) (`episode_generator`), so the numbers do not depend on the number of ranks.
Episodes are split over the ranks where the environment class says it is `splittable`; otherwise rank 0 plays
them all.

Deterministic play also counts the greedy actions this process chose (`greedy_actions`, one count per action,
over the first episode of each of its envs; an agent's step counts only when it had a choice, i.e. two or more
available actions): how concentrated θ̄'s behaviour is (decnode-report's degeneracy check). It is counted where
the episodes are played and not reduced over ranks (no extra bytes in the all-reduce, so every number and
every simulated time stays as it was): `greedy_episodes` says over how many episodes.
"""

from __future__ import annotations

import numpy as np
import torch

from .acting import SamplePerEpisode, acting_loop, argmax
from ..comm.transport import Collectives
from ..envs import EnvFactory
from ..envs.base import BatchedEnv
from ..nn.grouped import GroupShape, actor_net
from ..timing import Section

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
    def __init__(self, group: Collectives, make_env: EnvFactory, *, n_agents: int, episodes: int, obs_dim: int,
                 n_actions: int, hidden: int, wrap=None, shapes: list[GroupShape] | None = None,
                 width: int | None = None):
        """make_env(n_envs) builds this rank's environments; only rank 0 builds any unless make_env.cls is
        splittable. group: the processes sharing the episodes (a Fabric or plain Collectives). wrap(env) may
        add a test-time perturbation. shapes, width: agent groups over all n agents (nn/grouped.py; None: one)."""
        self.group = group
        self.has_win = make_env.cls.has_win  # whether run()'s win_rate means anything
        split = make_env.cls.splittable
        world, rank = (group.world, group.rank) if split else (1, 0)
        self.mine = share(episodes, world, rank) if (split or group.rank == 0) else range(0)
        self.env: BatchedEnv | None = None
        if len(self.mine):
            self.env = make_env(len(self.mine))
            if wrap is not None:
                self.env = wrap(self.env)
        self.n_actions = n_actions
        self.net, self.params, _ = actor_net(shapes, n_agents, obs_dim, n_actions, hidden, width, out_gain=1.0)
        self.net.requires_grad_(False)

    @torch.no_grad()
    def run(self, rows: torch.Tensor, seed: int, deterministic: bool = True) -> dict[str, float]:
        """Mean episode return (and win rate where the env reports wins) over all ranks' episodes."""
        total = torch.zeros(3, dtype=torch.float64)  # sum of returns, episodes, wins
        greedy = torch.zeros(self.n_actions, dtype=torch.int64) if deterministic else None
        if self.env is not None:
            total += self._play(rows, seed, deterministic, greedy)
        mine = int(total[1].item())
        total = self.group.allreduce_sum(total, name=Section.EVAL)
        count = max(total[1].item(), 1.0)
        out = {"return": total[0].item() / count, "win_rate": total[2].item() / count,
               "episodes": int(total[1].item())}
        if greedy is not None:
            out.update(greedy_actions=greedy.tolist(), greedy_episodes=mine)
        return out

    def _play(self, rows: torch.Tensor, seed: int, deterministic: bool,
              greedy: torch.Tensor | None = None) -> torch.Tensor:
        env, B = self.env, len(self.mine)
        self.params.copy_(rows)
        step = env.reset(seed, first_env=self.mine.start)
        # Stochastic play: episode e (env b = e − first) draws its [n, K] uniforms from its own generator.
        choose = argmax if deterministic else SamplePerEpisode([episode_generator(seed, e) for e in self.mine])
        finished = np.zeros(B, dtype=bool)
        returns, wins = np.zeros(B), np.zeros(B)
        for acted in acting_loop(self.net, choose, self.net.initial_state(B), env.episode_limit, env=env,
                                 step=step, reset=torch.ones(B, dtype=torch.bool)):
            if greedy is not None:  # [N, B] actions of the envs still in their first episode, where agents chose
                chose = torch.from_numpy(~finished).unsqueeze(0) & (acted.avail.sum(-1) > 1)
                greedy += torch.bincount(acted.actions[chose], minlength=len(greedy))
            after = acted.after
            new = after.done & ~finished  # only the first episode of each env counts
            returns[new] = after.info["episode_return"][new]
            if "won" in after.info:
                wins[new] = after.info["won"][new]
            finished |= after.done
            if finished.all():
                break
        return torch.tensor([returns[finished].sum(), finished.sum(), wins[finished].sum()], dtype=torch.float64)
