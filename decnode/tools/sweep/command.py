"""decnode-sweep: a grid of decnode-run cells, J at a time, resumable, under one progress bar.

    decnode-sweep configs/sweeps/quick_spread_n3.yaml --jobs 2     (--dry-run lists the cells and their states)

The sweep file (YAML): `config` (base config, required), `overlays`, `out`, `processes`, `set`, `grid`, `seeds`;
paths are relative to the sweep file (configs/sweeps/*.yaml show every key). Every cell is composed and validated
with decnode's own config machinery, and every command the sweep will start is checked by decnode-run's own checks
(plan.py), before anything is written; bad input is one line on stderr and exit code 2, and --dry-run refuses
exactly what the run would. A cell name longer than the filesystem takes is shortened (its start and a digest).

The sweep directory holds sweep.yaml (the file as given and the resolved cells), configs/<cell>.yaml (the cell's
resolved config: `decnode-run --config` it to rerun by hand), cells/<cell>/ (a normal run directory),
logs/<cell>.log (the cell's output), logs/<cell>.json (attempts, last exit code, wall seconds), runs.csv and
sweep.log, and decnode-report's report/; nothing else (sweepplan.check_dir: a directory holding other files, or a
non-empty one without decnode's sweep.yaml, is refused before anything is written, in a dry run too). A cell's state
comes from its directory: done (every iteration logged and models.pt written: skipped), stopped (a checkpoint:
resumed), failed (its last attempt exited non-zero: reported and skipped, since rerunning a NaN or a bad environment
would fail again; --retry-failed runs it again, from its checkpoint if it has one), pending (started from scratch).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ... import yamlio
from ...job import metricsfile, rundir
from ...cli import OneLineParser, fail
from ...config import ConfigError
from . import slurm, status
from .file import Cell, cells_of, load_sweep
from .plan import command, config_text, cores, info, logged, plan, state, take_lock

PROG = "decnode-sweep"
STOP_WAIT_S = 120.0  # a cell finishes its iteration and checkpoints; beyond this it is killed


# ---- what a cell's directory says ---------------------------------------------------------------------------------
def _metrics(run_dir: Path) -> list[dict]:
    return metricsfile.records(run_dir)


def csv_row(out: Path, cell: Cell, status: str) -> dict:
    d, m = cell.run_dir, _metrics(cell.run_dir)
    last10 = [x["train_reward"] for x in m[-10:] if x.get("train_reward") is not None]
    evals = [x["eval_reward"] for x in m if x.get("eval_reward") is not None]
    try:
        gen = json.loads((d / "eval.json").read_text())["modes"]["average"]
    except (OSError, ValueError, KeyError, TypeError):
        gen = None
    try:
        manifest = json.loads((d / rundir.MANIFEST).read_text())
        commits = [manifest.get("git_commit"), *manifest.get("resumed_git_commits", [])]
    except (OSError, ValueError, AttributeError):
        commits = []
    return {"cell": cell.name, "status": status, **cell.values, "iterations": m[-1]["iteration"] if m else 0,
            "env_steps": m[-1]["env_steps"] if m else 0,
            "train_reward": sum(last10) / len(last10) if last10 else "", "eval_reward": evals[-1] if evals else "",
            "gen_train": gen["train"]["return"] if gen else "", "gen_test": gen["test"]["return"] if gen else "",
            "gen_gap": gen["gap"] if gen else "", "wall_s": round(info(out, cell).get("wall_s", 0.0), 1),
            "git_commit": ";".join(c for c in commits if c), "run_dir": str(d)}


def write_csv(out: Path, cells: list[Cell], states: dict) -> None:
    keys = list(dict.fromkeys(k for c in cells for k in c.values))
    fields = ["cell", "status", *keys, "iterations", "env_steps", "train_reward", "eval_reward", "gen_train",
              "gen_test", "gen_gap", "wall_s", "git_commit", "run_dir"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fields, restval="")
    writer.writeheader()
    writer.writerows(csv_row(out, c, states[c.name]) for c in cells)
    rundir.replace_atomically(out / "runs.csv", table.getvalue())  # whoever reads it mid-sweep sees a whole table


# ---- running --------------------------------------------------------------------------------------------------------
def prepare_dir(path: Path, out: Path, cells: list[Cell]) -> None:
    """Write sweep.yaml and each cell's config (plan() has checked that everything may be written)."""
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    summary = {"sweep_file": str(path.resolve()), "given": path.read_text(),
               "cells": [{"name": c.name, "values": c.values, "processes": c.procs, "config": str(c.config_file),
                          "run_dir": str(c.run_dir)} for c in cells]}
    rundir.replace_atomically(out / "sweep.yaml", yamlio.dump(summary))  # whole or absent: it marks the directory ours
    for c in cells:
        text = config_text(c)
        if not c.config_file.exists() or c.config_file.read_text().split("\n", 1)[-1] != text:
            c.config_file.write_text(f"# cell {c.name} of {path}: decnode-run --config {c.config_file} "
                                     f"--nproc {c.procs} --out {c.run_dir}\n{text}")


