"""decnode-sweep: a grid of decnode-run cells, J at a time, resumable, under one progress bar.

    decnode-sweep configs/sweeps/quick_spread_n3.yaml --jobs 2     (--dry-run lists the cells and their states)

The sweep file (YAML): `config` (base config, required), `overlays`, `out`, `processes`, `set`, `grid`, `seeds`;
paths are relative to the sweep file (configs/sweeps/*.yaml show every key). Every cell is composed and validated
with decnode's own config machinery before anything starts; bad input is one line on stderr and exit code 2.

The sweep directory holds sweep.yaml (the file as given and the resolved cells), configs/<cell>.yaml (the cell's
resolved config: `decnode-run --config` it to rerun by hand), cells/<cell>/ (a normal run directory),
logs/<cell>.log (the cell's output), logs/<cell>.json (attempts, last exit code, wall seconds), runs.csv and
sweep.log. A cell's state comes from its directory: done (every iteration logged and models.pt written: skipped),
stopped (a checkpoint: resumed), failed (its last attempt exited non-zero: reported and skipped, since rerunning
a NaN or a bad environment would fail again; --retry-failed runs it again, from its checkpoint if it has one),
pending (started from scratch).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import preflight, rundir, yamlio
from .cli import OneLineParser, check_output, fail
from .config import ConfigError, compose, read_file, resolve
from .smac_maps import N_AGENTS as SMAC_MAPS

PROG = "decnode-sweep"
KEYS = ("config", "overlays", "out", "processes", "set", "grid", "seeds")
STOP_WAIT_S = 120.0  # a cell finishes its iteration and checkpoints; beyond this it is killed


@dataclass
class Cell:
    name: str
    values: dict  # dotted key -> value, in grid order (then train.seed)
    cfg: object
    procs: int
    config_file: Path = None
    run_dir: Path = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _nest(key, value, where: str) -> dict:
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{where}: '{key}' is not a dotted config key (section.key, e.g. train.lr)")
    for part in reversed(parts):
        value = {part: value}
    return value


def _layer(values: dict, where: str) -> dict:
    out: dict = {}
    for key, value in values.items():
        out = yamlio.merge(out, _nest(key, value, where))
    return out


def _label(value) -> str:
    text = {True: "true", False: "false", None: "null"}[value] if value is None or isinstance(value, bool) else str(value)
    text = text.replace("e+", "e")  # 1e+30 -> 1e30: sanitising the + to - would read as 1e-30
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def cell_name(values: dict) -> str:
    return "_".join(f"{_label(k.split('.')[-1])}-{_label(v)}" for k, v in values.items())


def _grid_values(path: Path, data: dict) -> list[dict]:
    """The cells' grid values: a mapping is one product, a list of mappings the union of their products."""
    grid = data.get("grid")
    products = grid if isinstance(grid, list) else [grid]
    if grid is None or not products or any(not p for p in products):
        raise ConfigError(f"{path}: grid is empty (give `grid: {{section.key: [values, …]}}` or a list of those)")
    cells = []
    for i, product in enumerate(products):
        where = f"{path}: grid" + (f"[{i}]" if isinstance(grid, list) else "")
        if not isinstance(product, dict):
            raise ConfigError(f"{where} must be a mapping of dotted keys to lists of values, got {product!r:.60}")
        for key, options in product.items():
            _nest(key, None, where)
            if not isinstance(options, list) or not options:
                raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {options!r:.60}")
            if any(isinstance(o, (dict, list)) for o in options):
                raise ConfigError(f"{where}.{key}: grid values must be scalars, got {options!r:.60}")
        cells += [dict(zip(product, combo)) for combo in itertools.product(*product.values())]
    seeds = data.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r:.60}")
        if any("train.seed" in c for c in cells):
            raise ConfigError(f"{path}: train.seed is in the grid and in seeds; give it once")
        cells = [{**c, "train.seed": s} for c in cells for s in seeds]
    return cells


