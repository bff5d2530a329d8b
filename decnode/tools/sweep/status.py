"""decnode-sweep FILE|DIR --status: each cell's state, from its run directory, its logs and, for a sweep submitted
to SLURM, squeue (live tasks) and sacct or scontrol (ended ones). Reads only; works while the sweep runs.

    done · running (SLURM job J_i | pid P on host H) · pending in queue (SLURM job J_i[: reason])
    stopped at iteration i · failed (exit c): <its last error line> · not started (submitted, ended before it
    ran; or a local sweep's cell) · not submitted
"""

from __future__ import annotations

from pathlib import Path

from ...job import checkpoint, dirlock, rundir
from . import slurm
from .file import Cell
from .plan import info, logged

ERROR = "error: "


def last_error(out: Path, cell: Cell) -> str:
    """The last attempt's error line in logs/<cell>.log (decnode-run's one-line error), else its last line."""
    try:
        attempt = (out / "logs" / f"{cell.name}.log").read_text(errors="replace").rsplit("\n=== ", 1)[-1]
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in attempt.splitlines()[1:] if line.strip()]
    errors = [line for line in lines if ERROR in line]
    return (errors or lines or ["(empty log)"])[-1]


def cell_state(out: Path, cell: Cell, queued: dict, ended: dict, submitted: set) -> tuple[str, str]:
    """(kind, text): kind is one of done, running, pending in queue, stopped, failed, not submitted, not started."""
    d, total = cell.run_dir, cell.cfg.train.iterations
    it = min(logged(d), total)
    if (d / "models.pt").exists() and it >= total:
        return "done", "done"
    if cell.name in queued:
        job, st, reason = queued[cell.name]
        if st == "running":
            return "running", f"running (SLURM job {job})"
        return "pending in queue", f"pending in queue (SLURM job {job}{': ' + reason if reason else ''})"
    holder = dirlock.holder(d, rundir.LOCK) if d.is_dir() else None
    if holder is not None:
        return "running", f"running{dirlock.describe(holder)}"
    end = f" (SLURM job {ended[cell.name][0]}: {ended[cell.name][1]})" if cell.name in ended else ""
    last = info(out, cell)
    if last.get("exit") not in (None, 0) and not last.get("interrupted"):
        return "failed", f"failed (exit {last['exit']}){end}: {last_error(out, cell)}"
    if (d / checkpoint.CHECKPOINT).exists() or last or (out / "logs" / f"{cell.name}.log").exists():
        return "stopped", f"stopped at iteration {it}{end}"
    if cell.name in submitted:  # its task ended before decnode-run began (cancelled in the queue)
        return "not started", f"not started{end}"
    return ("not submitted", "not submitted") if submitted else ("not started", "not started")


def show(out: Path, cells: list[Cell]) -> None:
    queued, ended = slurm.live(out), slurm.ended(out)
    submitted = set(slurm.latest(out))
    kinds = []
    for c in cells:
        kind, text = cell_state(out, c, queued, ended, submitted)
        kinds.append(kind)
        total = c.cfg.train.iterations
        print(f"{c.name:<44} {min(logged(c.run_dir), total):>5}/{total:<5} it  {text}", flush=True)
    order = ("done", "running", "pending in queue", "stopped", "failed", "not submitted", "not started")
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in order if k in kinds)
    print(f"{len(cells)} cells: {counts}; sweep directory {out}")
