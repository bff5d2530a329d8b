"""Evaluate a finished run in the paper's four settings (A.6), on the train env and the perturbed test env.

    decnode-eval RUN_DIR [--mode average|average_stochastic|local|individual|all] [--episodes 32]
                 [--test-episodes 1000] [--nproc P] [--out eval.json]

Modes (rows [n, D] = which actor parameters control agents 0…n−1):
  average             θ̄ for every agent, argmax actions (the paper's headline number)
  average_stochastic  θ̄ for every agent, sampled actions
  local               agent i acts with its own θᵢ, argmax
  individual          θⱼ controls every agent (with agent groups: every agent of j's group, the others playing their
                      group's θ̄), for each j in turn, argmax; mean and population std over j
Every mode runs on the train env (`--episodes`, seed train.seed + EVAL_SEED_OFFSET, as the trainer evaluates)
and on the test env (`--test-episodes`, seed train.seed + TEST_SEED_OFFSET, observations + c·std Gaussian noise
and ε-random actions); gap = test − train.

Results do not depend on the number of processes: episode e always starts from env seed (seed, e), its test
noise (PerturbedEnv) and its sampled actions (Evaluator) come from streams seeded by e, and each rank plays a
contiguous share of episodes (where the env class is `splittable`, e.g. batched Simple Spread; otherwise rank 0
plays them all). Only the order in which the per-rank sums are added changes, i.e. the last bits of the means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .. import envs
from ..job.checkpoint import CheckpointError, identity_change, load_file
from ..job.rundir import CONFIG, MODELS, read_config, replace_atomically
from ..cli import AnalysisError, OneLineParser, fail
from .outputs import Writer, check_files
from ..comm.transport import Collectives
from ..config import ConfigError
from ..envs.perturb import test_env_wrapper
from ..marl.evaluate import EVAL_SEED_OFFSET, TEST_SEED_OFFSET, Evaluator
from ..envs.base import agent_spaces
from ..nn.grouped import GroupShape
from ..nn.models import RecurrentNet

MODES = ("average", "average_stochastic", "local", "individual")


# ---- run directory -------------------------------------------------------------------------------------------
def load_models(run_dir: str | Path) -> dict:
    """models.pt of a finished run, verified (checkpoint.load_file) and checked against the run's config.yaml;
    AnalysisError (one line) when it is missing, corrupt, or not this run's."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AnalysisError(f"run directory not found: {run_dir}")
    path = run_dir / MODELS
    if not path.is_file():
        raise AnalysisError(f"no {MODELS} in {run_dir} (is the run finished?)")
    try:
        models = load_file(path)
    except CheckpointError as err:
        raise AnalysisError(str(err)) from None
    if not isinstance(models, dict):
        raise AnalysisError(f"{path} is not a decnode models.pt")
    missing = {"actor_rows", "actor_mean", "config", "obs_dim", "n_actions", "obs_std"} - set(models)
    if missing:
        raise AnalysisError(f"{path} lacks {', '.join(sorted(missing))} (written by an older decnode?)")
    check_models(models, path)
    return models


def check_models(models: dict, path: Path) -> None:
    """A models.pt is the run's own: the config it was trained with agrees with the run's config.yaml on what no
    resume may change, and its tensors have the shapes that config makes. Otherwise a tool would evaluate other
    agents and write its results into this run (AnalysisError naming both values)."""
    ours, yaml_path = models["config"], path.parent / CONFIG
    source = f"its config ({path.name})"
    if yaml_path.is_file():
        try:
            run = read_config(path.parent)
        except ConfigError as err:
            raise AnalysisError(str(err)) from None
        changed = identity_change(run, ours)  # the rule of what a resume may change (checkpoint.RESUMABLE)
        if changed:
            section, key, theirs, mine = changed
            raise AnalysisError(f"{path} was trained with {section}.{key}={mine!r} but {yaml_path} has "
                                f"{section}.{key}={theirs!r}: not this run's models")
        source = str(yaml_path)
    n, hidden = ours["env"]["n_agents"], ours["train"]["hidden"]
    od, K, rows = models["obs_dim"], models["n_actions"], models["actor_rows"]
    if not isinstance(rows, torch.Tensor) or rows.dim() != 2 or rows.shape[0] != n:
        shape = list(rows.shape) if isinstance(rows, torch.Tensor) else type(rows).__name__
        raise AnalysisError(f"{path} holds actor_rows {shape}, not one row per agent: {source} has env.n_agents={n}")
    grouped = models.get("groups")
    D = models.get("width") if grouped else sum(p.numel() for p in RecurrentNet(1, od, K, hidden).parameters())
    mean_shape = [n, D] if grouped else [D]
    if rows.shape[1] != D or list(getattr(models["actor_mean"], "shape", ())) != mean_shape:
        raise AnalysisError(f"{path} holds {rows.shape[1]} actor parameters per agent, but obs_dim={od}, "
                            f"n_actions={K} and train.hidden={hidden} ({source}) make {D}")
    shape = list(np.shape(models["obs_std"]))  # a numpy array (or a tensor)
    if shape[-1:] != [od]:
        raise AnalysisError(f"{path} holds obs_std {shape}, not one entry per observation (obs_dim={od})")
    make = env_factory(ours, n)
    if make.cls.splittable:  # cheap to build (no JIT, no game): the environment says what the actor reads
        env = make(1)
        spaces = [(g["obs_dim"], g["n_actions"]) for g in grouped for _ in range(*g["agents"])] if grouped else None
        if spaces is not None and spaces != agent_spaces(env):
            raise AnalysisError(f"{path} holds agent groups with spaces {spaces}, but {ours['env']['name']} has "
                                f"{agent_spaces(env)}")
        if (env.obs_dim, env.n_actions) != (od, K):
            raise AnalysisError(f"{path} holds obs_dim={od}, n_actions={K}, but {ours['env']['name']} with "
                                f"{n} agents has obs_dim={env.obs_dim}, n_actions={env.n_actions}")


