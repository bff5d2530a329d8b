"""Typed run configuration: YAML file (+ its `base:`) < per_algo < command line, validated with one-line errors.

Every key is a dataclass field carrying its type, default, a one-line doc (`decnode-run --help-config`) and the
check its value must pass. config.py sits at the bottom of the import order: it imports no torch and no jax.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import yamlio
from .extensions import COMBINERS, CRITICS, ENVS
from .extensions import env as env_entry
from .registry import ConfigError, Registry, load_plugins  # ConfigError: imported from here, as always

GRAPH_AGENTS = 4096  # the most agents whose dense mixing matrices (128 MiB at this size) a job builds

# Seeds reach numpy's SeedSequence (no negatives), torch.Generator.manual_seed (< 2⁶⁴) and JAX's PRNGKey
# (a C long: < 2⁶³); evaluation and the landscape add offsets below 2²² (evaluate.py, landscape.py).
SEED_MAX = 2**63 - 2**22 - 1
INT_MAX = 2**63 - 1
# The least run.timeout_s that can work: every wait, from joining the process group on, must span what a peer does
# alone in between (its start and torch's import, gloo's connections, building its envs and models, rank 0's
# evaluation and checkpoint writes), seconds on a busy host. A 1 ms timeout failed connecting to the store, in five
# lines of c10d errors; a few seconds is the floor, far below the default 300 s.
TIMEOUT_MIN_S = 5.0
# The config decnode-run (and decnode-netmodel) trains without --config: the paper's Simple Spread setting.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "simple_spread.yaml"


def _key(default, doc: str, check=None, names: Registry | None = None):
    """A config field: default, one-line doc, and its check (see _CHECKS; a tuple of strings = allowed values; a
    Registry = its names, plugins' included). `names`: a registry whose names --help-config lists (env.name)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, "check": check})
    return field(default=default, metadata={"doc": doc, "check": check, "names": names})


@dataclass
class EnvConfig:
    name: str = _key("simple_spread", "environment", names=ENVS)
    backend: str = _key("batched", "simple_spread only: batched (our exact numpy twin) | mpe2 (the slow reference)",
                        ("batched", "mpe2"))
    n_agents: int | None = _key(None, "agents; null: processes × agents per process (SMAC: fixed by the map)", "min1")
    n_envs: int = _key(32, "B parallel environments", "positive")
    episode_length: int = _key(25, "T steps per rollout; B·T = batch size per agent", "positive")
    local_ratio: float = _key(0.5, "simple_spread: weight of the local (collision) reward", "unit")
    reward: str = _key("smac", "smax only: smac (shaped, max 20 per episode) | native", ("smac", "native"))
    state_agent_id: bool = _key(False, "append a one-hot agent id to the critic's state (needs algo.critic=local)")
    kwargs: dict | None = _key(None, "pettingzoo:<module>:<factory> only: the factory's keyword arguments, e.g. "
                               "{N: 3, max_cycles: 25}")


@dataclass
class AlgoConfig:
    name: str = _key("decpg", "algorithm", COMBINERS)
    k: int = _key(4, "kNN topology: neighbours per agent (decpg, push_sum), in [0, n-1]")
    topology: str = _key("knn", "the gossip graph (decpg, push_sum): knn (the paper's ring of algo.k) | ring "
                         "| torus[:RxC] | exp | exp1peer | random_regular | complete | file:PATH (README 'Topologies')")
    weights: str = _key("uniform", "gossip weights: uniform (1/(in-degree+1), the paper's) | metropolis "
                        "(Metropolis–Hastings, undirected graphs); push_sum sends its own shares",
                        ("uniform", "metropolis"))
    degree: int = _key(3, "random_regular: each agent's number of neighbours", "min1")
    mix_every: str = _key("step", "decpg, push_sum: one gossip round per SGD step, or once per iteration",
                          ("step", "iteration"))
    critic: str = _key("central", "", CRITICS)
    staleness: int = _key(0, "push_sum: bounded staleness τ — mix what has been delivered, wait only for a message "
                          "more than τ rounds old: delivered on the simulated clock with --net in simulate mode "
                          "(needs net.compute=model; deterministic), else as it really arrives; 0: synchronous",
                          "nonneg")
    agents_per_process: int | None = _key(None, "agents held by each process; null: n_agents / processes", "min1")
    groups: str | dict = _key("env", "agent groups, each with its own network (PS: one per group; DecPG: a graph per "
                              "group): env (the environment's: unit types, roles) | all | agent (each alone) | "
                              "{name: [consecutive agent ids]} (README 'Heterogeneous teams')")


@dataclass
class TrainConfig:
    iterations: int = _key(1000, "training iterations (one rollout + PPO epochs each)", "positive")
    lr: float = _key(1e-2, "SGD step size at iteration 1 (linear decay to min_lr)", "positive")
    min_lr: float = _key(1e-3, "SGD step size at the last iteration; ≤ lr", "nonneg")
    ppo_epochs: int = _key(10, "PPO epochs per iteration (full batch: one SGD step each)", "positive")
    num_minibatch: int = _key(1, "minibatches per epoch; must be 1 (full batch, as in the paper)", "positive")
    clip: float = _key(0.2, "PPO ratio clip ε", "positive")
    entropy_coef: float = _key(0.0, "entropy bonus coefficient", "nonneg")
    value_coef: float = _key(1.0, "value loss coefficient", "nonneg")
    max_grad_norm: float = _key(10.0, "gradient norm clip", "positive")
    gamma: float = _key(0.99, "discount γ", "unit")
    gae_lambda: float = _key(0.95, "GAE λ", "unit")
    huber_delta: float = _key(10.0, "Huber loss δ of the critic", "positive")
    hidden: int = _key(64, "hidden width of actor and critic (3 Linear → GRU → Linear)", "positive")
    chunk_length: int | None = _key(None, "recurrent training chunks, dividing T; null: the whole rollout", "min1")
    seed: int = _key(1, f"random seed, in [0, {SEED_MAX}]", "seed")


@dataclass
class EvalConfig:
    interval: int = _key(25, "iterations between evaluations of the averaged model (0: only at the end)", "nonneg")
    episodes: int = _key(32, "train-env evaluation episodes", "positive")
    test_episodes: int = _key(1000, "perturbed test-env evaluation episodes (at the end)", "positive")
    obs_noise: float = _key(0.2, "test env: Gaussian noise std = c × per-feature sample std", "nonneg")
    action_noise: float = _key(0.2, "test env: probability ε of a uniform random available action", "unit")


@dataclass
class RunConfig:
    out: str | None = _key(None, "run directory; null: runs/<env>-n<n>-<algo>-k<k>-s<seed>-<time>")
    checkpoint_interval: int = _key(50, "iterations between checkpoints (0: only at the end)", "nonneg")
    timeout_s: float = _key(300.0, f"seconds any collective or point-to-point wait may take, ≥ {TIMEOUT_MIN_S:g}",
                            "timeout")
    hang_warning_s: float | None = _key(None, "seconds after which a wait is reported (one table of who waits on "
                                        "whom), below timeout_s; null: timeout_s / 4", "positive")
    tensorboard: bool = _key(True, "write TensorBoard events to RUN_DIR/tb")
    exchange: str = _key("p2p", "per-step obs/actions exchange: p2p (isend/irecv) | collective (scatter/gather)",
                         ("p2p", "collective"))
    stop_after: int | None = _key(None, "checkpoint and stop after this iteration (--resume goes on)", "min1")
    threads: int | None = _key(None, "intra-op threads per process; null: this host's cores / the job's processes on "
                               "it (at least 1)", "min1")
    device: str = _key("cpu", "where the agents compute: cpu (a process per block, gloo) | xla (a block per XLA device, "
                       "--nproc devices; README 'XLA devices')", ("cpu", "xla"))
    trace_iterations: int = _key(2, "first iterations recorded in RUN_DIR/trace.json (Chrome trace format, Perfetto)"
                                 "; 0: none", "nonneg")
    plugins: list = _key([], "modules or .py files imported first in every process, registering algorithms, critic "
                         "placements or environments (--plugin; README 'Extending decnode'); each layer adds to the "
                         "ones below")


@dataclass
class NetConfig:
    profile: str | dict = _key("loopback", "network to simulate: loopback (none) | datacenter | ethernet | wan | edge | "
                               "a YAML file, which a run records as the mapping of its keys (--net; README 'Simulating "
                               "real nodes')")
    mode: str | None = _key(None, "simulate: a per-node clock only | emulate: also real waits on the real messages; "
                            "null: the profile's own", ("simulate", "emulate"))
    compute: str | None = _key(None, "what the clock charges as compute: measured (this process's CPU time × slowdown) | "
                               "model (fixed seconds per compute section and agent row × slowdown: two runs' clocks "
                               "agree exactly); null: the profile's own", ("measured", "model"))


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    net: NetConfig = field(default_factory=NetConfig)
    # Per-algorithm train overrides (the paper's Table 2). Applied while composing: a resolved config holds {}.
    per_algo: dict = field(default_factory=dict)
    # Injected failures (faults.py checks each entry against the job); a list, replaced whole by a higher layer.
    faults: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name not in ("per_algo", "faults")}


