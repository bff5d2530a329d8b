"""Typed run configuration: YAML file + `--set section.key=value` overrides, validated with one-line errors."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SMAC_MAPS = {"5m_vs_6m": 5, "10m_vs_11m": 10, "27m_vs_30m": 27, "6h_vs_8z": 6}
ALGOS = ("decpg", "ps", "ps_entropy")


class ConfigError(ValueError):
    """A bad configuration value; the message is one line that names the key and the allowed values."""


@dataclass
class EnvConfig:
    name: str = "simple_spread"  # simple_spread | smax:<map> | smac:<map>
    backend: str = "batched"  # simple_spread only: batched (our exact numpy twin) | mpe2 (the slow reference)
    n_agents: int | None = None  # None: processes × agents per process (Simple Spread); SMAC: fixed by the map
    n_envs: int = 32  # B parallel environments
    episode_length: int = 25  # T steps per rollout; B·T = batch size per agent
    local_ratio: float = 0.5
    reward: str = "smac"  # smax only: smac (shaped, max 20 per episode) | native
    state_agent_id: bool = False  # append a one-hot agent id to the critic's state (MAPPO agent-specific state)


@dataclass
class AlgoConfig:
    name: str = "decpg"  # decpg | ps | ps_entropy
    k: int = 4  # kNN topology: neighbours per agent (decpg only)
    mix_every: str = "step"  # decpg: one gossip round per SGD step, or once per iteration
    critic: str = "central"  # central: one critic on rank 0 | local: one per agent, combined like the actor
    agents_per_process: int | None = None  # None: n_agents / processes


@dataclass
class TrainConfig:
    iterations: int = 1000
    lr: float = 1e-2
    min_lr: float = 1e-3
    ppo_epochs: int = 10
    num_minibatch: int = 1
    clip: float = 0.2
    entropy_coef: float = 0.0
    value_coef: float = 1.0
    max_grad_norm: float = 10.0
    gamma: float = 0.99
    gae_lambda: float = 0.95
    huber_delta: float = 10.0
    hidden: int = 64
    chunk_length: int | None = None  # recurrent training chunks; None: the whole rollout is one sequence
    seed: int = 1


@dataclass
class EvalConfig:
    interval: int = 25  # iterations between evaluations of the averaged model (0: only at the end)
    episodes: int = 32
    test_episodes: int = 1000
    obs_noise: float = 0.2  # test env: Gaussian noise std = c × per-feature sample std
    action_noise: float = 0.2  # test env: probability ε of a uniform random available action


@dataclass
class RunConfig:
    out: str | None = None  # run directory; None: runs/<env>-<algo>-k<k>-s<seed>-<time>
    checkpoint_interval: int = 50
    timeout_s: float = 300.0  # every collective and point-to-point wait
    tensorboard: bool = True
    exchange: str = "p2p"  # per-step obs/actions exchange: p2p (posted isend/irecv) | collective (scatter/gather)
    stop_after: int | None = None  # checkpoint and stop after this iteration (scheduled preemption); --resume goes on


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Per-algorithm train overrides (the paper's Table 2), applied for the chosen algo.
    per_algo: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types(section) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check value against a field's type hint; ints are accepted for floats."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"config key '{key}' must not be empty")
    for opt in options:
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt in (str, bool) and isinstance(value, opt):
            return value
        if opt is dict and isinstance(value, dict):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key '{key}' must be {names}, got {value!r}")


def apply(cfg: Config, data: dict, source: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    for section_name, values in data.items():
        if section_name == "per_algo":
            cfg.per_algo = _coerce("per_algo", values, dict)
            continue
        section = getattr(cfg, section_name, None) if section_name in _field_types(cfg) else None
        if section is None:
            raise ConfigError(f"{source}: unknown config section '{section_name}' "
                              f"(known: {', '.join(_field_types(cfg))})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section_name}' must be a mapping")
        types_ = _field_types(section)
        for key, value in values.items():
            if key not in types_:
                raise ConfigError(f"{source}: unknown config key '{section_name}.{key}' "
                                  f"(known in {section_name}: {', '.join(types_)})")
            setattr(section, key, _coerce(f"{section_name}.{key}", value, types_[key]))


def parse_override(text: str) -> dict:
    """'train.lr=0.05' -> {'train': {'lr': 0.05}} (the value is read as YAML: numbers, true/false, null)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set expects section.key=value, got '{text}'")
    key, raw = text.split("=", 1)
    section, name = key.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {section: {name: value}}


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        apply(cfg, data, str(path))
    for text in overrides:
        apply(cfg, parse_override(text), "--set")
    return cfg


