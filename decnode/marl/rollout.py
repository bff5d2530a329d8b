"""One iteration of acting: rank 0 steps the B environments; every agent acts on its own observations.

The loop is acting.py's; the rollout adds the exchange with rank 0: per environment step, rank 0 sends each
rank one message holding its agents' observations, available actions and episode-start flags, and receives
their actions (posted point-to-point messages or scatter/gather collectives, as `run.exchange` says).
All buffers are allocated once; nothing per step allocates model-sized memory or runs a collective among all
ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .acting import SamplePerAgent, acting_loop
from .actor import ActorBatch, ActorBlock
from ..comm.api import Fabric
from ..envs.base import BatchedEnv, Step
from ..envs.perturb import RunningStd
from ..nn.models import log_prob
from ..timing import Section


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


class StepExchange:
    """acting.Exchange over the fabric: one message per rank and step (obs | avail as 0/1 | episode-start
    flag), agent-major so each rank's slice is one contiguous block; actions back."""

    def __init__(self, fabric: Fabric, B: int, obs_dim: int, n_actions: int):
        self.fabric, self.od, self.K = fabric, obs_dim, n_actions
        a, n, width = fabric.per_process, fabric.n_agents, obs_dim + n_actions + 1
        self.local_msg = torch.empty(a, B, width)
        self.full_msg = torch.empty(n, B, width) if fabric.rank == 0 else None
        self.full_actions = torch.empty(n, B, dtype=torch.long) if fabric.rank == 0 else None

    def to_agents(self, obs, avail, reset):
        full = self.full_msg
        if full is not None:
            with self.fabric.recorder.section(Section.ENV):
                full[..., : self.od], full[..., self.od: self.od + self.K] = obs, avail
                full[..., -1] = reset.float()
        msg = self.fabric.to_agents(full, self.local_msg)
        return msg[..., : self.od], msg[..., self.od: self.od + self.K] > 0.5, msg[0, :, -1] > 0.5

    def to_coordinator(self, actions: torch.Tensor) -> torch.Tensor | None:
        return self.fabric.to_coordinator(actions, self.full_actions)


class DeviceStep:
    """The agents' recurrent step on the fabric's device (XLA): observations go in and logits and the hidden state
    come back through the host, where the environments and the per-agent samplers live, so the actions drawn are
    the CPU placement's. One sync per environment step: a collective call, every device makes it."""

    def __init__(self, net, fabric: Fabric):
        self.net, self.fabric = net, fabric

    def step(self, obs: torch.Tensor, h: torch.Tensor, reset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.fabric.device
        logits, h = self.net.step(obs.to(d), h.to(d), reset.to(d))
        self.fabric.sync()
        return logits.cpu(), h.cpu()


class Rollout:
    def __init__(self, fabric: Fabric, actor: ActorBlock, env: BatchedEnv | None, *, T: int, B: int,
                 obs_dim: int, state_dim: int, n_actions: int, hidden: int):
        self.fabric, self.actor, self.env, self.T, self.B = fabric, actor, env, T, B
        a, n = fabric.per_process, fabric.n_agents
        self.exchange = StepExchange(fabric, B, obs_dim, n_actions)
        self.sample = SamplePerAgent(actor.samplers)  # the actor's generators: checkpointed with it
        self.h = torch.zeros(a, B, hidden)
        self.batch = ActorBatch(obs=torch.empty(a, T, B, obs_dim), avail=torch.empty(a, T, B, n_actions, dtype=torch.bool),
                                actions=torch.empty(a, T, B, dtype=torch.long), logp=torch.empty(a, T, B),
                                h_before=torch.empty(a, T, B, hidden), reset=torch.empty(T, B, dtype=torch.bool))
        if fabric.rank == 0:
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

    def collect(self) -> tuple[ActorBatch, CoordinatorBatch | None]:
        rec, batch = self.fabric.recorder, self.batch
        coord = self.coord if self.fabric.rank == 0 else None
        envs = {}
        if coord is not None:
            coord.episode_returns, coord.episode_wins = [], []
            envs = dict(env=self.env, step=self.step_data, reset=torch.from_numpy(self.next_reset))
        net = self.actor.net if self.fabric.device.type == "cpu" else DeviceStep(self.actor.net, self.fabric)
        for acted in acting_loop(net, self.sample, self.h, self.T, exchange=self.exchange,
                                 section=rec.section, **envs):
            t = acted.t
            with rec.section(Section.ACT):
                batch.obs[:, t], batch.avail[:, t], batch.reset[t] = acted.obs, acted.avail, acted.reset
                batch.h_before[:, t], batch.actions[:, t] = acted.h_before, acted.actions
                batch.logp[:, t] = log_prob(acted.logits, acted.actions)
            self.h = acted.h
            if coord is not None:
                with rec.section(Section.ENV):
                    before, after = acted.before, acted.after
                    coord.states[t], coord.reset[t] = torch.from_numpy(before.state), acted.reset
                    self.obs_stats.update(before.obs)
                    coord.rewards[t], coord.dones[t] = torch.from_numpy(after.reward), torch.from_numpy(after.done)
                    finished = np.flatnonzero(after.done)
                    coord.episode_returns += after.info["episode_return"][finished].tolist()
                    if "won" in after.info:
                        coord.episode_wins += after.info["won"][finished].tolist()
                    self.step_data, self.next_reset = after, after.done.copy()
        if coord is not None:
            coord.states[self.T] = torch.from_numpy(self.step_data.state)
            coord.reset[self.T] = torch.from_numpy(self.next_reset)
        return batch, coord

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