def _fields(cls) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _type_name(hint) -> str:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return " or ".join("null" if o is type(None) else "list of str" if o is list else o.__name__ for o in options)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check a value against a field's type: ints are accepted for floats, bools are not numbers, floats are
    finite, ints fit in 64 bits."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"config key '{key}' must not be empty (expected {_type_name(hint)})")
    for opt in options:
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r:.40}")
            return number
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt in (str, bool, dict) and isinstance(value, opt):
            return value
        if opt is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    raise ConfigError(f"config key '{key}' must be {_type_name(hint)}, got {value!r:.60}")


def check_layer(data: Any, source: str) -> dict:
    """One source's settings, typed and checked for unknown sections and keys (not yet for ranges)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    out: dict = {}
    for section, values in data.items():
        if section == "per_algo":
            out["per_algo"] = _check_per_algo(values, source)
            continue
        if section == "faults":
            if values is not None and (not isinstance(values, list) or not all(isinstance(v, dict) for v in values)):
                raise ConfigError(f"{source}: faults must be a list of mappings, e.g. [{{kind: stall, rank: 1, "
                                  f"iteration: 3, seconds: 5}}], got {values!r:.60}")
            out["faults"] = values or []
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown config section '{section}' (known: {', '.join(SECTIONS)}, per_algo, "
                              "faults)")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys, got {values!r:.40}")
        known = _fields(SECTIONS[section])
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown config key '{section}.{key}' "
                                  f"(known in {section}: {', '.join(known)})")
            out.setdefault(section, {})[key] = _coerce_from(source, f"{section}.{key}", value, known[key][0])
            _check_name(source, f"{section}.{key}", value, known[key][1].metadata)
    return out


def _check_name(source: str, key: str, value, metadata) -> None:
    """A name a registry must know (algorithm, critic placement, environment), checked in the layer that gives it,
    so the line names the file, the sweep cell, --set or the command line."""
    try:
        if isinstance(metadata.get("check"), Registry):
            metadata["check"].get(value)
        elif metadata.get("names") is ENVS and value is not None:
            env_entry(value)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _coerce_from(source: str, key: str, value: Any, hint: Any) -> Any:
    try:
        return _coerce(key, value, hint)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def _check_per_algo(values: Any, source: str) -> dict:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: per_algo must map algorithms to train keys, got {values!r:.40}")
    out = {}
    for algo, table in values.items():
        try:
            COMBINERS.get(algo)
        except ConfigError as err:
            raise ConfigError(f"{source}: per_algo.{algo}: {err}") from None
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{source}: per_algo.{algo} must be a mapping of train keys, got {table!r:.40}")
        known = _fields(TrainConfig)
        for key, value in (table or {}).items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key 'per_algo.{algo}.{key}' (per_algo holds train keys: "
                                  f"{', '.join(known)})")
            out.setdefault(algo, {})[key] = _coerce_from(source, f"per_algo.{algo}.{key}", value, known[key][0])
    return out


def compose(lower: list[tuple[str, Any]], upper: list[tuple[str, Any]] = ()) -> Config:
    """Defaults < lower layers (config file, its base) < per_algo[algo] < upper layers (flags, --set), merged key
    by key. per_algo tables from every layer merge too; the result holds them applied (per_algo = {}).
    Every layer's run.plugins are imported first (they may register the names the layers give); the result records
    them all, each once (a plugin, once imported, cannot be taken back)."""
    plugins = _load_layer_plugins([*lower, *upper])
    low = [check_layer(data, source) for source, data in lower]
    up = [check_layer(data, source) for source, data in upper]
    merged_low, merged_up = {}, {}
    for layer in low:
        merged_low = yamlio.merge(merged_low, layer)
    for layer in up:
        merged_up = yamlio.merge(merged_up, layer)
    per_algo = yamlio.merge(merged_low.pop("per_algo", {}), merged_up.pop("per_algo", {}))
    faults = merged_up.pop("faults", merged_low.pop("faults", []))
    merged_low.pop("faults", None)
    algo = yamlio.merge(merged_low, merged_up).get("algo", {}).get("name", AlgoConfig().name)  # checked by its layer
    merged = yamlio.merge(yamlio.merge(merged_low, {"train": per_algo.get(algo, {})}), merged_up)
    cfg = Config(faults=faults)
    for section, values in merged.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    cfg.run.plugins = plugins
    return cfg


def _load_layer_plugins(layers) -> list[str]:
    plugins: list[str] = []
    for source, data in layers:
        run = data.get("run") if isinstance(data, dict) else None
        specs = run.get("plugins") if isinstance(run, dict) else None
        if specs is None:
            continue
        try:
            specs = _coerce("run.plugins", specs, list)
            plugins += [p for p in load_plugins(specs) if p not in plugins]
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return plugins


def from_dict(data: dict, source: str) -> Config:
    """A resolved config (config.yaml, a checkpoint's, the launcher's payload) back into a Config."""
    return compose([(source, {k: v for k, v in data.items() if k != "per_algo"})])


def parse_override(text: str) -> dict:
    """'train.lr=1e-3' -> {'train': {'lr': 0.001}}; 'per_algo.ps.lr=0.5' nests deeper. The value is read as
    YAML, the same way as in a config file (every float spelling, true/false, null)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    # faults is the one list-valued section: --set 'faults=[{kind: kill, rank: 1, iteration: 3}]'
    if not sep or (len(parts) < 2 and parts != ["faults"]) or not all(parts):
        raise ConfigError(f"--set expects section.key=value, got '{text}'")
    try:
        value = yamlio.parse(raw, f"--set {key}") if raw.strip() else None
    except yamlio.YamlError as err:
        raise ConfigError(str(err)) from None
    for part in reversed(parts):
        value = {part: value}
    return value


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Config file (with its base) < per_algo < `--set` overrides; not yet resolved."""
    lower = []
    if path is not None:
        lower.append((str(path), read_file(Path(path))))
    return compose(lower, [("--set", parse_override(text)) for text in overrides])


def read_file(path: Path) -> dict:
    try:
        return yamlio.read_with_bases(path)
    except yamlio.YamlError as err:
        raise ConfigError(str(err)) from None


def help_config() -> str:
    """One line per config key: name, type, default, doc (`decnode-run --help-config`)."""
    lines = ["Config keys (YAML `section: {key: value}` or `--set section.key=value`; precedence: defaults < "
             "config file (< its base:) < per_algo.<algo> < flags and --set):"]
    for section, cls in SECTIONS.items():
        for name, (hint, f) in _fields(cls).items():
            default = "null" if f.default is None else [] if f.default is dataclasses.MISSING else f.default
            lines.append(f"  {section + '.' + name:<26} {_type_name(hint):<12} = {default!s:<14} {_doc(f.metadata)}")
    lines.append(f"  {'per_algo.<algo>.<key>':<26} {'mapping':<12}   {'':<14} train keys for one algorithm "
                 f"({', '.join(COMBINERS.names())})")
    lines.append(f"  {'faults':<26} {'list':<12} = {'[]':<14} injected failures, e.g. [{{kind: stall, rank: 1, "
                 "iteration: 3, seconds: 5}] (kinds: kill, stall, drop, delay, link_down; README 'When things fail')")
    return "\n".join(lines)


def _doc(metadata) -> str:
    """A key's doc; a name checked against a registry lists the registry's names (with the plugins loaded)."""
    registry = metadata.get("names") or metadata.get("check")
    if not isinstance(registry, Registry):
        return metadata["doc"]
    names = " | ".join(spelled + (f": {entry.doc}" if getattr(entry, "doc", "") else "")
                       for spelled, (_, entry) in zip(registry.spelled(), registry.items()))
    return f"{metadata['doc']}: {names}" if metadata["doc"] else names


# The checks of every key and of the keys together (checks.py); imported last, as they use the above.
from .checks import check_values, resolve  # noqa: E402,F401