def load_sweep(path: Path, out: Path | None = None) -> tuple[Path, list[Cell]]:
    """The sweep file, its directory and every cell, composed and resolved; ConfigError (one line) otherwise."""
    try:
        data = yamlio.read(path)
    except yamlio.YamlError as err:
        raise ConfigError(str(err).replace("config file", "sweep file")) from None
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    if not isinstance(data.get("config"), str) or not data["config"].strip():
        raise ConfigError(f"{path}: `config:` must name the base config file (relative to the sweep file)")
    here = path.parent
    overlays = data.get("overlays") or []
    if not isinstance(overlays, list) or not all(isinstance(o, str) and o.strip() for o in overlays):
        raise ConfigError(f"{path}: overlays must be a list of config files, got {overlays!r:.60}")
    fixed = data.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set must be a mapping of dotted keys to values, got {fixed!r:.60}")
    procs_spec = data.get("processes", 1)
    if procs_spec != "agents" and (not isinstance(procs_spec, int) or isinstance(procs_spec, bool) or procs_spec < 1):
        raise ConfigError(f"{path}: processes must be 1, an integer dividing the agents, or 'agents'; got "
                          f"{procs_spec!r:.40}")
    if out is None:
        given = data.get("out")
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise ConfigError(f"{path}: out must be a directory path, got {given!r:.40}")
        out = here / given if given else Path("runs") / "sweeps" / path.stem
    out = out.resolve()
    try:
        check_output(out, "directory")
    except ValueError as err:
        raise ConfigError(f"{path}: sweep directory: {err}") from None
    try:
        lower = [(str(p), read_file(p)) for p in (here / data["config"], *(here / o for o in overlays))]
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    set_layer = _layer(fixed, f"{path}: set")
    cells, seen = [], {}
    for values in _grid_values(path, data):
        name = cell_name(values)
        key = frozenset((k, repr(v)) for k, v in values.items())
        if key in seen or name in (c.name for c in cells):
            raise ConfigError(f"{path}: cell {name} appears twice in the grid (duplicate cell or colliding names)")
        seen[key] = name
        cells.append(_make_cell(path, out, name, values, lower, set_layer, procs_spec))
    return out, cells


def _make_cell(path, out, name, values, lower, set_layer, procs_spec) -> Cell:
    upper = [(f"{path}: set", set_layer), (f"{path}: cell {name}", _layer(values, f"{path}: cell {name}"))]
    try:
        cfg = compose(lower, upper)
        if procs_spec == "agents":
            kind, _, map_name = cfg.env.name.partition(":")
            procs = SMAC_MAPS.get(map_name) if kind in ("smax", "smac") else cfg.env.n_agents
            if procs is None:
                raise ConfigError("processes: agents needs env.n_agents (or a SMAC map)")
        else:
            procs = procs_spec
        cfg.run.out = str(out / "cells" / name)
        resolve(cfg, procs)
        preflight.check_dependencies(cfg)
    except ConfigError as err:
        text = str(err)
        raise ConfigError(text if text.startswith(str(path)) else f"{path}: cell {name}: {text}") from None
    return Cell(name, values, cfg, procs, out / "configs" / f"{name}.yaml", out / "cells" / name)


