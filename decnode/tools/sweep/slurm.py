"""decnode-sweep --launcher slurm: what SLURM is asked and told. A sweep's unfinished cells go to SLURM as one job
array per cell shape (cores per cell), one array task per cell, through plain `sbatch --array`: a script SLURM
copies at submission, which a reader can open and resubmit by hand, and nothing to install on a cluster's login
node (submitit would pickle a Python call per task instead, and needs the same Python on every node anyway).

Each task runs `python -m decnode.tools.sweep.task OUT CELL` (task.py), which starts the cell's decnode-run as a
local sweep does and records its end in logs/<cell>.json. SIGTERM reaches the task 120 s before the time limit
(--signal=B:TERM@120, B: the batch shell, which is the task: its script execs it), and the task passes it on:
decnode-run checkpoints at its next iteration boundary, and the next submission resumes it.

slurm.json records every submission (job id, cells in array order): status and a later submission find a cell's
SLURM state through it (squeue for live tasks by the sweep's job name; sacct, else scontrol, for ended ones).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ...config import ConfigError
from ...job import rundir
from .file import Cell

RECORD = "slurm.json"
SIGNAL_BEFORE_S = 120  # decnode-run's iteration plus its checkpoint fit well within this at the paper's sizes
LIVE = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
        "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending", "RUNNING": "running",
        "COMPLETING": "running", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running"}
TIMEOUT_S = 60


def cores_needed(cell: Cell) -> int:
    """A cell's cores: one per process, times its config's run.threads when it sets them."""
    return cell.procs * (cell.cfg.run.threads or 1)


def job_name(out: Path) -> str:
    """The sweep directory's own job name (its name and a digest of its path): squeue finds its tasks by it."""
    digest = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:8]
    return f"{out.resolve().name[:40]}-{digest}"


