"""Entry point: parse -> validate -> (launch processes | join as a worker) -> train.

    decnode-run --nproc 10 --k 4                                   our launcher (torch's elastic launcher API)
    torchrun --standalone --nproc-per-node 10 -m decnode.run --k 4  torchrun; each worker joins here
    decnode-run --nproc 1 --agents-per-process 10 --k 4            all agents in one process, no process group

Bad input ends in one line on stderr, exit code 2, before any process starts and before the run directory is
touched. Config sources, lowest first: defaults < --config file (< its base:) < per_algo.<algo> < flags, --set.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from .. import yamlio
from ..net import faults, profile
from . import cores, dirlock, preflight, restart, resume, rundir
from ..elastic import attempt, max_restarts
from ..extensions import COMBINERS, CRITICS, combiner, job_graph
from ..cli import OneLineParser
from ..cli import fail as _fail
from ..config import Config, ConfigError, compose, from_dict, help_config, parse_override, read_file, resolve
from ..config import DEFAULT_CONFIG
from .launch import WorkerEnv, torchrun_env


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="decnode-run", description="Train DecPG / PS with one process per agent block.",
                      epilog="Every config key: decnode-run --help-config")
    p.add_argument("--nproc", "--nproc-per-node", type=int, default=None, dest="nproc",
                   help="number of processes to start (ignored under torchrun, which sets it)")
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name} in configs/)")
    # Names are checked against the registries once the plugins are loaded (config.compose), not by argparse.
    p.add_argument("--algo", metavar="NAME", help=f"algorithm: {', '.join(COMBINERS.names())} or a plugin's "
                   "(config algo.name)")
    p.add_argument("--k", type=int, help="kNN topology: neighbours per agent (config algo.k)")
    p.add_argument("--topology", metavar="NAME", help="the gossip graph: knn (default, the paper's ring of --k), ring, "
                   "torus, exp, exp1peer, random_regular, complete, file:PATH (config algo.topology)")
    p.add_argument("--critic", metavar="NAME", help=f"critic placement: {', '.join(CRITICS.names())} or a plugin's "
                   "(config algo.critic)")
    p.add_argument("--iterations", type=int, help="training iterations (config train.iterations)")
    p.add_argument("--seed", type=int, help="random seed (config train.seed)")
    p.add_argument("--agents-per-process", type=int, help="agents held by each process (config algo.agents_per_process)")
    p.add_argument("--out", help="run directory (config run.out)")
    p.add_argument("--net", metavar="NAME|FILE",
                   help=f"simulate a network: {', '.join(profile.PRESETS)} or a YAML file (config net.profile)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a module or .py file first, in every process: it may register algorithms, critic "
                        "placements or environments (repeatable; config run.plugins)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. train.lr=1e-3 or per_algo.ps.lr=0.5 (see --help-config)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--max-restarts", type=int, default=None, metavar="R",
                   help="when a rank dies, restart every worker up to R times, each continuing from the last "
                        "checkpoint (default 0; under torchrun pass torchrun's own --max-restarts)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run directory decnode made (deletes only decnode's own files in it)")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the memory and open-file estimate made before starting (see README)")
    p.add_argument("--verbose", action="store_true", help="show torch's launcher logs")
    p.add_argument("--help-config", action="store_true", help="list every config key with its type, default and doc")
    p.add_argument("--print-config", action="store_true",
                   help="check everything, print the resolved config that would train, start nothing")
    return p


def _agent_handles(signum: int) -> bool:
    """torchrun's agent acts on this signal (its --signals-to-handle, which it passes to its workers)."""
    names = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT")
    return signal.Signals(signum).name in {n.strip() for n in names.split(",")}


def under_torchrun() -> bool:
    """Started by torchrun (a complete, valid set of its variables); False when they are absent or broken."""
    try:
        return torchrun_env() is not None
    except ConfigError:
        return False


def _cli_layers(args: argparse.Namespace) -> list[tuple[str, dict]]:
    flags = {"algo": {"name": args.algo, "k": args.k, "topology": args.topology, "critic": args.critic,
                      "agents_per_process": args.agents_per_process},
             "train": {"iterations": args.iterations, "seed": args.seed},
             "run": {"out": args.out, "plugins": args.plugin or None},
             "net": {"profile": args.net}}
    flags = {s: {k: v for k, v in kv.items() if v is not None} for s, kv in flags.items()}
    return [("command line", flags), *(("--set", parse_override(text)) for text in args.set)]


def prepare(args: argparse.Namespace, n_procs: int, run_id: str | None = None,
            restarted: bool = False, config: dict | None = None) -> tuple[Config, Path, dict | None, list[str]]:
    """Config, run directory, checkpoint and notes for stdout; raises ConfigError/CheckpointError.
    `restarted`: torchrun started this command again after a failure (its checkpoint may be the last one).
    `config`: the --config file's content, given by a caller that has not written the file yet."""
    if args.resume:
        return resume.prepare(args, n_procs, _cli_layers(args), restarted)
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    cfg = compose([(str(path), read_file(path) if config is None else config)], _cli_layers(args))
    resolve(cfg, n_procs)
    cfg.net.profile = profile.record(cfg.net.profile)
    run_dir = Path(cfg.run.out) if cfg.run.out is not None else default_run_dir(cfg, run_id)
    cfg.run.out = str(run_dir)
    return cfg, run_dir, None, []


