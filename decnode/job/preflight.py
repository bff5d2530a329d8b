"""Checks that a job can start on this machine, made before any process starts: optional dependencies of the
chosen environment, memory, file descriptors. Each failure is one line (ConfigError) saying what to do.

The memory figure is a rough upper estimate, not a measurement (documented in the README):
  per process   300 MB  Python + torch + gloo (measured RSS after import, 2.13 CPU wheel), +500 MB for JAX on rank 0
  per agent     4 B × P × (6 + k)   parameters, gradients, a flat copy, SGD scratch, k+1 gossip buffers
              + 4 B × B·T·H × 24    activations kept for backward through the GRU (and the rollout's copies)
  the critic    the same once more per critic (central: one on rank 0 with n heads; local: one per agent)
with P ≈ 9H² + H·(obs + actions) for the net (3 Linear → GRU → Linear → output) and obs + actions ≤ 1000.
`--no-preflight` skips these checks.
"""

from __future__ import annotations

import importlib.util
import resource

from ..config import Config, ConfigError
from ..extensions import combiner, critic
from ..extensions import env as env_entry

GB = 1024**3
PROCESS_BYTES = 300 * 1024**2
FDS_PER_PEER = 2  # gloo connects every pair of ranks (a socket each way, counted generously)
FDS_BASE = 64  # files, pipes, the TCP store, torch's own


def check_dependencies(cfg: Config) -> None:
    """The optional packages the environment needs (its registry entry says which), found without importing them
    (importing jax takes seconds)."""
    entry, _ = env_entry(cfg.env.name)
    if cfg.run.device == "xla" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError("run.device=xla needs torch_xla, which is not installed here: it needs torch 2.9.0, so it "
                          "has its own venv: make install-xla, then .venv-xla/bin/decnode-run")
    missing = [m for m in entry.requires if importlib.util.find_spec(m) is None]
    if missing:
        how = f"install the {entry.extra} extra: pip install -e '.[{entry.extra}]'" if entry.extra else "install them"
        raise ConfigError(f"env.name={cfg.env.name} needs {' and '.join(missing)}, which "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: {how}")
    if entry.check is not None:
        entry.check.load()(cfg.env.name)


def net_parameters(hidden: int, io: int = 1000) -> int:
    return 9 * hidden * hidden + hidden * io


def estimate_bytes(cfg: Config, n_procs: int) -> tuple[int, int]:
    """(bytes for the processes themselves, bytes for models and batches) at the job's peak, summed over ranks."""
    env, tr = cfg.env, cfg.train
    n, H, batch = env.n_agents, tr.hidden, env.n_envs * env.episode_length
    k = cfg.algo.k if combiner(cfg.algo.name).gossips else 1
    per_net = 4 * net_parameters(H) * (6 + k) + 4 * batch * H * 24
    critics = n if critic(cfg.algo.critic).per_agent else 1
    procs = n_procs * PROCESS_BYTES + env_entry(env.name)[0].coordinator_bytes
    return procs, n * per_net + critics * per_net


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_resources(cfg: Config, n_procs: int) -> None:
    procs, models = estimate_bytes(cfg, n_procs)
    free = available_bytes()
    if free is not None and procs + models > free:
        raise ConfigError(
            f"estimated peak memory {(procs + models) / GB:.1f} GB ({n_procs} processes × "
            f"{PROCESS_BYTES / GB:.2f} GB + models and batches {models / GB:.1f} GB for n={cfg.env.n_agents}, "
            f"hidden={cfg.train.hidden}) exceeds the {free / GB:.1f} GB available; use fewer processes or a smaller "
            "model, or pass --no-preflight to try anyway")
    need = FDS_PER_PEER * n_procs + FDS_BASE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and need > soft:
        raise ConfigError(f"{n_procs} processes need about {need} open files each, but the limit is {soft} "
                          f"(ulimit -n; hard limit {hard}); use fewer processes or raise it, "
                          "or pass --no-preflight to try anyway")
