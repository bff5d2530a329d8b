"""Validation of a composed configuration: each key against its own check, then the keys together (resolve), with
one-line errors. Split from config.py, which re-exports `resolve` and `check_values` (config.resolve, as always)."""

from __future__ import annotations

import os

from .config import GRAPH_AGENTS, INT_MAX, SECTIONS, SEED_MAX, TIMEOUT_MIN_S, Config, _check_per_algo, _coerce, _fields
from .extensions import COMBINERS, CRITICS, combiner, critic, env_agents, env_groups, job_graph
from .extensions import env as env_entry
from .groups import check_spec as check_groups
from .registry import ConfigError, Registry
from .topology import shift_refusal


_CHECKS = {
    "any": (lambda v: True, ""),
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonneg": (lambda v: v >= 0, "must be ≥ 0"),
    "unit": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "min1": (lambda v: v >= 1, "must be ≥ 1"),
    "timeout": (lambda v: v >= TIMEOUT_MIN_S, f"must be ≥ {TIMEOUT_MIN_S:g} s (joining the process group alone can "
                "take seconds when processes share cores)"),
    "seed": (lambda v: 0 <= v <= SEED_MAX, f"must be an integer in [0, {SEED_MAX}] (numpy and JAX seeds)"),
}


def check_values(cfg: Config) -> None:
    """Each key against its own check (types were checked while composing)."""
    for section in SECTIONS:
        values = getattr(cfg, section)
        for name, (hint, f) in _fields(type(values)).items():
            value, check = getattr(values, name), f.metadata.get("check")
            _coerce(f"{section}.{name}", value, hint)  # a Config built in code gets the same type checks
            if value is None:
                continue
            if check is None:
                check = "any"
            if isinstance(check, Registry):
                check.get(value)
                continue
            if isinstance(check, tuple):
                if value not in check:
                    raise ConfigError(f"{section}.{name} must be {' or '.join(check)}, got '{value}'")
                continue
            ok, what = _CHECKS[check]
            if not ok(value):
                raise ConfigError(f"{section}.{name} {what}, got {value}")
            if isinstance(value, int) and abs(value) > INT_MAX:  # beyond what torch, numpy and gloo take
                raise ConfigError(f"{section}.{name} must be below 2^63, got {value}")


def resolve(cfg: Config, n_procs: int) -> Config:
    """Fill derived values (agent count, agents per process) and validate everything."""
    env, algo, tr = cfg.env, cfg.algo, cfg.train
    if cfg.per_algo:  # a Config built in code, not composed: apply its table as before
        for key, value in _check_per_algo(cfg.per_algo, "per_algo").get(algo.name, {}).items():
            setattr(tr, key, value)
        cfg.per_algo = {}
    check_values(cfg)
    if cfg.run.hang_warning_s is not None and cfg.run.hang_warning_s >= cfg.run.timeout_s:
        raise ConfigError(f"run.hang_warning_s={cfg.run.hang_warning_s:g} must be below run.timeout_s="
                          f"{cfg.run.timeout_s:g} (a wait is reported before it times out)")
    if tr.min_lr > tr.lr:
        raise ConfigError(f"train.min_lr={tr.min_lr} must be ≤ train.lr={tr.lr} (the lr decays linearly to min_lr)")
    if cfg.run.out is not None and not cfg.run.out.strip():
        raise ConfigError("run.out (--out) must not be empty; omit it for the default runs/<name>")
    if not isinstance(n_procs, int) or isinstance(n_procs, bool) or n_procs < 1:
        raise ConfigError(f"the number of processes must be an integer ≥ 1, got {n_procs!r}")
    entry, _ = env_entry(env.name)
    if env.kwargs is not None and entry.agents is None:
        raise ConfigError(f"env.kwargs is for a pettingzoo:<module>:<factory> environment; {env.name} takes none "
                          "(drop env.kwargs)")
    n_map = env_agents(env.name, env.kwargs)
    if n_map is not None:
        if env.n_agents not in (None, n_map):
            raise ConfigError(f"env.n_agents={env.n_agents} but {env.name} has {n_map} agents")
        env.n_agents = n_map
    check_groups(algo.groups)

    per = algo.agents_per_process
    if env.n_agents is None:
        env.n_agents = n_procs * (per or 1)
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
    if n < entry.min_agents:
        raise ConfigError(f"{entry.title} needs at least {entry.min_agents} agents (processes × agents per process), "
                          f"got {n}")
    if env.state_agent_id and not critic(algo.critic).per_agent:
        per_agent = "|".join(name for name, c in CRITICS.items() if c.per_agent)
        raise ConfigError(f"env.state_agent_id needs algo.critic={per_agent} (the {algo.critic} critic has a head "
                          "per agent)")
    if combiner(algo.name).gossips and algo.topology == "knn" and not 0 <= algo.k <= n - 1:  # k: the ring's only
        raise ConfigError(f"algo.k must be in [0, {n - 1}] for n={n} agents, got k={algo.k}")
    # A graph file is found from any directory a worker or a resume runs in.
    if algo.topology.startswith("file:") and algo.topology != "file:":
        algo.topology = "file:" + os.path.abspath(os.path.expanduser(algo.topology[len("file:"):]))
    if n > GRAPH_AGENTS:  # before building it: a graph is planned as dense n×n float64 matrices
        raise ConfigError(f"n={n} agents: decnode plans the agents' graph as dense n×n matrices ({8 * n * n / 2**30:.1f} "
                          f"GiB per round here), for up to {GRAPH_AGENTS} agents")
    teams = env_groups(cfg)  # the agent groups, checked against the env's spaces where known before it is built
    graph = job_graph(cfg)  # the graph is built and checked (a one-line GraphError naming the node at fault)
    if tr.num_minibatch != 1:
        raise ConfigError(f"train.num_minibatch must be 1 (full batch, as in the paper), got {tr.num_minibatch}")
    if tr.chunk_length is not None and env.episode_length % tr.chunk_length:
        raise ConfigError(f"train.chunk_length must divide env.episode_length={env.episode_length}, "
                          f"got {tr.chunk_length}")
    if algo.staleness and cfg.run.device == "xla":
        raise ConfigError(f"run.device=xla does not run algo.staleness={algo.staleness} (the CPU placement does, with "
                          "push_sum)")
    if algo.staleness and not combiner(algo.name).staleness:
        able = ", ".join(name for name, entry in COMBINERS.items() if entry.staleness)
        raise ConfigError(f"algo.staleness={algo.staleness} needs an algorithm that adds a late message when it "
                          f"arrives ({able}); algo.name={algo.name} waits for every message (drop algo.staleness)")
    if cfg.run.device == "xla":  # what the XLA placement does not have (yet): refused, not ignored
        if not combiner(algo.name).xla:
            raise ConfigError(f"run.device=xla does not run algo.name={algo.name} (the CPU placement does)")
        profile = cfg.net.profile if isinstance(cfg.net.profile, str) else cfg.net.profile.get("name")
        unsupported = [what for what, bad in ((f"net.profile={profile}", cfg.net.profile != "loopback"),
                                              ("faults", bool(cfg.faults))) if bad]
        if shift_refusal(graph):
            raise ConfigError(shift_refusal(graph))
        if not teams.single:
            raise ConfigError("run.device=xla trains one group of agents; this job has "
                              f"{teams.describe()} (the CPU placement runs groups)")
        if unsupported:
            raise ConfigError(f"run.device=xla does not support {', '.join(unsupported)} (the CPU placement does)")
    return cfg


