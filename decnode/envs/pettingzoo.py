"""Any PettingZoo parallel environment as B copies behind the batched interface (see base.BatchedEnv).

A config names one as `pettingzoo:<module>:<factory>` with `env.kwargs`; this module takes the '<module>:<factory>'
part (the target), e.g. "mpe2.simple_speaker_listener_v4:parallel_env", and builds B copies with factory(**kwargs).

Supported: a ParallelEnv whose agents each have a Discrete action space and a flat 1-D Box observation space, and
whose agents all stay for the whole episode. Refused in one line: an AEC env, any other action or observation space
(a Dict observation carrying an action mask included: give the mask in infos[agent]["action_mask"] instead), and
agents that leave (or join) mid-episode, found when it happens.

Agents may differ (B = n_envs, N = n_agents, in env.possible_agents order):
    obs    float32 [B, N, obs_dim]    obs_dim = max over agents; agent i's own obs fills [:agent_obs_dims[i]],
                                      zeros after
    avail  bool    [B, N, n_actions]  n_actions = max over agents; False beyond agent i's own agent_n_actions[i], and
                                      where infos[agent]["action_mask"] (if the env gives one) says so
    state  float32 [B, state_dim]     env.state() if the env implements it, else the agents' unpadded obs concatenated
Action a of agent i is sent as Discrete.start + a.

Groups (PettingZooSpec.groups, the instance's agent_groups): an agent's group is its name without a trailing
"_<digits>" ("speaker_0" -> "speaker", "agent_0".."agent_2" -> "agent"). A group's agents must be consecutive in
possible_agents and have equal observation and action spaces; when they are not, each of its agents is a group of
its own, named by the full agent name ("a_0", "b_0", "a_1" -> groups "a_0", "b", "a_1").

Seeds and episodes follow the built-in envs: env b owns default_rng([seed, first_env + b]) and every episode of env
b resets with a seed drawn from it, so a share of a larger batch played at first_env sees the same episodes. An
episode ends when all agents are terminated or truncated, or after episode_limit steps (the adapter truncates), and
the env then resets itself.

Resume: PettingZoo's own envs (mpe2 and the rest) pickle and deepcopy through gymnasium's EzPickle, which rebuilds a
FRESH env from the constructor arguments, so a copy of the env objects would silently restart every episode. A
snapshot therefore records each env's current episode: its reset seed and the actions played since. set_state
resets with that seed, replays the actions and checks the observations come out as recorded: an env whose episode
is not a function of its reset seed and the actions (the premise of seeded episodes) is refused, not resumed wrong.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from decnode.envs.base import Step
from decnode.registry import ConfigError

SUPPORTED = ("supported: PettingZoo parallel envs whose agents have Discrete actions and flat 1-D Box observations "
             "and stay for the whole episode")


@dataclass(frozen=True)
class PettingZooSpec:
    """What one instance of the env says, read before any training process starts (see the module's docstring)."""

    names: tuple[str, ...]  # env.possible_agents in order
    groups: tuple[str, ...]  # group name per agent
    obs_dims: tuple[int, ...]  # per agent: flat Box observation size
    n_actions: tuple[int, ...]  # per agent: Discrete n
    state_dim: int  # env.state() size if the env implements state(), else sum(obs_dims)


def _short(x: Any, limit: int = 100) -> str:
    """One line of at most `limit` characters: a space's or an error's repr may span lines."""
    text = " ".join(str(x).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load(target: str) -> Callable[..., Any]:
    """'module.path:factory' -> the factory; one-line ConfigError if the module or the attribute is missing."""
    module_name, sep, attr = str(target).partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise ConfigError(f"env.name pettingzoo:{_short(target)}: expected pettingzoo:<module>:<factory>, "
                          f"e.g. pettingzoo:mpe2.simple_spread_v3:parallel_env")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # the module itself, or something it imports (e.name says which)
        raise ConfigError(f"env.name pettingzoo:{target}: cannot import module '{module_name}' "
                          f"({_short(e)})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable"
        raise ConfigError(f"env.name pettingzoo:{target}: module '{module_name}' {what} '{attr}' "
                          f"(expected a factory returning a ParallelEnv, e.g. parallel_env)")
    return factory


def describe(target: str, kwargs: dict) -> PettingZooSpec:
    """Builds one env, checks it (one-line ConfigError saying what is supported) and describes it."""
    env = _build(load(target), target, kwargs or {})
    try:
        return _inspect(env, target)[0]
    finally:
        env.close()


_SPECS: dict[tuple[str, str], PettingZooSpec] = {}


def _spec(target: str, kwargs: dict) -> PettingZooSpec:
    """describe(), once per (target, kwargs) in a process: config checks ask for the agents and the groups apart."""
    key = (target, repr(sorted((kwargs or {}).items())))
    if key not in _SPECS:
        _SPECS[key] = describe(target, kwargs)
    return _SPECS[key]


def spec_agents(target: str, kwargs: dict) -> int:
    """The env registry's agents hook (extensions.EnvEntry.agents): the env's agent count."""
    return len(_spec(target, kwargs).names)


def spec_spaces(target: str, kwargs: dict) -> list[tuple[int, int]]:
    """The env registry's spaces hook (extensions.EnvEntry.spaces): every agent's (obs size, action count)."""
    spec = _spec(target, kwargs)
    return list(zip(spec.obs_dims, spec.n_actions))


def spec_groups(target: str, n_agents: int, kwargs: dict) -> tuple[str, ...]:  # noqa: ARG001
    """The env registry's groups hook (extensions.EnvEntry.groups): a group name per agent."""
    return _spec(target, kwargs).groups


def _build(factory: Callable[..., Any], target: str, kwargs: dict) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as e:  # most often a misspelt keyword: say so in the config's terms
        raise ConfigError(f"env.kwargs of pettingzoo:{target}: {_short(e, 200)}") from e


def _inspect(env: Any, target: str) -> tuple[PettingZooSpec, bool]:
    """Check `env` and describe it; also whether it implements state(). Leaves env reset (seed 0)."""
    from gymnasium import spaces
    from pettingzoo import AECEnv, ParallelEnv  # lazily: a config check must not pay for it

    where = f"env.name pettingzoo:{target}"
    if isinstance(env, AECEnv):
        raise ConfigError(f"{where} builds an AEC env (use the module's parallel_env, or wrap it with "
                          f"pettingzoo.utils.aec_to_parallel); {SUPPORTED}")
    if not isinstance(env, ParallelEnv):
        raise ConfigError(f"{where} builds a {type(env).__name__}, not a pettingzoo ParallelEnv; {SUPPORTED}")
    names = tuple(env.possible_agents)
    if not names:
        raise ConfigError(f"{where}: the env has no possible_agents")
    obs_spaces = [env.observation_space(n) for n in names]
    act_spaces = [env.action_space(n) for n in names]
    for name, obs_space, act_space in zip(names, obs_spaces, act_spaces):
        if not isinstance(act_space, spaces.Discrete):
            raise ConfigError(f"{where}: agent {name}'s action space is {_short(act_space)}; {SUPPORTED}")
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise ConfigError(f"{where}: agent {name}'s observation space is {_short(obs_space)}; {SUPPORTED}")
    env.reset(seed=0)
    if sorted(env.agents) != sorted(names):
        raise ConfigError(f"{where}: after reset the agents are {_short(env.agents)}, not possible_agents "
                          f"{_short(list(names))}; {SUPPORTED}")
    obs_dims = tuple(int(s.shape[0]) for s in obs_spaces)
    try:
        state_dim, has_state = int(np.asarray(env.state()).size), True
    except NotImplementedError:  # pettingzoo's base ParallelEnv.state() raises this
        state_dim, has_state = sum(obs_dims), False
    spec = PettingZooSpec(names=names, groups=_groups(names, list(zip(obs_spaces, act_spaces))), obs_dims=obs_dims,
                          n_actions=tuple(int(s.n) for s in act_spaces), state_dim=state_dim)
    return spec, has_state


def _groups(names: tuple[str, ...], agent_spaces: list[tuple[Any, Any]]) -> tuple[str, ...]:
    """Group name per agent (the module's docstring): the name without "_<digits>", or the full name when the
    would-be group is not consecutive or its agents' spaces differ."""
    base = [re.sub(r"_\d+$", "", n) for n in names]
    label = list(base)
    for group in set(base):
        members = [i for i, b in enumerate(base) if b == group]
        consecutive = members == list(range(members[0], members[0] + len(members)))
        if not consecutive or any(agent_spaces[i] != agent_spaces[members[0]] for i in members):
            for i in members:
                label[i] = names[i]
    # A full name can still equal another group's name ("x_1" next to "x_1_0", "x_1_1"); then no grouping at all.
    runs = [g for k, g in enumerate(label) if k == 0 or g != label[k - 1]]
    return tuple(label) if len(runs) == len(set(runs)) else names


class PettingZooEnv:
    """B copies of one PettingZoo parallel env; see the module's docstring and base.BatchedEnv for the contract.

    info["episode_return"] is a float64 [B] array on every step: the finished episode's sum_t mean_i r_t^i where
    done, nan elsewhere.
    """

    splittable = True  # a copy per rank is as cheap as the env itself; no process or compile to start
    has_win = False

    def __init__(self, n_envs: int, target: str, kwargs: dict | None = None, episode_limit: int = 25):
        assert n_envs >= 1 and episode_limit >= 1, (n_envs, episode_limit)
        factory = load(target)
        self.target, self.kwargs = target, dict(kwargs or {})
        first = _build(factory, target, self.kwargs)
        spec, self._has_state = _inspect(first, target)  # before building the others: refusals come cheap
        self.envs = [first] + [factory(**self.kwargs) for _ in range(n_envs - 1)]
        self.spec = spec
        self.names = spec.names
        self.n_envs, self.n_agents, self.episode_limit = n_envs, len(spec.names), episode_limit
        self.obs_dim, self.n_actions, self.state_dim = max(spec.obs_dims), max(spec.n_actions), spec.state_dim
        self.agent_obs_dims, self.agent_n_actions, self.agent_groups = spec.obs_dims, spec.n_actions, spec.groups
        self._action_start = [int(self.envs[0].action_space(n).start) for n in self.names]
        B, N = n_envs, self.n_agents
        self._obs = np.zeros((B, N, self.obs_dim), dtype=np.float32)
        self._state = np.zeros((B, self.state_dim), dtype=np.float32)
        self._avail = np.zeros((B, N, self.n_actions), dtype=bool)
        self.rngs: list[np.random.Generator] = []
        self.t = np.zeros(B, dtype=np.int64)  # steps into each env's episode: episodes end at different times
        self.ep_ret = np.zeros(B)
        self.ep_seed = [0] * B  # the reset seed and the actions since: what a snapshot replays
        self.ep_actions: list[list[np.ndarray]] = [[] for _ in range(B)]

    # ----------------------------------------------------------------------------- public API
    def reset(self, seed: int, first_env: int = 0) -> Step:
        """Env b draws every episode's reset seed from default_rng([seed, first_env + b])."""
        self.rngs = [np.random.default_rng([seed, first_env + b]) for b in range(self.n_envs)]
        for b in range(self.n_envs):
            self._start_episode(b)
        return Step(self._obs.copy(), self._state.copy(), self._avail.copy())

    def step(self, actions: np.ndarray) -> Step:
        """actions int64 [B, N], each agent's in [0, agent_n_actions[i]); auto-resets where done."""
        assert self.rngs, "call reset(seed) first"
        actions = np.asarray(actions)
        assert actions.shape == (self.n_envs, self.n_agents), actions.shape
        bad = (actions < 0) | (actions >= np.array(self.agent_n_actions))  # padding actions are not the env's
        if bad.any():
            b, i = np.argwhere(bad)[0]
            raise ValueError(f"pettingzoo:{self.target}: agent {self.names[i]} got action {actions[b, i]}, "
                             f"outside its [0, {self.agent_n_actions[i]})")
        B, N = self.n_envs, self.n_agents
        reward, done, ep_return = np.zeros((B, N)), np.zeros(B, dtype=bool), np.full(B, np.nan)
        for b in range(B):
            obs, rew, term, trunc, infos = self._play(b, actions[b])
            self.ep_actions[b].append(actions[b].astype(np.int64))
            self.t[b] += 1
            reward[b] = [float(rew.get(n, 0.0)) for n in self.names]
            self.ep_ret[b] += reward[b].mean()
            ended = all(term.get(n, False) or trunc.get(n, False) for n in self.names)
            if ended or self.t[b] >= self.episode_limit:
                done[b], ep_return[b] = True, self.ep_ret[b]
                self._start_episode(b)
                continue
            live = self.envs[b].agents
            gone = [n for n in self.names if term.get(n, False) or trunc.get(n, False) or n not in obs or n not in live]
            if gone or len(live) != N:
                raise ValueError(f"pettingzoo:{self.target}: agents {gone or _short(live)} left or joined at step "
                                 f"{self.t[b]} of env {b}'s episode while others play on; agents that leave "
                                 f"mid-episode are not supported")
            self._record(b, obs, infos)
        return Step(self._obs.copy(), self._state.copy(), self._avail.copy(), reward.astype(np.float32), done,
                    {"episode_return": ep_return})

    def get_state(self) -> dict[str, Any]:
        """Generators, clocks, returns and each env's episode so far (seed + actions): see the module's docstring."""
        return {
            "target": self.target, "n_envs": self.n_envs, "t": self.t.copy(), "ep_ret": self.ep_ret.copy(),
            "rngs": [g.bit_generator.state for g in self.rngs], "ep_seed": list(self.ep_seed),
            "ep_actions": [np.array(a, dtype=np.int64).reshape(-1, self.n_agents) for a in self.ep_actions],
            "obs": self._obs.copy(),  # what the replay must reproduce
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if state["n_envs"] != self.n_envs or state["target"] != self.target:
            raise ValueError(f"snapshot is of {state['n_envs']} x pettingzoo:{state['target']}, this env is "
                             f"{self.n_envs} x pettingzoo:{self.target}")
        self.rngs = []
        for s in state["rngs"]:
            g = np.random.Generator(np.random.PCG64(0))  # seed irrelevant: state overwritten next
            g.bit_generator.state = s
            self.rngs.append(g)
        self.t, self.ep_ret = state["t"].copy(), state["ep_ret"].copy()
        self.ep_seed = [int(s) for s in state["ep_seed"]]
        self.ep_actions = [list(a) for a in state["ep_actions"]]
        for b, env in enumerate(self.envs):
            self._record(b, *env.reset(seed=self.ep_seed[b]))
            for row in self.ep_actions[b]:
                obs, _, _, _, infos = self._play(b, row)
                self._record(b, obs, infos)
        if not np.array_equal(self._obs, state["obs"]):
            raise ValueError(f"pettingzoo:{self.target}: replaying the snapshot's episodes (reset seed + actions) "
                             f"gave other observations: the env is not a function of its seed and actions, so "
                             f"it cannot be resumed exactly")

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # ---------------------------------------------------------------------------- internals
    def _start_episode(self, b: int) -> None:
        self.ep_seed[b] = int(self.rngs[b].integers(2**31))
        self.ep_actions[b], self.t[b], self.ep_ret[b] = [], 0, 0.0
        obs, infos = self.envs[b].reset(seed=self.ep_seed[b])
        if sorted(self.envs[b].agents) != sorted(self.names):
            raise ValueError(f"pettingzoo:{self.target}: env {b} reset with agents {_short(self.envs[b].agents)}, "
                             f"not possible_agents; agents that change between episodes are not supported")
        self._record(b, obs, infos)

    def _play(self, b: int, actions: np.ndarray) -> tuple:
        """One env.step of env b with row `actions` [N] in the env's own action numbering."""
        return self.envs[b].step({n: self._action_start[i] + int(actions[i]) for i, n in enumerate(self.names)})

    def _record(self, b: int, obs: dict, infos: dict) -> None:
        """Env b's obs, avail and state, from what reset/step just returned."""
        for i, n in enumerate(self.names):
            d, k = self.agent_obs_dims[i], self.agent_n_actions[i]
            self._obs[b, i, :d] = obs[n]  # padding stays zero
            info = infos.get(n) if isinstance(infos, dict) else None
            mask = info.get("action_mask") if isinstance(info, dict) else None
            self._avail[b, i, :k] = True if mask is None else np.asarray(mask, dtype=bool).reshape(k)
        if self._has_state:
            self._state[b] = np.asarray(self.envs[b].state(), dtype=np.float32).reshape(-1)
        else:
            self._state[b] = np.concatenate([self._obs[b, i, :d] for i, d in enumerate(self.agent_obs_dims)])
