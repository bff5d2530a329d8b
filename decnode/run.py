"""Entry point: parse -> validate -> (launch processes | join as a worker) -> train.

    decnode-run --nproc 10 --k 4                                   our launcher (torch's elastic launcher API)
    torchrun --standalone --nproc-per-node 10 -m decnode.run --k 4  torchrun; each worker joins here
    decnode-run --nproc 1 --agents-per-process 10 --k 4            all agents in one process, no process group

Bad input ends in one line on stderr, exit code 2, before any process group forms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from . import checkpoint as ckpt
from .config import Config, ConfigError, apply, load, parse_override, resolve

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "simple_spread.yaml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decnode-run", description="Train DecPG / PS with one process per agent block.")
    p.add_argument("--nproc", "--nproc-per-node", type=int, default=None, dest="nproc",
                   help="number of processes to start (ignored under torchrun, which sets it)")
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name} in configs/)")
    p.add_argument("--algo", choices=("decpg", "ps", "ps_entropy"), help="algorithm (config algo.name)")
    p.add_argument("--k", type=int, help="kNN topology: neighbours per agent (config algo.k)")
    p.add_argument("--critic", choices=("central", "local"), help="critic placement (config algo.critic)")
    p.add_argument("--iterations", type=int, help="training iterations (config train.iterations)")
    p.add_argument("--seed", type=int, help="random seed (config train.seed)")
    p.add_argument("--agents-per-process", type=int, help="agents held by each process (config algo.agents_per_process)")
    p.add_argument("--out", help="run directory (config run.out)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    return p


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_RANK" in os.environ


def prepare(args: argparse.Namespace, n_procs: int) -> tuple[Config, Path, dict | None]:
    """Config, run directory and checkpoint from the command line; raises ConfigError/CheckpointError."""
    state = None
    if args.resume:
        state = ckpt.load(Path(args.resume))
        cfg = Config()
        apply(cfg, {k: v for k, v in state["config"].items() if k != "per_algo"}, "checkpoint")
        cfg.run.stop_after = None  # a planned stop is over once we resume (unless asked again below)
    else:
        cfg = load(args.config or DEFAULT_CONFIG)
    flags = {"algo": {"name": args.algo, "k": args.k, "critic": args.critic,
                      "agents_per_process": args.agents_per_process},
             "train": {"iterations": args.iterations, "seed": args.seed}, "run": {"out": args.out}}
    apply(cfg, {s: {k: v for k, v in kv.items() if v is not None} for s, kv in flags.items()}, "command line")
    for text in args.set:
        apply(cfg, parse_override(text), "--set")
    if state is not None:  # before resolve, so a changed env or algorithm is named as such
        ckpt.check_compatible(state["config"], cfg.to_dict())
    resolve(cfg, n_procs)
    if state is not None:
        ckpt.check_compatible(state["config"], cfg.to_dict())
        run_dir = Path(args.resume)
    else:
        run_dir = Path(cfg.run.out or default_run_dir(cfg))
    cfg.run.out = str(run_dir)
    return cfg, run_dir, state


def default_run_dir(cfg: Config) -> Path:
    # Under torchrun every worker computes this alone: the shared run id keeps them in agreement.
    tag = os.environ.get("TORCHELASTIC_RUN_ID", "")[:8] if under_torchrun() else time.strftime("%Y%m%d-%H%M%S")
    env = cfg.env.name.replace(":", "_")
    k = f"-k{cfg.algo.k}" if cfg.algo.name == "decpg" else ""
    return Path("runs") / f"{env}-n{cfg.env.n_agents}-{cfg.algo.name}{k}-s{cfg.train.seed}-{tag}"


def create_run_dir(cfg: Config, run_dir: Path, resume: bool, overwrite: bool) -> None:
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            if not overwrite:
                raise ConfigError(f"run directory {run_dir} exists; pass --resume {run_dir} or --overwrite")
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(_yaml(cfg.to_dict()))


def _yaml(data: dict) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)


def worker(cfg_dict: dict, run_dir: str, resume: bool) -> dict:
    """What every process runs (under our launcher, torchrun, or alone)."""
    import torch

    from .comm import open_fabric
    from .trainer import train

    torch.set_num_threads(1)  # many processes share few cores: intra-op threads only fight each other
    cfg = Config()
    apply(cfg, {k: v for k, v in cfg_dict.items() if k != "per_algo"}, "launcher")
    state = ckpt.load(Path(run_dir)) if resume else None
    k = cfg.algo.k if cfg.algo.name == "decpg" else 0  # PS never gossips: its k is not a topology
    with open_fabric(cfg.env.n_agents, k, cfg.run.timeout_s, exchange=cfg.run.exchange) as fabric:
        summary = train(cfg, fabric, Path(run_dir), state)
    if summary.get("signal") and under_torchrun():
        # Checkpoint written and the group torn down: now let the launcher's signal end this process, as it
        # expects (it would otherwise wait for a return value nobody reads, then SIGKILL us).
        signal.signal(summary["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), summary["signal"])
    return summary


def fail(message: str, code: int = 2) -> None:
    print(f"decnode-run: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torchrun = under_torchrun()
    if torchrun:
        n_procs = int(os.environ["WORLD_SIZE"])
        if args.nproc not in (None, n_procs):
            fail(f"--nproc {args.nproc} disagrees with torchrun's {n_procs} processes")
    else:
        n_procs = 1 if args.nproc is None else args.nproc
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        if not isinstance(n_procs, int) or n_procs < 1:
            raise ConfigError(f"--nproc must be ≥ 1, got {n_procs}")
        cfg, run_dir, state = prepare(args, n_procs)
        if rank0:  # one writer; under torchrun the other workers wait for it in the rendezvous
            create_run_dir(cfg, run_dir, state is not None, args.overwrite)
    except (ConfigError, ckpt.CheckpointError, ValueError) as err:
        if not rank0:  # under torchrun every worker finds the same error; one of them says it
            sys.exit(2)
        fail(str(err))
    del state  # workers load the checkpoint themselves (it may be large to pickle to every process)
    payload = (cfg.to_dict(), str(run_dir), bool(args.resume))
    if torchrun or n_procs == 1:
        worker(*payload)
        return
    from .launch import launch
    sys.exit(launch(n_procs, worker, payload, run_dir))


if __name__ == "__main__":
    main()