def _client(argv: list[str]) -> str:
    """A SLURM client command's output; ConfigError (one line) when it is missing or fails."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise ConfigError(f"--launcher slurm: {argv[0]} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"--launcher slurm: {argv[0]} did not answer in {TIMEOUT_S} s") from None
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        raise ConfigError(f"--launcher slurm: {' '.join(argv[:2])} failed: {lines[-1] if lines else res.returncode}")
    return res.stdout


# ---- refusals before anything is written --------------------------------------------------------------------------
def check_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise ConfigError("--launcher slurm: sbatch is not on PATH (submit from a machine with SLURM's client "
                          "commands)")


def check_cluster(path: Path, cells: list[Cell], partition: str | None) -> None:
    """The partition exists (sinfo) and some node of it has the cores each cell asks for (sinfo -o %c)."""
    listed = [p.strip() for p in _client(["sinfo", "-h", "-o", "%P"]).split()]
    names = [p.rstrip("*") for p in listed]
    if partition is not None and partition not in names:
        raise ConfigError(f"--partition {partition}: SLURM knows no such partition (sinfo lists "
                          f"{', '.join(names) or 'none'})")
    part = partition or next((p.rstrip("*") for p in listed if p.endswith("*")), None)
    where = ["-p", part] if part else []
    cpus = [int(c.rstrip("+")) for c in _client(["sinfo", "-h", "-N", "-o", "%c", *where]).split()
            if c.rstrip("+").isdigit()]
    most = max(cpus, default=0)
    for c in cells:
        need = cores_needed(c)
        if need > most:
            raise ConfigError(f"{path}: cell {c.name} needs {need} cores ({c.procs} processes × "
                              f"{c.cfg.run.threads or 1} threads) but no node of partition {part or '(default)'} "
                              f"has more than {most} (sinfo)")


# ---- the record of submissions --------------------------------------------------------------------------------
def record(out: Path) -> list[dict]:
    try:
        jobs = json.loads((out / RECORD).read_text()).get("jobs", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [j for j in jobs if isinstance(j, dict) and isinstance(j.get("cells"), list) and "job" in j]


def latest(out: Path) -> dict[str, tuple[str, int]]:
    """{cell name: (SLURM job id, array index)} of the last submission of each cell."""
    found = {}
    for job in record(out):
        for index, name in enumerate(job["cells"]):
            found[name] = (str(job["job"]), index)
    return found


def _append(out: Path, job: dict) -> None:
    rundir.replace_atomically(out / RECORD, json.dumps({"jobs": [*record(out), job]}, indent=1) + "\n")


# ---- what SLURM says of the cells -------------------------------------------------------------------------------
def live(out: Path, strict: bool = False) -> dict[str, tuple[str, str, str]]:
    """{cell name: (job id as J_i, "pending" | "running", SLURM's reason)} for the tasks of this sweep that SLURM
    still holds. Without slurm.json, or (unless strict) without a working squeue: {}."""
    cells = {(job, index): name for name, (job, index) in latest(out).items()}
    if not cells:
        return {}
    try:
        text = _client(["squeue", "-h", "-r", f"--name={job_name(out)}", "-o", "%F|%K|%T|%r"])
    except ConfigError:
        if strict:
            raise
        return {}
    found = {}
    for line in text.splitlines():
        job, index, st, reason = (line.split("|") + ["", "", "", ""])[:4]
        name = cells.get((job, int(index))) if index.isdigit() else None
        if name is not None and st in LIVE:
            found[name] = (f"{job}_{index}", LIVE[st], reason if reason not in ("None", "") else "")
    return found


def indexes(spec: str) -> list[int]:
    """SLURM's array index list ("3", "5-8", "1,3,5-8%2": tasks it never split off) as the indexes."""
    found = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (hi.isdigit() or not hi):
            found.extend(range(int(lo), int(hi or lo) + 1))
    return found


def ended(out: Path) -> dict[str, tuple[str, str]]:
    """{cell name: (job id as J_i, SLURM's final state, e.g. TIMEOUT, CANCELLED, FAILED)} for the last task of each
    cell, from sacct (accounting), else scontrol (jobs SLURM still remembers: MinJobAge); {} if neither knows."""
    cells = {(job, index): name for name, (job, index) in latest(out).items()}
    found = {}
    for job in sorted({j for j, _ in cells}):
        pairs = []
        try:
            for line in _client(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State"]).splitlines():
                jid, _, st = line.partition("|")
                m = re.fullmatch(rf"{job}_\[?([\d,%-]+)\]?", jid.strip())
                if m:
                    pairs += [(i, st.split()[0] if st.strip() else "") for i in indexes(m.group(1))]
        except ConfigError:  # no accounting (e.g. a one-machine cluster): what the controller still holds
            try:
                text = _client(["scontrol", "-o", "show", "job", job])
            except ConfigError:
                continue
            for line in text.splitlines():
                index, st = re.search(r"\bArrayTaskId=(\S+)", line), re.search(r"\bJobState=(\S+)", line)
                if index and st and re.search(rf"\bArrayJobId={job}\b", line):
                    pairs += [(i, st.group(1)) for i in indexes(index.group(1))]
        for index, st in pairs:
            if (job, index) in cells and st and st not in LIVE:
                found[cells[job, index]] = (f"{job}_{index}", st)
    return found


# ---- submitting -------------------------------------------------------------------------------------------------
def script_text(path: Path, out: Path, cells: list[Cell], cpus: int, options: list[str]) -> str:
    out = out.resolve()
    lines = ["#!/bin/bash",
             f"# decnode-sweep --launcher slurm: {path.resolve()}, {len(cells)} cells, one array task each.",
             "# Submitted by decnode-sweep, which skips finished and queued cells; `sbatch` this file by hand runs",
             "# the cells named below again (a done one exits at once, a stopped one resumes).",
             f"#SBATCH --job-name={job_name(out)}",
             f"#SBATCH --array=0-{len(cells) - 1}",
             "#SBATCH --nodes=1",
             "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={cpus}",
             f"#SBATCH --signal=B:TERM@{SIGNAL_BEFORE_S}",
             f"#SBATCH --output={out}/logs/slurm-%A_%a.out",
             "#SBATCH --open-mode=append",
             f"#SBATCH --chdir={Path.cwd()}",  # where decnode-sweep ran: relative paths in sweep.yaml hold
             *(f"#SBATCH {o}" for o in options),
             "CELLS=(" + " ".join(shlex.quote(c.name) for c in cells) + ")",
             # the task replaces the shell, so B:TERM reaches it; the submitter's Python and PYTHONPATH
             f"exec {shlex.quote(sys.executable)} -m decnode.tools.sweep.task {shlex.quote(str(out))} "
             '"${CELLS[$SLURM_ARRAY_TASK_ID]}"']
    return "\n".join(lines) + "\n"


def options(partition: str | None, time_limit: str | None, extra: list[str]) -> list[str]:
    return [*([f"--partition={partition}"] if partition else []), *([f"--time={time_limit}"] if time_limit else []),
            *extra]


def groups(cells: list[Cell]) -> dict[int, list[Cell]]:
    """Cells by the cores they need: an array's tasks all get the same resources."""
    found: dict[int, list[Cell]] = {}
    for c in cells:
        found.setdefault(cores_needed(c), []).append(c)
    return dict(sorted(found.items()))


def submit(path: Path, out: Path, cells: list[Cell], opts: list[str], log) -> list[tuple[str, list[Cell], Path]]:
    """One sbatch array script per cell shape, written into the sweep directory and submitted: [(job id, cells,
    script)]. log(text) goes to sweep.log."""
    shapes = groups(cells)
    done = []
    for cpus, members in shapes.items():
        script = out / ("slurm.sbatch" if len(shapes) == 1 else f"slurm-{cpus}cpus.sbatch")
        script.write_text(script_text(path, out, members, cpus, opts))
        job = _client(["sbatch", "--parsable", str(script)]).strip().split(";")[0]
        _append(out, {"job": job, "cells": [c.name for c in members], "cpus": cpus, "script": script.name,
                      "options": opts, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log(f"submit {len(members)} cells as SLURM job array {job} ({cpus} cores each; {script.name}): "
            + ", ".join(c.name for c in members))
        done.append((job, members, script))
    return done
