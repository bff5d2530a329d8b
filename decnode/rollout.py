"""One iteration of acting: rank 0 steps the B environments; every agent acts on its own observations.

Per environment step there is exactly one exchange round, point to point: rank 0 sends each rank one message
holding its agents' observations, available actions and episode-start flags, and receives their actions.
All buffers are allocated once; nothing per step allocates model-sized memory or runs a collective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .actor import ActorBatch, ActorBlock
from .comm import Fabric
from .envs.base import BatchedEnv, Step
from .envs.perturb import RunningStd


@dataclass
class CoordinatorBatch:
    """What rank 0 keeps of a rollout: states [T+1, B, S] (the last one bootstraps), rewards [T, B, n],
    dones [T, B], resets [T+1, B], and the returns / outcomes of episodes that finished."""

    states: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    reset: torch.Tensor
    episode_returns: list = field(default_factory=list)
    episode_wins: list = field(default_factory=list)


class Rollout:
    def __init__(self, fabric: Fabric, actor: ActorBlock, env: BatchedEnv | None, *, T: int, B: int,
                 obs_dim: int, state_dim: int, n_actions: int, hidden: int):
        self.fabric, self.actor, self.env, self.T, self.B = fabric, actor, env, T, B
        self.od, self.K = obs_dim, n_actions
        a, n = fabric.per_process, fabric.n_agents
        width = obs_dim + n_actions + 1  # obs | avail as 0/1 | episode-start flag
        self.local_msg = torch.empty(a, B, width)
        self.local_actions = torch.empty(a, B, dtype=torch.long)
        self.h = torch.zeros(a, B, hidden)
        self.batch = ActorBatch(obs=torch.empty(a, T, B, obs_dim), avail=torch.empty(a, T, B, n_actions, dtype=torch.bool),
                                actions=torch.empty(a, T, B, dtype=torch.long), logp=torch.empty(a, T, B),
                                h_before=torch.empty(a, T, B, hidden), reset=torch.empty(T, B, dtype=torch.bool))
        if fabric.rank == 0:
            self.full_msg = torch.empty(n, B, width)
            self.full_actions = torch.empty(n, B, dtype=torch.long)
            self.coord = CoordinatorBatch(states=torch.empty(T + 1, B, state_dim), rewards=torch.empty(T, B, n),
                                          dones=torch.empty(T, B, dtype=torch.bool),
                                          reset=torch.empty(T + 1, B, dtype=torch.bool))
            self.step_data: Step | None = None
            self.next_reset = np.ones(B, dtype=bool)
            # Per-feature std of the training observations: the scale of the test env's noise (paper 4).
            self.obs_stats = RunningStd(obs_dim)

    def start(self, seed: int) -> None:
        """Reset the environments (rank 0) and every agent's hidden state."""
        self.h.zero_()
        if self.fabric.rank == 0:
            self.step_data = self.env.reset(seed)
            self.next_reset[:] = True

    def _pack(self, step: Step) -> torch.Tensor:
        # Agent-major layout so each rank's slice of the message is one contiguous block.
        msg = self.full_msg
        msg[..., : self.od] = torch.from_numpy(np.ascontiguousarray(step.obs.transpose(1, 0, 2)))
        msg[..., self.od: self.od + self.K] = torch.from_numpy(step.avail.transpose(1, 0, 2))
        msg[..., -1] = torch.from_numpy(self.next_reset).float()
        return msg

    def collect(self) -> tuple[ActorBatch, CoordinatorBatch | None]:
        fabric, rec, batch = self.fabric, self.fabric.recorder, self.batch
        coordinator = fabric.rank == 0
        if coordinator:
            self.coord.episode_returns, self.coord.episode_wins = [], []
        for t in range(self.T):
            if coordinator:
                with rec.section("env"):
                    full = self._pack(self.step_data)
                    self.coord.states[t] = torch.from_numpy(self.step_data.state)
                    self.obs_stats.update(self.step_data.obs)
                    self.coord.reset[t] = torch.from_numpy(self.next_reset)
            msg = fabric.to_agents(full if coordinator else None, self.local_msg)
            with rec.section("act"):
                obs, avail = msg[..., : self.od], msg[..., self.od: self.od + self.K] > 0.5
                reset = msg[0, :, -1] > 0.5
                batch.obs[:, t], batch.avail[:, t], batch.reset[t] = obs, avail, reset
                batch.h_before[:, t] = self.h
                actions, logp, self.h = self.actor.act(obs, avail, reset, self.h)
                batch.actions[:, t], batch.logp[:, t] = actions, logp
            all_actions = fabric.to_coordinator(actions, self.full_actions if coordinator else None)
            if coordinator:
                with rec.section("env"):
                    step = self.env.step(all_actions.T.numpy())
                    self.coord.rewards[t] = torch.from_numpy(step.reward)
                    self.coord.dones[t] = torch.from_numpy(step.done)
                    self.next_reset = step.done.copy()
                    finished = np.flatnonzero(step.done)
                    self.coord.episode_returns += step.info["episode_return"][finished].tolist()
                    if "won" in step.info:
                        self.coord.episode_wins += step.info["won"][finished].tolist()
                    self.step_data = step
        if coordinator:
            self.coord.states[self.T] = torch.from_numpy(self.step_data.state)
            self.coord.reset[self.T] = torch.from_numpy(self.next_reset)
        return batch, (self.coord if coordinator else None)

    def state_dict(self) -> dict:
        """`rows`: each agent's hidden state; `coordinator` (rank 0): the environments, the step in hand, the
        pending episode starts and the observation statistics."""
        coordinator = {}
        if self.fabric.rank == 0:
            coordinator = {"env": self.env.get_state(), "step_data": self.step_data,
                           "next_reset": self.next_reset.copy(), "obs_stats": self.obs_stats.state_dict()}
        return {"rows": {"h": self.h.clone()}, "coordinator": coordinator}

    def load_state_dict(self, state: dict) -> None:
        self.h.copy_(state["rows"]["h"])
        if self.fabric.rank == 0:
            c = state["coordinator"]
            self.env.set_state(c["env"])
            self.step_data, self.next_reset = c["step_data"], c["next_reset"].copy()
            self.obs_stats.load_state_dict(c["obs_stats"])