def default_run_dir(cfg: Config, run_id: str | None = None) -> Path:
    # Under torchrun every worker computes this alone: the shared run id keeps them in agreement.
    tag = run_id[:8] if run_id else time.strftime("%Y%m%d-%H%M%S")
    env = cfg.env.name.replace(":", "_")
    k = f"-k{cfg.algo.k}" if combiner(cfg.algo.name).gossips else ""
    return Path("runs") / f"{env}-n{cfg.env.n_agents}-{cfg.algo.name}{k}-s{cfg.train.seed}-{tag}"


def set_up_run_dir(cfg: Config, run_dir: Path, resume: bool, overwrite: bool, job: str | None = None) -> list[str]:
    """Rank 0 only, once per job: check, lock, then (and only then) create the run directory and its config.yaml."""
    notes = []
    if resume:
        rundir.lock(run_dir, job)
    else:
        rundir.prepare(run_dir, overwrite)  # refused here, nothing is written (not even a lock file)
        rundir.lock(run_dir, job)
        note = rundir.prepare(run_dir, overwrite)  # again under the lock: another job may have been there meanwhile
        notes += [note] if note else []
        rundir.create(run_dir)
    text = _yaml(cfg.to_dict())
    path = run_dir / rundir.CONFIG
    try:
        old = path.read_text() if path.is_file() else None
        if old != text:
            if resume and old is not None:
                notes.append(f"{path} rewritten with the resolved config that trains")
            # Atomically: under torchrun the other workers may be reading it while rank 0 writes.
            rundir.replace_atomically(path, text)
        rundir.mark(run_dir)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
    return notes


def _yaml(data: dict) -> str:
    return yamlio.dump(data)


def network_profile(cfg: Config, n_procs: int | None = None):
    """The run's network profile (net/profile.py); a bad name or file, or one that would do nothing, is a
    ConfigError."""
    return profile.job_profile(cfg, n_procs)


def worker(cfg_dict: dict, run_dir: str, resume: bool) -> dict:
    """What every process runs (under our launcher, torchrun, or alone)."""
    import torch

    from ..comm.fabric import open_fabric
    from ..net.link import Link
    from .logger import RunLogger
    from .trainer import train

    cfg = from_dict(cfg_dict, "launcher")
    torch.set_num_threads(cfg.run.threads or cores.intra_op_threads())
    run_dir, rank = Path(run_dir), int(os.environ.get("RANK", "0"))
    if attempt():  # the elastic agent started us again after a failure: continue by ourselves
        resume = (run_dir / ckpt.CHECKPOINT).exists()  # else start over, in the same directory
    state = ckpt.load(run_dir) if resume else None
    record = None
    if attempt() and rank == 0:
        saved = state["iteration"] if state else None
        record = restart.record(run_dir, int(os.environ.get("WORLD_SIZE", "1")), saved)
        print(f"decnode-run: {restart.describe(record)}", flush=True)
    graph = job_graph(cfg)  # PS never gossips: its graph has no edges
    with restart.noted(run_dir, rank, record), \
            open_fabric(cfg.env.n_agents, graph, cfg.run.timeout_s, exchange=cfg.run.exchange,
                        link=lambda rank, world: Link.for_job(cfg, rank, world),
                        hang_warning_s=cfg.run.hang_warning_s) as fabric:
        restarts = restart.unlogged(run_dir, state and state["iteration"]) if record else None
        try:
            summary = train(cfg, fabric, run_dir, state, restarts)
        except BaseException:
            RunLogger.abandon()
            raise
    if summary.get("signal") and under_torchrun() and _agent_handles(summary["signal"]):
        # Checkpoint written and the group torn down: now let the launcher's signal end this process, as it
        # expects (it would otherwise wait for a return value nobody reads, then SIGKILL us). A signal the agent
        # leaves alone (launch/slurm.sbatch: SLURM signals every rank itself) ends the rank as a finished one.
        signal.signal(summary["signal"], signal.SIG_DFL)
        dirlock.release_all()  # the signal skips atexit: a stop is not a death, so leave no lock behind
        os.kill(os.getpid(), summary["signal"])
    return summary


def fail(message: str, code: int = 2) -> None:
    _fail("decnode-run", message, code)


