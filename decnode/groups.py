"""Agent groups: which agents share a network shape, a PS network and a gossip graph (numpy-free, torch-free).

A group is a run of consecutive agents (a unit type, a role, a space). An environment declares a group name per
agent (`agent_groups`; none: one group); `algo.groups` may group them otherwise:
    env             the environment's own groups (the default; a homogeneous env is one group, today's behaviour)
    all             one group of every agent (their spaces must agree)
    agent           every agent alone (no sharing under PS; DecPG gossips with nobody)
    {name: [ids]}   explicit groups of consecutive agent ids covering every agent once
Consecutive runs keep a process's block of agents one slice per group, so each group's rows are a view of the
block's (nn/grouped.py); an env that interleaves its groups is refused, not reordered (numbers would then differ
from the env's own agent order in every table).
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import ConfigError

CHOICES = ("env", "all", "agent")


@dataclass(frozen=True)
class Group:
    name: str
    agents: range  # consecutive agent ids


@dataclass(frozen=True)
class AgentGroups:
    groups: tuple[Group, ...]

    @property
    def n(self) -> int:
        return self.groups[-1].agents.stop

    @property
    def single(self) -> bool:
        return len(self.groups) == 1

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def index(self) -> list[int]:
        """The group index of every agent."""
        return [g for g, group in enumerate(self.groups) for _ in group.agents]

    def local(self, rows: range) -> list[tuple[int, slice]]:
        """The groups a block of agents `rows` meets, in order: (group index, slice of the block's rows)."""
        out = []
        for g, group in enumerate(self.groups):
            lo, hi = max(group.agents.start, rows.start), min(group.agents.stop, rows.stop)
            if lo < hi:
                out.append((g, slice(lo - rows.start, hi - rows.start)))
        return out

    def describe(self) -> str:
        return ", ".join(f"{g.name} {_span(g.agents)}" for g in self.groups)


def _span(r: range) -> str:
    return f"[{r.start}]" if len(r) == 1 else f"[{r.start}..{r.stop - 1}]"


def one_group(n: int, name: str = "agent") -> AgentGroups:
    return AgentGroups((Group(name, range(n)),))


def from_names(names: list[str] | tuple[str, ...], what: str = "the environment") -> AgentGroups:
    """Consecutive agents with the same group name form one group; a name that comes back after another is refused."""
    groups: list[Group] = []
    for i, name in enumerate(names):
        if groups and groups[-1].name == name:
            groups[-1] = Group(name, range(groups[-1].agents.start, i + 1))
            continue
        if any(g.name == name for g in groups):
            raise ConfigError(f"{what} puts agent {i} in group '{name}' after other groups: decnode needs each "
                              "group's agents consecutive (set algo.groups explicitly, or algo.groups=agent)")
        groups.append(Group(str(name), range(i, i + 1)))
    if not groups:
        raise ConfigError(f"{what} has no agents")
    return AgentGroups(tuple(groups))


def check_spec(spec) -> None:
    """algo.groups's form, before the agents are known (one line)."""
    if isinstance(spec, str):
        if spec not in CHOICES:
            raise ConfigError(f"algo.groups must be {' | '.join(CHOICES)} or a mapping {{name: [agent ids]}}, "
                              f"got '{spec}'")
        return
    if not isinstance(spec, dict) or not spec:
        raise ConfigError(f"algo.groups must be {' | '.join(CHOICES)} or a mapping {{name: [agent ids]}}, got "
                          f"{spec!r:.60}")
    for name, ids in spec.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"algo.groups: a group name must be a non-empty string, got {name!r:.40}")
        if (not isinstance(ids, list) or not ids
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
            raise ConfigError(f"algo.groups.{name} must be a non-empty list of agent ids (integers ≥ 0), got "
                              f"{ids!r:.60}")


def resolve(spec, n: int, env_names: tuple[str, ...] | None) -> AgentGroups:
    """algo.groups for n agents; env_names: the environment's group name per agent (None: one group)."""
    check_spec(spec)
    if spec == "all":
        return one_group(n)
    if spec == "agent":
        return AgentGroups(tuple(Group(f"agent_{i}", range(i, i + 1)) for i in range(n)))
    if spec == "env":
        if env_names is None:
            return one_group(n)
        if len(env_names) != n:
            raise ConfigError(f"the environment names {len(env_names)} agents' groups, the job has {n} agents")
        return from_names(env_names)
    owner = {}
    for name, ids in spec.items():
        for i in ids:
            if i >= n:
                raise ConfigError(f"algo.groups.{name} names agent {i}, but the job has {n} agents (ids 0..{n - 1})")
            if i in owner:
                raise ConfigError(f"algo.groups puts agent {i} in both '{owner[i]}' and '{name}'")
            owner[i] = name
        if sorted(ids) != list(range(min(ids), max(ids) + 1)):
            raise ConfigError(f"algo.groups.{name} must be consecutive agent ids, got {sorted(ids)}")
    missing = [i for i in range(n) if i not in owner]
    if missing:
        raise ConfigError(f"algo.groups leaves agent{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(map(str, missing[:8]))} in no group (every agent belongs to one)")
    return from_names([owner[i] for i in range(n)], "algo.groups")


def group_spaces(groups: AgentGroups, spaces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each group's (observation size, action count) from every agent's; a group whose agents' spaces differ is one
    ConfigError line (one network needs one shape)."""
    out = []
    for group in groups.groups:
        mine = {tuple(spaces[i]) for i in group.agents}
        if len(mine) > 1:
            first = group.agents.start
            other = next(i for i in group.agents if tuple(spaces[i]) != tuple(spaces[first]))
            what = "one group (algo.groups=all)" if groups.single else f"group '{group.name}'"
            raise ConfigError(f"{what} holds agents with different spaces (agent {first}: observation "
                              f"{spaces[first][0]}, {spaces[first][1]} actions; agent {other}: observation "
                              f"{spaces[other][0]}, {spaces[other][1]} actions): one network needs one shape — "
                              "use algo.groups=env or agent")
        out.append(mine.pop())
    return out
