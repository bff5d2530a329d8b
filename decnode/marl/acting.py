"""The acting loop that training rollouts, evaluation and the landscape's loss batch share.

Each step: the env's [B, N, ...] observations and action masks turned agent-major [N, B, ...] → one recurrent
step of every agent's net → unavailable actions masked → an action per agent (sampled, or argmax) → env.step.
Where the agents live in other processes than the environments (training), an exchange carries observations
to them and actions back; everywhere else there is none. The randomness is the caller's and never depends on
how agents or episodes are placed on processes: a generator per agent (training, the landscape batch) or per
episode (evaluation).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from ..envs.base import BatchedEnv, Step
from ..nn.models import RecurrentNet, categorical_sample, masked_logits
from ..timing import Section


def agent_major(x: np.ndarray) -> torch.Tensor:
    """[B, N, ...] as the env returns it -> [N, B, ...], one row per agent."""
    return torch.from_numpy(np.ascontiguousarray(x.swapaxes(0, 1)))


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Deterministic actions [N, B] from masked logits [N, B, K]."""
    return logits.argmax(-1)


class SamplePerAgent:
    """Sampled actions; agent row i draws its [B, K] uniforms from generators[i], whichever process holds it."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators
        self._uniforms = torch.empty(0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._uniforms.shape != logits.shape:
            self._uniforms = torch.empty_like(logits)
        for row, gen in zip(self._uniforms, self.generators):
            row.uniform_(generator=gen)
        return categorical_sample(logits, self._uniforms)


class SamplePerEpisode:
    """Sampled actions; env b draws its [N, K] uniforms from generators[b] (its episode's), so the draws do not
    depend on how episodes are split over ranks."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators
        self._uniforms = torch.empty(0)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._uniforms.shape != logits.shape:
            self._uniforms = torch.empty(logits.shape[1], logits.shape[0], logits.shape[2], dtype=logits.dtype)
        for row, gen in zip(self._uniforms, self.generators):
            row.uniform_(generator=gen)
        return categorical_sample(logits, self._uniforms.transpose(0, 1))


class Exchange(Protocol):
    """Between the process that steps the environments and the processes holding the agents."""

    def to_agents(self, obs: torch.Tensor | None, avail: torch.Tensor | None, reset: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All agents' obs [N, B, od], avail [N, B, K] and episode starts [B] (None where no env lives) ->
        this process's agents' share."""

    def to_coordinator(self, actions: torch.Tensor) -> torch.Tensor | None:
        """This process's agents' actions [a, B] -> all agents' [N, B] where the envs live, else None."""


@dataclass
class Acted:
    """One step as the caller may record it. obs, avail, reset, h_before, actions and logits are this process's
    agents' (agent-major); `before` is the Step acted on and `after` the env's answer (None without an env)."""

    t: int
    obs: torch.Tensor
    avail: torch.Tensor
    reset: torch.Tensor
    h_before: torch.Tensor
    h: torch.Tensor
    actions: torch.Tensor
    logits: torch.Tensor
    before: Step | None
    after: Step | None


def acting_loop(net: RecurrentNet, choose: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor, steps: int,
                *, env: BatchedEnv | None = None, step: Step | None = None, reset: torch.Tensor | None = None,
                exchange: Exchange | None = None, section=None) -> Iterator[Acted]:
    """Yields each of `steps` steps after the env took it (the caller may stop early).

    net, h: the agents' nets and hidden state [a, B, H]; choose(masked logits) -> actions.
    env, step, reset: the environments, the Step to act on first and its episode-start flags [B] bool (where
    the environments live; None on processes that only act). exchange: see Exchange (None: agents are here).
    section(name): a context booking time under Section.ENV / Section.ACT (None: not timed).
    """
    section = section or (lambda name: nullcontext())
    obs = avail = None
    for t in range(steps):
        if env is not None:
            with section(Section.ENV):
                obs, avail = agent_major(step.obs), agent_major(step.avail)
        if exchange is not None:
            obs, avail, reset = exchange.to_agents(obs, avail, reset)
        acted_on = reset
        with section(Section.ACT), torch.no_grad():
            logits, h_next = net.step(obs, h, reset)
            logits = masked_logits(logits, avail)
            actions = choose(logits)
        all_actions = exchange.to_coordinator(actions) if exchange is not None else actions
        before = after = None
        if env is not None:
            with section(Section.ENV):
                before, after = step, env.step(all_actions.T.numpy())
            step, reset = after, torch.from_numpy(after.done.copy())
        yield Acted(t, obs, avail, acted_on, h, h_next, actions, logits, before, after)
        h = h_next