def _check(args: argparse.Namespace, env: WorkerEnv | None,
           config: dict | None = None) -> tuple[Config, Path, list[str], int]:
    """Everything that can be refused, in the order a user would fix it; the run directory is touched last."""
    if args.max_restarts is not None and args.max_restarts < 0:
        raise ConfigError(f"--max-restarts must be ≥ 0, got {args.max_restarts}")
    if env is not None:
        n_procs = env.world_size
        if args.nproc not in (None, n_procs):
            raise ConfigError(f"--nproc {args.nproc} disagrees with torchrun's {n_procs} processes")
        if args.max_restarts not in (None, max_restarts()):
            raise ConfigError(f"--max-restarts {args.max_restarts} disagrees with torchrun's "
                              f"--max-restarts {max_restarts()} (pass it to torchrun)")
    else:
        n_procs = 1 if args.nproc is None else args.nproc
        if n_procs < 1:
            raise ConfigError(f"--nproc must be ≥ 1, got {n_procs}")
    restarted = env is not None and attempt() > 0
    first, job = env is None or env.rank == 0, env.run_id if env else None
    guard = first and not restarted and not args.print_config  # says who uses the run directory, if anybody
    if guard and args.resume:  # a live run is named before its checkpoint is read
        rundir.refuse_if_busy(Path(args.resume), job)
    cfg, run_dir, state, notes = prepare(args, n_procs, job, restarted, config)
    if guard:
        rundir.refuse_if_busy(run_dir, job)
    done = state["iteration"] if state and not restarted else 0  # a restarted job runs no faults: none to refuse
    del state  # workers load the checkpoint themselves (it may be large to pickle to every process)
    if cfg.run.device == "xla" and (env is not None or args.max_restarts):
        raise ConfigError("run.device=xla starts its own device threads (--nproc devices): run it with decnode-run "
                          "and without --max-restarts" + (", not under torchrun" if env is not None else ""))
    network_profile(cfg, n_procs)
    faults.validate(cfg, n_procs, done)
    preflight.check_dependencies(cfg)
    if not args.no_preflight:
        preflight.check_resources(cfg, n_procs)
    if args.print_config:
        return cfg, run_dir, notes, n_procs
    if not first:
        # Another torchrun worker writes into the run directory only after the process group forms, which rank 0
        # joins once it holds the lock; with restarts it first leaves its note (restart.py), so it waits for the
        # lock (the directory is shared then: every rank reloads the checkpoint from it).
        if max_restarts() and not dirlock.wait_for(run_dir, rundir.LOCK, job, attempt(), cfg.run.timeout_s):
            raise ConfigError(f"rank 0 did not lock {run_dir} within run.timeout_s={cfg.run.timeout_s:g} s")
        return cfg, run_dir, notes, n_procs
    if restarted:  # torchrun runs the whole command again: the run directory is this job's, never replaced
        # Its rank 0 of the last attempt is gone, and with it the lock: take it again (unless another job did).
        rundir.lock(run_dir, job, attempt(), wait_s=cfg.run.timeout_s)
        return cfg, run_dir, [], n_procs
    # Once per job, whoever launched it: this process holds the lock for the job's life (our launcher's workers
    # are its children; torchrun's other workers waited above).
    notes += set_up_run_dir(cfg, run_dir, bool(args.resume), args.overwrite, job)
    return cfg, run_dir, notes, n_procs


def check_command(argv: list[str], config: dict | None = None) -> Config:
    """What `decnode-run ARGV` refuses before it starts (ConfigError, CheckpointError, OSError), writing nothing;
    `config`: its --config file's content when that is not written yet. decnode-sweep checks every cell it will
    start with this, so that neither its dry run nor its run promises a cell that decnode-run then refuses."""
    args = build_parser().parse_args([*argv, "--print-config"])
    cfg, run_dir, _, _ = _check(args, None, config)
    if not args.resume:
        rundir.prepare(run_dir, args.overwrite)  # what set_up_run_dir() checks first; it only reads
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.help_config:
        print(help_config())
        return
    env = None
    try:
        env = torchrun_env()
        cfg, run_dir, notes, n_procs = _check(args, env)
    except (ConfigError, ckpt.CheckpointError, OSError) as err:
        if isinstance(err, OSError):  # a path we could not read: say which, in one line
            err = ConfigError(f"{err.filename or 'I/O'}: {err.strerror or err}")
        # Under torchrun every worker finds the same error: each says it, so no worker ends without a word.
        fail(str(err) if env is None or env.rank == 0 else f"rank {env.rank}: {err}")
    if args.print_config:
        print(_yaml(cfg.to_dict()), end="")
        return
    for note in notes if env is None or env.rank == 0 else ():  # under torchrun every worker has them: one says
        print(f"decnode-run: {note}", flush=True)
    payload = (cfg.to_dict(), str(run_dir), bool(args.resume))
    restarts = args.max_restarts or 0
    xla = cfg.run.device == "xla"  # one process, a thread per XLA device (launch_xla.py)
    if xla or env is not None or (n_procs == 1 and not restarts):  # one process that nothing restarts runs here
        from ..comm.transport import CommError
        from .trainer import NonFiniteError
        try:
            if xla:
                from .launch_xla import run_on_devices
                run_on_devices(*payload, devices=n_procs)
            else:
                worker(*payload)
        except (NonFiniteError, rundir.RunDirWriteError, CommError) as err:
            if env is not None:
                raise  # the launcher reports it
            fail(str(err), code=1)
        return
    from .launch import launch
    sys.exit(launch(n_procs, worker, payload, run_dir, verbose=args.verbose, max_restarts=restarts))


if __name__ == "__main__":
    main()