def sweep_log(out: Path, text: str) -> None:
    with open(out / "sweep.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


class Sweep:
    def __init__(self, path: Path, out: Path, cells: list[Cell], jobs: int, states: dict):
        self.path, self.out, self.cells, self.jobs, self.states = path, out, cells, jobs, dict(states)
        self.signum = None

    def log(self, text: str) -> None:
        sweep_log(self.out, text)

    def start(self, c: Cell) -> None:
        how = self.states[c.name]
        cmd = [sys.executable, "-m", "decnode.run", *command(c, how, self.jobs)]  # the command plan() checked
        self.log(f"start {c.name} ({'resume' if how == 'stopped' else 'from scratch'}): {' '.join(cmd)}")
        with open(self.out / "logs" / f"{c.name}.log", "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n")
            log.flush()
            # Own process group: the terminal's Ctrl-C reaches only us, and we stop each cell cleanly.
            c.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, env={**os.environ, "TQDM_DISABLE": "1"})
        c.started = time.time()
        self.states[c.name] = "running"
        write_csv(self.out, self.cells, self.states)

    def finish(self, c: Cell, interrupted: bool = False) -> None:
        rc = c.proc.returncode
        last = info(self.out, c)
        record = {"attempts": last.get("attempts", 0) + 1, "exit": rc, "interrupted": interrupted,
                  "wall_s": last.get("wall_s", 0.0) + time.time() - c.started}
        (self.out / "logs" / f"{c.name}.json").write_text(json.dumps(record) + "\n")
        c.proc = None
        self.states[c.name] = st = state(self.out, c)
        self.log(f"{st} {c.name} (exit {rc}, {record['wall_s']:.0f} s)")
        if st == "failed":
            tail = (self.out / "logs" / f"{c.name}.log").read_text(errors="replace").strip().splitlines()[-1:]
            self._write(f"{PROG}: cell {c.name} failed (exit {rc}): {tail[0] if tail else ''} "
                        f"[{self.out / 'logs' / c.name}.log]")
        write_csv(self.out, self.cells, self.states)

    def _write(self, text: str) -> None:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)

    def _progress(self, cache: dict) -> int:
        total = 0
        for c in self.cells:
            if c.proc is not None or c.name not in cache:
                cache[c.name] = min(logged(c.run_dir), c.cfg.train.iterations)
            total += cache[c.name]
        return total

    def run(self) -> int:
        from tqdm import tqdm

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: setattr(self, "signum", self.signum or s))
        for c in self.cells:
            if self.states[c.name] in ("done", "failed"):
                self.log(f"skip {c.name} ({self.states[c.name]})")
        write_csv(self.out, self.cells, self.states)
        queue = [c for c in self.cells if self.states[c.name] in ("pending", "stopped")]
        cache: dict = {}
        bar = tqdm(total=sum(c.cfg.train.iterations for c in self.cells), initial=self._progress(cache),
                   desc="sweep", unit="it", dynamic_ncols=True, mininterval=1.0)
        running: list[Cell] = []
        while (queue or running) and self.signum is None:
            while queue and len(running) < self.jobs:
                running.append(queue.pop(0))
                self.start(running[-1])
            for c in [c for c in running if c.proc.poll() is not None]:
                running.remove(c)
                cache.pop(c.name, None)
                self.finish(c)
            bar.update(max(0, self._progress(cache) - bar.n))
            counts = {s: sum(v == s for v in self.states.values()) for s in ("done", "running", "failed")}
            bar.set_postfix(counts, refresh=False)
            time.sleep(0.5)
        if self.signum is not None:
            return self._stop(running, bar)
        bar.close()
        failed = [n for n, s in self.states.items() if s == "failed"]
        done = sum(s == "done" for s in self.states.values())
        print(f"{PROG}: {done} of {len(self.cells)} cells done; {self.out / 'runs.csv'}", flush=True)
        if failed:
            fail(PROG, f"{len(failed)} cells failed ({', '.join(failed[:4])}{', …' if len(failed) > 4 else ''}); "
                       f"their output is in {self.out / 'logs'}; rerun them with --retry-failed", code=1)
        return 0

    def _stop(self, running: list[Cell], bar) -> int:
        """SIGINT to every running cell: decnode-run checkpoints at its next iteration boundary and exits."""
        for c in running:
            try:
                os.killpg(c.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.time() + STOP_WAIT_S
        while any(c.proc.poll() is None for c in running) and time.time() < deadline:
            time.sleep(0.2)
        for c in running:
            if c.proc.poll() is None:
                self._write(f"{PROG}: cell {c.name} did not stop within {STOP_WAIT_S:.0f} s; killed (it resumes "
                            "from its last periodic checkpoint)")
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait()
            self.finish(c, interrupted=True)
        bar.close()
        saved = sum(self.states[c.name] == "stopped" for c in running)
        print(f"{PROG}: stopped; {saved} cells checkpointed — run the same command to resume", file=sys.stderr,
              flush=True)
        return 130


def submit(args, path: Path, out: Path, cells: list[Cell]) -> None:
    """--launcher slurm: every refusal first (sbatch, the plan of a local sweep, the partition, the cores a cell
    needs), then the unfinished cells (not done, not queued or running in SLURM, not failed unless --retry-failed)
    as job arrays (slurm.py); the sweep directory's lock is held only while submitting."""
    slurm.check_sbatch()

    def unfinished(locked: bool) -> tuple[dict, list[Cell]]:
        states = plan(path, out, cells, 1, args.retry_failed, locked=locked, queued=set(slurm.live(out, strict=True)))
        return states, [c for c in cells if states[c.name] in ("pending", "stopped")]

    states, todo = unfinished(False)
    slurm.check_cluster(path, todo, args.partition)
    opts = slurm.options(args.partition, args.time, args.sbatch_arg)
    if args.dry_run:
        for c in cells:
            print(f"{c.name:<44} processes {c.procs:<3} cores {slurm.cores_needed(c):<3} "
                  f"{'submit' if c in todo else 'skip'} ({states[c.name]})")
        print(f"{len(todo)} of {len(cells)} cells would be submitted as {len(slurm.groups(todo))} SLURM job "
              f"array(s) ({' '.join(opts) or 'no sbatch options'}); sweep directory {out}")
        return
    lock = take_lock(out)  # noqa: F841 - two submissions at once would submit the same cells twice
    states, todo = unfinished(True)
    prepare_dir(path, out, cells)
    for job, members, script in slurm.submit(path, out, todo, opts, lambda text: sweep_log(out, text)):
        print(f"{PROG}: submitted {len(members)} cells as SLURM job array {job} "
              f"({slurm.cores_needed(members[0])} cores each; {script})", flush=True)
    write_csv(out, cells, {**states, **{c.name: "queued" for c in todo}})
    counts = {k: sum(s == k for s in states.values()) for k in ("done", "running", "failed")}
    print(f"{PROG}: {len(todo)} of {len(cells)} cells submitted; {counts['done']} done, {counts['running']} queued or "
          f"running already, {counts['failed']} failed (skipped; --retry-failed submits them). "
          f"Their states: {PROG} {out} --status", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run a grid of decnode-run cells: resumable, J at a time.")
    p.add_argument("sweep", help="sweep file (YAML; see configs/sweeps/)")
    p.add_argument("--jobs", "-j", type=int, help="cells at once (default: the cores / processes per cell, ≥ 1)")
    p.add_argument("--out", help="sweep directory (default: the file's out:, else runs/sweeps/<file stem>)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the cells and their states; run nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed cells again (from their checkpoint if they have one)")
    p.add_argument("--status", action="store_true",
                   help="print each cell's state (SWEEP may be the sweep directory); with SLURM, its job's state")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run the cells here; slurm: submit the unfinished ones as a SLURM job array and exit")
    p.add_argument("--partition", help="SLURM partition (--launcher slurm; default: the cluster's default)")
    p.add_argument("--time", help="SLURM time limit per cell, e.g. 04:00:00 (--launcher slurm; a cell that runs "
                                  "out checkpoints and resumes at the next submission)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option, repeatable, written as given: --sbatch-arg=--mem=8G")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    path = Path(args.sweep)
    try:
        if args.jobs is not None and args.jobs < 1:
            raise ConfigError(f"--jobs must be ≥ 1, got {args.jobs}")
        if args.launcher != "slurm" and (args.partition or args.time or args.sbatch_arg):
            raise ConfigError("--partition, --time and --sbatch-arg are for --launcher slurm")
        if args.status:
            if path.is_dir() and args.out is None:
                out, cells = path, cells_of(path)
            else:
                out, cells = load_sweep(path, Path(args.out) if args.out else None)
            return status.show(out, cells)
        out, cells = load_sweep(path, Path(args.out) if args.out else None)
        if args.launcher == "slurm":
            return submit(args, path, out, cells)
        jobs = args.jobs or max(1, cores() // max(c.procs for c in cells))
        # cells a SLURM job array of this sweep holds are left to it (plain local sweeps: none)
        queued = set(slurm.live(out))
        states = plan(path, out, cells, jobs, args.retry_failed, queued=queued)  # before it writes anything
        if args.dry_run:
            for c in cells:
                print(f"{c.name:<44} processes {c.procs:<3} {states[c.name]:<8} "
                      f"{min(logged(c.run_dir), c.cfg.train.iterations)}/{c.cfg.train.iterations} it")
            counts = ", ".join(f"{sum(s == k for s in states.values())} {k}" for k in ("done", "stopped", "failed",
                                                                                          "pending"))
            if "running" in states.values():  # held by a SLURM job array of this sweep
                counts += f", {sum(s == 'running' for s in states.values())} running"
            print(f"{len(cells)} cells ({counts}), {sum(c.cfg.train.iterations for c in cells)} iterations; "
                  f"--jobs {jobs}; sweep directory {out}")
            return
        lock = take_lock(out)  # noqa: F841 - held until we exit: two sweeps would start the same cells twice
        states = plan(path, out, cells, jobs, args.retry_failed, locked=True, queued=queued)  # again: another
        # sweep may have run meanwhile
        prepare_dir(path, out, cells)
    except ConfigError as err:
        fail(PROG, str(err))
    except OSError as err:
        fail(PROG, f"{err.filename or 'I/O'}: {err.strerror or err}")
    sys.exit(Sweep(path, out, cells, jobs, states).run())


if __name__ == "__main__":
    main()
