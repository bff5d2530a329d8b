"""A job's agent groups with their spaces: what the trainer, the evaluator and models.pt need to build each group's
network, agreed by every rank.

The groups come from the config (extensions.env_groups: algo.groups over the env's own); the spaces from the
environment, which only rank 0 builds: the trainer broadcasts every agent's (observation size, action count) with
the env's sizes, and every rank checks them alike — a group whose agents' spaces differ is the same one-line error
on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..groups import AgentGroups, group_spaces
from ..nn.grouped import GroupShape, width as actor_width


@dataclass(frozen=True)
class Teams:
    """groups: the job's agent groups; obs_dims / n_actions: each group's spaces; width: the job's row width D.
    `grouped` is False for one group of one space — the plain actor, exactly as before groups existed."""

    groups: AgentGroups
    obs_dims: tuple[int, ...]
    n_actions: tuple[int, ...]
    width: int

    @property
    def grouped(self) -> bool:
        return not self.groups.single

    def shapes(self, rows: range) -> list[GroupShape] | None:
        """The groups a block of agents meets (None: not grouped)."""
        if not self.grouped:
            return None
        return [GroupShape(g, part, self.obs_dims[g], self.n_actions[g]) for g, part in self.groups.local(rows)]

    def record(self) -> list[dict]:
        """What models.pt and the run records keep: each group's name, agents and spaces."""
        return [{"name": g.name, "agents": [g.agents.start, g.agents.stop], "obs_dim": od, "n_actions": k}
                for g, od, k in zip(self.groups.groups, self.obs_dims, self.n_actions)]


def make_teams(groups: AgentGroups, spaces: list[tuple[int, int]], hidden: int) -> Teams:
    """The groups with their spaces (every agent's (observation size, action count), as rank 0's env gave them and
    the trainer broadcast), checked: the same answer, or the same one-line error, on every rank."""
    obs_dims, n_actions = zip(*group_spaces(groups, spaces))
    widths = [actor_width(od, k, hidden) for od, k in zip(obs_dims, n_actions)]
    return Teams(groups, tuple(obs_dims), tuple(n_actions), max(widths))
