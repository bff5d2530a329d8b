"""A sweep's plan: each cell's state and the decnode-run command that runs it, with everything the sweep or that
command would refuse checked first, writing nothing. `decnode-sweep --dry-run` prints the plan; a real sweep makes
the same plan before it writes anything, and again once it holds the directory's lock, so a dry run cannot promise
what the run then refuses, and a refused sweep leaves its directory as it was."""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path

from ... import yamlio
from ...job import checkpoint, dirlock, metricsfile, rundir
from .. import outputs
from ...cli import check_output
from ...job.cores import allowed
from ...config import ConfigError, from_dict, read_file
from ...job.run import check_command  # decnode-run's own checks, not a copy of them
from .file import Cell

LOCK = ".sweep.lock"
# What a cell's decnode-run sets in its config.yaml beyond the cell's config: not a difference of the run.
OWN_RUN_KEYS = ("out", "threads")


def cores() -> int:
    return len(allowed())


# ---- what a cell's directory says ---------------------------------------------------------------------------------
def logged(run_dir: Path) -> int:
    """Iterations run_dir's metrics.jsonl holds, read as every command reads it (metricsfile: a cut line dropped)."""
    return len(metricsfile.records(run_dir))


def info(out: Path, cell: Cell) -> dict:
    try:
        return json.loads((out / "logs" / f"{cell.name}.json").read_text())
    except (OSError, ValueError):
        return {}


def state(out: Path, cell: Cell, retry_failed: bool = False) -> str:
    d = cell.run_dir
    # A finished run leaves models.pt and every iteration in metrics.jsonl (a stop also writes models.pt).
    if (d / "models.pt").exists() and logged(d) >= cell.cfg.train.iterations:
        return "done"
    last = info(out, cell)
    if not retry_failed and last.get("exit") not in (None, 0) and not last.get("interrupted"):
        return "failed"
    return "stopped" if (d / checkpoint.CHECKPOINT).exists() else "pending"