# ---- what a cell's directory says ---------------------------------------------------------------------------------
def _metrics(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _logged(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def _info(out: Path, cell: Cell) -> dict:
    try:
        return json.loads((out / "logs" / f"{cell.name}.json").read_text())
    except (OSError, ValueError):
        return {}


def state(out: Path, cell: Cell, retry_failed: bool = False) -> str:
    d = cell.run_dir
    # A finished run leaves models.pt and every iteration in metrics.jsonl (a stop also writes models.pt).
    if (d / "models.pt").exists() and _logged(d) >= cell.cfg.train.iterations:
        return "done"
    info = _info(out, cell)
    if not retry_failed and info.get("exit") not in (None, 0) and not info.get("interrupted"):
        return "failed"
    return "stopped" if (d / "checkpoint.pt").exists() else "pending"


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
            "gen_gap": gen["gap"] if gen else "", "wall_s": round(_info(out, cell).get("wall_s", 0.0), 1),
            "git_commit": ";".join(c for c in commits if c), "run_dir": str(d)}


def write_csv(out: Path, cells: list[Cell], states: dict) -> None:
    keys = list(dict.fromkeys(k for c in cells for k in c.values))
    fields = ["cell", "status", *keys, "iterations", "env_steps", "train_reward", "eval_reward", "gen_train",
              "gen_test", "gen_gap", "wall_s", "git_commit", "run_dir"]
    tmp = out / "runs.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, restval="")
        writer.writeheader()
        writer.writerows(csv_row(out, c, states[c.name]) for c in cells)
    os.replace(tmp, out / "runs.csv")  # whoever reads it mid-sweep sees a whole table


# ---- running --------------------------------------------------------------------------------------------------------
def _dump(cfg_dict: dict) -> str:
    import yaml
    return yaml.safe_dump(cfg_dict, sort_keys=False)


def _same_config(path: Path, cfg_dict: dict) -> bool:
    try:
        old = read_file(path)
    except ConfigError:
        return False
    strip = lambda d: {**d, "run": {k: v for k, v in d.get("run", {}).items() if k != "out"}}  # noqa: E731
    return strip(old) == strip(cfg_dict)


def prepare_dir(path: Path, out: Path, cells: list[Cell], states: dict) -> None:
    """Write sweep.yaml and each cell's config; a trained cell whose config changed is refused (its run would
    no longer be the one the sweep file describes)."""
    for c in cells:
        if states[c.name] != "pending" and c.config_file.exists() and not _same_config(c.config_file, c.cfg.to_dict()):
            raise ConfigError(f"{path}: cell {c.name} already ran with another config ({c.config_file}); use another "
                              "out: or delete the cell's files")
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    summary = {"sweep_file": str(path.resolve()), "given": path.read_text(),
               "cells": [{"name": c.name, "values": c.values, "processes": c.procs, "config": str(c.config_file),
                          "run_dir": str(c.run_dir)} for c in cells]}
    (out / "sweep.yaml").write_text(_dump(summary))
    for c in cells:
        text = _dump(c.cfg.to_dict())
        if not c.config_file.exists() or c.config_file.read_text().split("\n", 1)[-1] != text:
            c.config_file.write_text(f"# cell {c.name} of {path}: decnode-run --config {c.config_file} "
                                     f"--nproc {c.procs} --out {c.run_dir}\n{text}")


class Sweep:
    def __init__(self, path: Path, out: Path, cells: list[Cell], jobs: int, retry_failed: bool):
        self.path, self.out, self.cells, self.jobs, self.retry = path, out, cells, jobs, retry_failed
        self.states = {c.name: state(out, c, retry_failed) for c in cells}
        self.signum = None

    def log(self, text: str) -> None:
        with open(self.out / "sweep.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def start(self, c: Cell) -> None:
        threads = max(1, _cores() // (self.jobs * c.procs))  # J cells side by side share the cores
        cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(c.procs), "--set", f"run.threads={threads}"]
        how = self.states[c.name]
        if how == "stopped":
            cmd += ["--resume", str(c.run_dir)]
        else:  # --overwrite clears only decnode's own files: a failed or killed attempt of this very cell
            cmd += ["--config", str(c.config_file), "--out", str(c.run_dir)] + (["--overwrite"] * c.run_dir.exists())
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
        info = _info(self.out, c)
        info = {"attempts": info.get("attempts", 0) + 1, "exit": rc, "interrupted": interrupted,
                "wall_s": info.get("wall_s", 0.0) + time.time() - c.started}
        (self.out / "logs" / f"{c.name}.json").write_text(json.dumps(info) + "\n")
        c.proc = None
        self.states[c.name] = st = state(self.out, c)
        self.log(f"{st} {c.name} (exit {rc}, {info['wall_s']:.0f} s)")
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
                cache[c.name] = min(_logged(c.run_dir), c.cfg.train.iterations)
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


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="Run a grid of decnode-run cells: resumable, J at a time.")
    p.add_argument("sweep", help="sweep file (YAML; see configs/sweeps/)")
    p.add_argument("--jobs", "-j", type=int, help="cells at once (default: the cores / processes per cell, ≥ 1)")
    p.add_argument("--out", help="sweep directory (default: the file's out:, else runs/sweeps/<file stem>)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the cells and their states; run nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="run failed cells again (from their checkpoint if they have one)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    path = Path(args.sweep)
    try:
        if args.jobs is not None and args.jobs < 1:
            raise ConfigError(f"--jobs must be ≥ 1, got {args.jobs}")
        out, cells = load_sweep(path, Path(args.out) if args.out else None)
        jobs = args.jobs or max(1, _cores() // max(c.procs for c in cells))
        if not args.dry_run:  # two sweeps in one directory would start the same cells twice
            out.mkdir(parents=True, exist_ok=True)
            lock = open(out / ".sweep.lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"another decnode-sweep is running in {out}") from None
        sweep = Sweep(path, out, cells, jobs, args.retry_failed)
        if args.dry_run:
            for c in cells:
                print(f"{c.name:<44} processes {c.procs:<3} {sweep.states[c.name]:<8} "
                      f"{min(_logged(c.run_dir), c.cfg.train.iterations)}/{c.cfg.train.iterations} it")
            counts = ", ".join(f"{sum(s == k for s in sweep.states.values())} {k}"
                               for k in ("done", "stopped", "failed", "pending"))
            print(f"{len(cells)} cells ({counts}), {sum(c.cfg.train.iterations for c in cells)} iterations; "
                  f"--jobs {jobs}; sweep directory {out}")
            return
        prepare_dir(path, out, cells, sweep.states)
    except ConfigError as err:
        fail(PROG, str(err))
    except OSError as err:
        fail(PROG, f"{err.filename or 'I/O'}: {err.strerror or err}")
    sys.exit(sweep.run())


if __name__ == "__main__":
    main()
