"""The one small interface every environment backend implements: B environments stepped at once.

Shapes (B = n_envs, N = n_agents):
    obs    float32 [B, N, obs_dim]   each agent's own observation
    state  float32 [B, state_dim]    the global state the critic sees
    avail  bool    [B, N, n_actions] actions each agent may take now (SMAC masks; all True for MPE)
    reward float32 [B, N]            per-agent reward of the step just taken
    done   bool    [B]               the episode of env b ended with this step (terminated or time limit)

Environments reset themselves: after a step with done[b], the returned obs/state/avail of env b are the
first observation of its next episode (the on-policy MAPPO convention), and `info["episode_return"][b]`
holds the finished episode's return, defined as sum over steps of (mean over agents of the reward).
Optional info keys: "won" bool [B] (SMAC-like envs, meaningful where done).

Agents with different spaces (agent groups): obs_dim and n_actions are the largest; each agent's observation is
zero-padded to obs_dim and its avail is False past its own action count. Such an env says per agent, as tuples,
`agent_obs_dims`, `agent_n_actions` and `agent_groups` (a group name per agent, consecutive agents of one group);
an env without them is one group of one space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class Step:
    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    reward: np.ndarray | None = None  # None right after reset
    done: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


class BatchedEnv(Protocol):
    n_envs: int
    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int

    # Capabilities, set on the class so they can be read before an environment is built.
    splittable: bool  # cheap to build on every rank (no JIT compile, no game launch): evaluation may split
    #                   its episodes over the ranks; otherwise rank 0 plays them all
    has_win: bool  # episodes end in a win or not: info["won"] is set where done, and win rates mean something

    def reset(self, seed: int, first_env: int = 0) -> Step:
        """Start all B environments; env b draws from a generator seeded by (seed, first_env + b), so B envs
        started at first_env play episodes first_env…first_env+B−1 of a larger batch (evaluation split over
        ranks)."""

    def step(self, actions: np.ndarray) -> Step:
        """actions int64 [B, N]; returns the next Step (auto-reset where done)."""

    def get_state(self) -> Any:
        """Picklable snapshot of everything (world state, step counters, random generators) for exact resume."""

    def set_state(self, state: Any) -> None:
        """Restore a get_state() snapshot: stepping on afterwards repeats what the original env did."""


def agent_spaces(env: BatchedEnv) -> list[tuple[int, int]]:
    """Every agent's (observation size, action count): an env with groups says them per agent (agent_obs_dims,
    agent_n_actions); otherwise all agents have the env's."""
    obs = getattr(env, "agent_obs_dims", None) or [env.obs_dim] * env.n_agents
    acts = getattr(env, "agent_n_actions", None) or [env.n_actions] * env.n_agents
    return list(zip(obs, acts))
