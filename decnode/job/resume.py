"""decnode-run --resume RUN_DIR: the config a resumed run trains with, what it changes, and what it refuses.

The run keeps its config (the checkpoint's, under the run's config.yaml, which the user may have edited); flags and
--set may change only checkpoint.RESUMABLE keys, and every change is listed on stdout, not made silently.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from . import checkpoint as ckpt
from . import metricsfile, rundir
from ..config import ConfigError, compose, from_dict, resolve
from ..net import faults, profile


def prepare(args, n_procs: int, cli: list, restarted: bool = False):
    """The run's own config (checkpoint < its config.yaml, which the user may have edited) < flags and --set (`cli`:
    their config layers).
    Only checkpoint.RESUMABLE keys may differ from the checkpoint; the changes are listed, not made silently."""
    run_dir = Path(args.resume)
    if args.config:
        raise ConfigError(f"--config cannot apply to --resume: the run keeps its config; edit {run_dir}/config.yaml "
                          "(iterations, eval.*, run.*) or pass --set")
    if args.overwrite:
        raise ConfigError("--overwrite cannot apply to --resume (it would delete the run being resumed)")
    if args.out is not None and Path(args.out).resolve() != run_dir.resolve():
        raise ConfigError(f"--out cannot apply to --resume: the run stays in {run_dir}")
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"cannot resume: {run_dir} is not a directory")
    if not (run_dir / ckpt.CHECKPOINT).exists() and (run_dir / rundir.MANIFEST).exists():
        why = ("it was deleted, or the run stopped before its first one" if rundir.has_trained(run_dir) else
               "the run stopped before its first one")
        raise ckpt.CheckpointError(f"no checkpoint in {run_dir} ({why}): start the run again from iteration 0 "
                                   f"with {start_again(run_dir)}")
    state = ckpt.load(run_dir)
    saved = from_dict(state["config"], f"checkpoint {run_dir}").to_dict()
    # Injected faults belong to the attempt that ran them: a resume runs only those given again with --set.
    lower = [(f"checkpoint {run_dir}", {k: v for k, v in saved.items() if k not in ("per_algo", "faults")})]
    yaml_path = run_dir / rundir.CONFIG
    if yaml_path.is_file():
        lower.append((str(yaml_path), {k: v for k, v in rundir.read_config(run_dir).items() if k != "faults"}))
    cfg = compose(lower, cli)
    cfg.run.out = str(run_dir)
    given_stop = any("stop_after" in layer.get("run", {}) for _, layer in cli)
    if not any("agents_per_process" in layer.get("algo", {}) for _, layer in cli):
        cfg.algo.agents_per_process = None  # derived again from the process count, which may change on resume
    done = state["iteration"]
    if not given_stop and cfg.run.stop_after is not None and cfg.run.stop_after <= done:
        cfg.run.stop_after = None  # the planned stop is over; a new one must be asked for
    _refuse_identity_changes(saved, cfg.to_dict())  # before resolve, so a changed env or algorithm is named as such
    resolve(cfg, n_procs)
    cfg.net.profile = profile.record(cfg.net.profile)
    new = cfg.to_dict()
    _refuse_identity_changes(saved, new)
    if cfg.train.iterations <= done and not restarted:  # a restart may have only the end left to do
        raise ConfigError(f"train.iterations={cfg.train.iterations}: the checkpoint in {run_dir} is already at "
                          f"iteration {done}; pass --iterations N with N > {done}")
    if cfg.run.stop_after is not None and cfg.run.stop_after <= done and not restarted:
        raise ConfigError(f"run.stop_after={cfg.run.stop_after} is not after the checkpoint's iteration {done}")
    changes = _changes(saved, new) + ([f"faults: {'; '.join(map(faults.describe, cfg.faults))}"] if cfg.faults else [])
    notes = [f"resuming {run_dir} at iteration {done}" + (f", with changes: {', '.join(changes)}" if changes else "")]
    if not ckpt.has_digest(run_dir / ckpt.CHECKPOINT):
        notes.append(f"{run_dir / ckpt.CHECKPOINT} predates digest files: checked by its zip CRCs only "
                     "(the next checkpoint gets one)")
    try:  # the worker's logger rewrites metrics.jsonl by the same plan (the run directory is locked meanwhile)
        plan = metricsfile.plan_resume(run_dir, done, state.get("metrics_line"),
                                       f", or start the run again from iteration 0 with {start_again(run_dir)}")
    except metricsfile.MetricsError as err:
        raise ConfigError(str(err)) from None
    given_net = any("profile" in layer.get("net", {}) for _, layer in cli)
    drift = None if given_net else _profile_drift(cfg.net.profile)
    return cfg, run_dir, state, notes + plan.notes + ([drift] if drift else [])


def _changes(saved: dict, new: dict) -> list[str]:
    """What a resume changes, key by key (a recorded network profile too: each of its keys that differs)."""
    out = []
    for section, values in new.items():
        if section in ("per_algo", "faults"):
            continue
        for key, value in values.items():
            old = saved[section][key]
            if old == value or (section, key) == ("run", "out"):
                continue
            if isinstance(old, dict) and isinstance(value, dict):
                out += [f"{section}.{key}.{k} {old.get(k)!r} → {value.get(k)!r}" for k in {**old, **value}
                        if old.get(k) != value.get(k)]
            else:
                out.append(f"{section}.{key} {old!r} → {value!r}")
    return out


def _profile_drift(recorded) -> str | None:
    """A note when the file a run recorded its profile from has changed since: the run keeps its record (as it
    keeps its config), and the user who edited the file learns how to use it."""
    if not isinstance(recorded, dict) or not recorded.get("file"):
        return None
    try:
        now = profile.record(recorded["file"])
    except ConfigError:
        return None  # gone or broken: nothing is taken from it
    differ = [f"{k} {recorded.get(k)!r} → {now[k]!r}" for k in now if recorded.get(k) != now[k]]
    return (f"note: {recorded['file']} changed since this run recorded it ({', '.join(differ)}); the run keeps its "
            f"recorded profile (config.yaml net.profile): pass --net {recorded['file']} to take the file's"
            if differ else None)


def start_again(run_dir: Path) -> str:
    """The command that trains the run in run_dir again from iteration 0 with the config it trained, in place
    (what a resume cannot do without a checkpoint)."""
    overwrite = " --overwrite" if rundir.has_trained(run_dir) else ""  # else prepare() replaces it by itself
    path = run_dir / rundir.CONFIG
    try:
        cfg = rundir.read_config(run_dir)
        nproc = int(cfg["env"]["n_agents"]) // int(cfg["algo"]["agents_per_process"])
    except (ConfigError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return f"your first command and --out {run_dir}{overwrite} (its config.yaml is missing or unreadable)"
    faults = " --set 'faults=[]'" if cfg.get("faults") else ""  # they belonged to the attempt that ran them
    return (f"decnode-run --config {shlex.quote(str(path))} --nproc {nproc} --out {shlex.quote(str(run_dir))}"
            f"{faults}{overwrite}")


def _refuse_identity_changes(saved: dict, new: dict) -> None:
    changed = ckpt.identity_change(saved, new)
    if changed:
        section, key, old, value = changed
        raise ckpt.CheckpointError(
            f"cannot resume: {section}.{key} was {old!r} in the checkpoint, now {value!r} "
            "(a resume may change only train.iterations, eval.*, run.*, net.* and the process count)")