def resolve(cfg: Config, n_procs: int) -> Config:
    """Fill derived values (agent count, agents per process, per-algo overrides) and validate everything."""
    env, algo, tr, ev = cfg.env, cfg.algo, cfg.train, cfg.eval
    if algo.name not in ALGOS:
        raise ConfigError(f"algo.name must be one of {', '.join(ALGOS)}, got '{algo.name}'")
    overrides = cfg.per_algo.get(algo.name, {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"per_algo.{algo.name} must be a mapping of train keys")
    apply(cfg, {"train": overrides}, f"per_algo.{algo.name}")
    cfg.per_algo = {}  # applied: the resolved config states the values actually used

    positive = {"env.n_envs": env.n_envs, "env.episode_length": env.episode_length,
                "train.iterations": tr.iterations, "train.lr": tr.lr, "train.ppo_epochs": tr.ppo_epochs,
                "train.num_minibatch": tr.num_minibatch, "train.clip": tr.clip, "train.hidden": tr.hidden,
                "train.max_grad_norm": tr.max_grad_norm, "train.huber_delta": tr.huber_delta,
                "eval.episodes": ev.episodes, "eval.test_episodes": ev.test_episodes,
                "run.timeout_s": cfg.run.timeout_s}
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    nonneg = {"train.min_lr": tr.min_lr, "train.entropy_coef": tr.entropy_coef, "train.value_coef": tr.value_coef,
              "eval.interval": ev.interval, "eval.obs_noise": ev.obs_noise,
              "run.checkpoint_interval": cfg.run.checkpoint_interval}
    for key, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{key} must be ≥ 0, got {value}")
    for key, value in {"train.gamma": tr.gamma, "train.gae_lambda": tr.gae_lambda,
                       "eval.action_noise": ev.action_noise}.items():
        if not 0 <= value <= 1:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if not 0 <= env.local_ratio <= 1:
        raise ConfigError(f"env.local_ratio must be in [0, 1], got {env.local_ratio}")
    if not isinstance(n_procs, int) or n_procs < 1:
        raise ConfigError(f"the number of processes must be an integer ≥ 1, got {n_procs!r}")
    kind, _, map_name = env.name.partition(":")
    if kind in ("smax", "smac"):
        if map_name not in SMAC_MAPS:
            raise ConfigError(f"unknown SMAC map '{map_name}' (supported: {', '.join(SMAC_MAPS)})")
        n_map = SMAC_MAPS[map_name]
        if env.n_agents not in (None, n_map):
            raise ConfigError(f"env.n_agents={env.n_agents} but map {map_name} has {n_map} agents")
        env.n_agents = n_map
    elif kind == "simple_spread":
        if env.backend not in ("batched", "mpe2"):
            raise ConfigError(f"env.backend must be batched or mpe2, got '{env.backend}'")
    else:
        raise ConfigError(f"env.name must be simple_spread, smax:<map> or smac:<map>, got '{env.name}'")

    per = algo.agents_per_process
    if per is not None and per < 1:
        raise ConfigError(f"algo.agents_per_process must be ≥ 1, got {per}")
    if env.n_agents is None:
        env.n_agents = n_procs * (per or 1)
    if env.n_agents < 1:
        raise ConfigError(f"env.n_agents must be ≥ 1, got {env.n_agents}")
    if per is None:
        if env.n_agents % n_procs:
            raise ConfigError(f"{env.n_agents} agents cannot be split evenly over {n_procs} processes "
                              f"(use a process count that divides {env.n_agents})")
        per = env.n_agents // n_procs
    if per * n_procs != env.n_agents:
        raise ConfigError(f"{n_procs} processes × {per} agents per process = {n_procs * per}, "
                          f"but the environment has {env.n_agents} agents")
    algo.agents_per_process = per

    n = env.n_agents
    if kind == "simple_spread" and n < 2:
        raise ConfigError(f"Simple Spread needs at least 2 agents (processes × agents per process), got {n}")
    if env.state_agent_id and algo.critic == "central":
        raise ConfigError("env.state_agent_id needs algo.critic=local (the central critic has a head per agent)")
    if algo.name == "decpg" and not 0 <= algo.k <= n - 1:
        raise ConfigError(f"algo.k must be in [0, {n - 1}] for n={n} agents, got k={algo.k}")
    if algo.mix_every not in ("step", "iteration"):
        raise ConfigError(f"algo.mix_every must be step or iteration, got '{algo.mix_every}'")
    if algo.critic not in ("central", "local"):
        raise ConfigError(f"algo.critic must be central or local, got '{algo.critic}'")
    if env.reward not in ("smac", "native"):
        raise ConfigError(f"env.reward must be smac or native, got '{env.reward}'")

    if cfg.run.exchange not in ("p2p", "collective"):
        raise ConfigError(f"run.exchange must be p2p or collective, got '{cfg.run.exchange}'")
    if tr.num_minibatch != 1:
        raise ConfigError(f"train.num_minibatch must be 1 (full batch, as in the paper), got {tr.num_minibatch}")
    if tr.chunk_length is not None and (tr.chunk_length < 1 or env.episode_length % tr.chunk_length):
        raise ConfigError(f"train.chunk_length must divide env.episode_length={env.episode_length}, "
                          f"got {tr.chunk_length}")
    return cfg