def model_shapes(models: dict) -> dict:
    """The Evaluator's keywords for the actor a models.pt holds: obs_dim, n_actions, hidden, and with agent groups
    their shapes over all agents and the row width."""
    out = dict(obs_dim=models["obs_dim"], n_actions=models["n_actions"], hidden=models["config"]["train"]["hidden"])
    if models.get("groups"):
        out.update(shapes=[GroupShape(g, slice(*group["agents"]), group["obs_dim"], group["n_actions"])
                           for g, group in enumerate(models["groups"])], width=models["width"])
    return out


def mean_rows(models: dict) -> torch.Tensor:
    """θ̄ as rows for every agent [n, D] (with agent groups: each agent's group's mean)."""
    mean, n = models["actor_mean"].float(), models["actor_rows"].shape[0]
    return mean if mean.dim() == 2 else mean.expand(n, -1)


def individual_rows(models: dict, j: int) -> torch.Tensor:
    """θⱼ for every agent of j's group (every agent without groups); the other groups play their θ̄."""
    rows, mean = models["actor_rows"].float(), mean_rows(models)
    if not models.get("groups"):
        return rows[j].expand(rows.shape[0], -1)
    out = mean.clone()
    for group in models["groups"]:
        lo, hi = group["agents"]
        if lo <= j < hi:
            out[lo:hi] = rows[j]
    return out


def parse_modes(text: str) -> list[str]:
    """'all', one mode, or a comma-separated list."""
    if text == "all":
        return list(MODES)
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AnalysisError(f"unknown mode '{','.join(bad) or text}' (choose from {', '.join(MODES)}, all)")
    return modes


def eval_seeds(cfg: dict) -> tuple[int, int]:
    """(train-env seed, test-env seed) for a run's config dict."""
    seed = cfg["train"]["seed"]
    return seed + EVAL_SEED_OFFSET, seed + TEST_SEED_OFFSET


def env_factory(cfg: dict, n: int) -> envs.EnvFactory:
    """The run's environments (as the trainer builds them) from its config dict."""
    return envs.config_factory(cfg["env"], n)


# ---- the four modes ------------------------------------------------------------------------------------------
def _summary(result: dict, wins: bool) -> dict:
    out = {"return": result["return"], "episodes": result["episodes"]}
    if wins:
        out["win_rate"] = result["win_rate"]
    return out


def _individual(results: list[dict], wins: bool) -> dict:
    rets = np.array([r["return"] for r in results])
    out = {"return": float(rets.mean()), "return_std": float(rets.std()), "per_agent": rets.tolist(),
           "episodes": results[0]["episodes"]}
    if wins:
        w = np.array([r["win_rate"] for r in results])
        out.update(win_rate=float(w.mean()), win_rate_std=float(w.std()))
    return out