# ---- the command --------------------------------------------------------------------------------------------------
def threads(jobs: int, cell: Cell, n_cores: int | None = None) -> int:
    """J cells side by side share the cores (n_cores: a SLURM task's allocation, else this process's cores)."""
    return max(1, (n_cores or cores()) // (jobs * cell.procs))


def command(cell: Cell, how: str, jobs: int, n_cores: int | None = None) -> list[str]:
    """decnode-run's arguments for a cell in state `how`: a stopped cell resumes, any other starts from scratch
    (--overwrite clears only decnode's own files: a failed or killed attempt of this very cell)."""
    args = ["--nproc", str(cell.procs), "--set", f"run.threads={threads(jobs, cell, n_cores)}"]
    if how == "stopped":
        return args + ["--resume", str(cell.run_dir)]
    fresh = ["--config", str(cell.config_file), "--out", str(cell.run_dir)]
    return args + fresh + ["--overwrite"] * cell.run_dir.exists()


def config_text(cell: Cell) -> str:
    """configs/<cell>.yaml below its comment line: the cell's resolved config (read back unchanged by yamlio)."""
    return yamlio.dump(cell.cfg.to_dict())


# ---- checks -------------------------------------------------------------------------------------------------------
def _comparable(data: dict, source: str) -> dict:
    cfg = from_dict(data, source).to_dict()  # every key, whichever decnode wrote it
    cfg["run"] = {k: v for k, v in cfg["run"].items() if k not in OWN_RUN_KEYS}
    return cfg


def _ran_with(cell: Cell) -> Path | None:
    """The file recording another config this cell trained with (its configs/ entry, or the run directory's own
    config.yaml, which says what really trained), or None."""
    new = _comparable(cell.cfg.to_dict(), "the sweep")
    for old in (cell.config_file, cell.run_dir / "config.yaml"):
        if not old.exists():
            continue
        try:
            if _comparable(read_file(old), str(old)) != new:
                return old
        except ConfigError:
            return old
    return None


def check_lock(out: Path) -> None:
    """Refuse while another decnode-sweep holds the directory (naming it); probed without creating anything."""
    record = dirlock.holder(out, LOCK)
    if record is not None:
        raise ConfigError(f"another decnode-sweep is running in {out}{dirlock.describe(record)}")


def take_lock(out: Path) -> dirlock.Lock:
    """The sweep directory, made if need be, and its lock, held until this process exits; a lock left by a sweep
    that died is taken over, said on stderr."""
    held = dirlock.acquire(out, LOCK, "decnode-sweep", f"another decnode-sweep is running in {out}{{holder}}")
    if held.left_by is not None:
        print(f"decnode-sweep: {out} was locked by a sweep that died{dirlock.describe(held.left_by)}; taking it over",
              file=sys.stderr, flush=True)
    return held


def _check_layout(path: Path, out: Path, cells: list[Cell]) -> None:
    """The sweep's own folders can be made and written, and no folder sits where it writes a file."""
    for sub in ("configs", "logs", "cells"):
        try:
            check_output(out / sub, "directory")
        except ValueError as err:
            raise ConfigError(f"{path}: sweep directory: {err}") from None
    files = [out / "sweep.yaml", out / "runs.csv", out / "runs.csv.tmp", out / "sweep.log"]
    files += [f for c in cells for f in (c.config_file, *(out / "logs" / f"{c.name}{x}" for x in (".log", ".json")))]
    for f in files:
        if f.is_dir():
            raise ConfigError(f"{path}: sweep directory: {f} is a directory where the sweep writes a file")


# What decnode-sweep writes into its directory; cells/ holds run directories (decnode-run guards their files) and
# report/ is decnode-report's default output (outputs.py guards it).
WRITES = ("sweep.yaml", "sweep.yaml.tmp", "runs.csv", "runs.csv.tmp", "sweep.log", LOCK, "configs/*.yaml",
          "logs/*.log", "logs/*.json",
          "slurm*.sbatch", "slurm.json", "slurm.json.tmp", "logs/slurm-*.out")  # --launcher slurm (slurm.py)


def _made_by_sweep(out: Path) -> bool:
    """sweep.yaml is decnode-sweep's record of the directory (prepare_dir writes it before anything else)."""
    try:
        data = yamlio.parse((out / "sweep.yaml").read_text(), str(out / "sweep.yaml"))
    except (OSError, UnicodeDecodeError, yamlio.YamlError):
        return False
    return isinstance(data, dict) and {"sweep_file", "given", "cells"} <= set(data)


def check_dir(path: Path, out: Path) -> None:
    """ConfigError (one line) unless the sweep directory is new, empty, or one decnode-sweep made holding only what
    decnode writes: a sweep replaces sweep.yaml, runs.csv, configs/<cell>.yaml and logs/<cell>.json in it."""
    if not out.is_dir():
        return
    mine, lost = _made_by_sweep(out), []

    def real_dir(p: Path) -> bool:
        return p.is_dir() and not p.is_symlink()

    def ours(rel: str, p: Path) -> bool:
        if not (mine and p.is_file() and not p.is_symlink() and any(fnmatch.fnmatchcase(rel, w) for w in WRITES)):
            return False
        if rel.startswith("configs/"):  # decnode's cell configs start with their "# cell …" line
            with open(p, "rb") as f:
                return f.read(7) == b"# cell "
        return True

    for entry in sorted(out.iterdir()):
        name = entry.name
        if name == LOCK and entry.is_file() and not entry.is_symlink():
            continue  # the lock (its holder's record inside), taken before sweep.yaml is written
        if name == "report" and real_dir(entry):
            try:  # decnode-report's default output, guarded as every output directory is
                outputs.check_dir(entry)
            except ValueError as err:
                raise ConfigError(f"{path}: {err}") from None
        elif name in ("configs", "logs", "cells") and mine and real_dir(entry):
            for sub in sorted(entry.iterdir()):  # a cell's run directory: decnode-run guards its files
                if not (real_dir(sub) if name == "cells" else ours(f"{name}/{sub.name}", sub)):
                    lost.append(f"{name}/{sub.name}" + ("/" if real_dir(sub) else ""))
        elif not ours(name, entry):
            lost.append(name + ("/" if real_dir(entry) else ""))
    if lost and not mine:
        raise ConfigError(f"{path}: sweep directory {out} is not empty and was not made by decnode-sweep (no "
                          f"sweep.yaml of its own); it holds {outputs.listing(lost)}: nothing is written, choose "
                          "another out")
    if lost:
        raise ConfigError(f"{path}: sweep directory {out} holds files decnode did not write "
                          f"({outputs.listing(lost)}); nothing is written: move them or choose another out")


def plan(path: Path, out: Path, cells: list[Cell], jobs: int, retry_failed: bool, locked: bool = False,
         queued: set | frozenset = frozenset()) -> dict:
    """{cell name: state}; ConfigError (one line naming the sweep file and the cell) for anything the sweep or a
    cell's decnode-run would refuse. Writes nothing. `locked`: this process holds the directory's lock. `queued`:
    cells a SLURM job array of this sweep holds (pending or running, slurm.live): "running", left to it."""
    if not locked:
        check_lock(out)
    check_dir(path, out)
    _check_layout(path, out, cells)
    states = {c.name: state(out, c, retry_failed) for c in cells}
    for c in cells:
        if c.name in queued and states[c.name] != "done":
            states[c.name] = "running"
            continue
        how = states[c.name]
        # A cell that trained keeps its config: another one would no longer be the run the sweep file describes.
        ran = _ran_with(c) if how != "pending" else None
        if ran is not None:
            raise ConfigError(f"{path}: cell {c.name} already ran with another config ({ran}); use another out: or "
                              "delete the cell's files")
        if how not in ("pending", "stopped"):
            continue  # done or failed: skipped, nothing starts
        try:
            # a job of its own in the cell's directory (decnode-run by hand) would make the cell's run refuse
            rundir.refuse_if_busy(c.run_dir)
            check_command(command(c, how, jobs), yamlio.parse(config_text(c), str(c.config_file)))
        except (ConfigError, checkpoint.CheckpointError, yamlio.YamlError) as err:
            raise ConfigError(f"{path}: cell {c.name}: {err}") from None
        except OSError as err:
            raise ConfigError(f"{path}: cell {c.name}: {err.filename or 'I/O'}: {err.strerror or err}") from None
    return states