def evaluate_run(run_dir: str | Path, modes: str | list[str], episodes: int | None = None,
                 test_episodes: int | None = None, group: Collectives | None = None, *,
                 models: dict | None = None) -> dict:
    """Every rank of `group` (default: this process alone) calls this; all return the same dict. None
    episodes: the config's values. modes: names from MODES, or "all" (AnalysisError for others). models:
    models.pt's dict (default: read it). The ranks share the episodes where the env class is splittable;
    the number of ranks need not divide the number of agents.
    """
    modes = parse_modes(modes if isinstance(modes, str) else ",".join(modes))
    models = models if models is not None else load_models(run_dir)
    cfg, rows_all, mean = models["config"], models["actor_rows"].float(), mean_rows(models)
    n = rows_all.shape[0]
    group = group if group is not None else Collectives()
    episodes = episodes or cfg["eval"]["episodes"]
    test_episodes = test_episodes or cfg["eval"]["test_episodes"]
    seed_train, seed_test = eval_seeds(cfg)
    make = env_factory(cfg, n)
    wins = make.cls.has_win
    common = dict(n_agents=n, **model_shapes(models))
    splits = {"train": (Evaluator(group, make, episodes=episodes, **common), seed_train),
              "test": (Evaluator(group, make, episodes=test_episodes,
                                 wrap=test_env_wrapper(cfg, models["obs_std"], seed_test), **common),
                       seed_test)}
    settings = {"average": [(mean, True)], "average_stochastic": [(mean, False)],
                "local": [(rows_all, True)], "individual": [(individual_rows(models, j), True) for j in range(n)]}
    out = {"run_dir": str(run_dir), "env": cfg["env"]["name"], "algo": cfg["algo"]["name"], "k": cfg["algo"]["k"],
           "n_agents": n, "iteration": models.get("iteration"), "processes": group.world,
           "episodes": {"train": episodes, "test": test_episodes},
           "seeds": {"train": seed_train, "test": seed_test},
           "test_env": {"obs_noise": cfg["eval"]["obs_noise"], "action_noise": cfg["eval"]["action_noise"]},
           "modes": {}}
    for mode in modes:
        entry = {}
        for split, (evaluator, seed) in splits.items():
            results = [evaluator.run(rows, seed, deterministic=det) for rows, det in settings[mode]]
            entry[split] = _individual(results, wins) if mode == "individual" else _summary(results[0], wins)
        entry["gap"] = entry["test"]["return"] - entry["train"]["return"]
        if wins:
            entry["gap_win_rate"] = entry["test"]["win_rate"] - entry["train"]["win_rate"]
        out["modes"][mode] = entry
    return out


def format_result(result: dict) -> str:
    lines = [f"{result['run_dir']}: {result['algo']} k={result['k']} n={result['n_agents']} "
             f"iteration {result['iteration']} — train {result['episodes']['train']} / "
             f"test {result['episodes']['test']} episodes",
             f"{'mode':<20}{'train':>12}{'test':>12}{'gap':>12}"]
    for mode, e in result["modes"].items():
        std = lambda s: f"±{e[s]['return_std']:.3f}" if "return_std" in e[s] else ""  # noqa: E731
        lines.append(f"{mode:<20}{e['train']['return']:>12.3f}{e['test']['return']:>12.3f}{e['gap']:>12.3f}"
                     + (f"   (std over j: train {std('train')}, test {std('test')})" if mode == "individual" else ""))
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    replace_atomically(path, json.dumps(data, indent=1))


def eval_worker(run_dir: str, modes: list[str], episodes: int | None, test_episodes: int | None, out: str,
                timeout_s: float) -> None:
    """What each process runs under launch(); rank 0 writes the result."""
    from ..comm.transport import open_collectives

    torch.set_num_threads(1)  # several processes share few cores
    with open_collectives(timeout_s) as group:
        result = evaluate_run(run_dir, modes, episodes, test_episodes, group)
        if group.rank == 0:
            _write_json(Path(out), result)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="decnode-eval", description="Evaluate a finished run in the paper's four settings.")
    p.add_argument("run_dir", help="run directory holding models.pt")
    p.add_argument("--mode", default="all", help=f"{'|'.join(MODES)}|all, or a comma-separated list (default all)")
    p.add_argument("--episodes", type=int, default=None, help="train-env episodes (default: config eval.episodes)")
    p.add_argument("--test-episodes", type=int, default=None,
                   help="test-env episodes (default: config eval.test_episodes)")
    p.add_argument("--nproc", type=int, default=1, help="processes to split the episodes over (default 1)")
    p.add_argument("--out", default="eval.json", help="output JSON; a relative path is inside RUN_DIR; an existing "
                   "file is replaced only if decnode wrote it")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        modes = parse_modes(args.mode)
        for name in ("episodes", "test_episodes", "nproc"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise AnalysisError(f"--{name.replace('_', '-')} must be ≥ 1, got {value}")
        run_dir = Path(args.run_dir)
        models = load_models(run_dir)
        out = Path(args.out) if Path(args.out).is_absolute() else run_dir / args.out
        check_files([out])  # before the work, not after it: new, or decnode's own result
    except (AnalysisError, ValueError) as err:
        fail("decnode-eval", str(err))
    try:
        with Writer(out.parent) as w:  # replaces `out` only once the new result is whole
            staged = w.path(out.name)
            if args.nproc == 1:
                result = evaluate_run(run_dir, modes, args.episodes, args.test_episodes, models=models)
                _write_json(staged, result)
            else:
                from ..job.launch import launch
                payload = (str(run_dir), modes, args.episodes, args.test_episodes, str(staged),
                           float(models["config"]["run"]["timeout_s"]))
                code = launch(args.nproc, eval_worker, payload, run_dir, prog="decnode-eval")
                if code or not staged.is_file():
                    sys.exit(code or 1)  # the previous result, if any, stays as it was
                result = json.loads(staged.read_text())
    except OSError as err:
        fail("decnode-eval", f"could not write {out}: {err.strerror or err}")
    print(format_result(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
