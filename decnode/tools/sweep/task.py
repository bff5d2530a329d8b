"""One SLURM array task of decnode-sweep --launcher slurm: one cell, run as a local sweep runs it.

    python -m decnode.tools.sweep.task SWEEP_DIR CELL      (slurm*.sbatch in the sweep directory calls this)

The cell comes from the sweep directory as the submission wrote it (sweep.yaml, configs/<cell>.yaml), not from the
sweep file, which may have changed since. Its state decides the command, as in a local sweep (plan.command): a done
cell exits at once, a stopped one resumes from its checkpoint, any other starts from scratch. decnode-run's output
is appended to logs/<cell>.log under the same "=== time command" header, and logs/<cell>.json records the attempt,
so decnode-report, a local sweep and `decnode-sweep --status` read a SLURM cell as they read a local one. SIGTERM
or SIGINT (the time limit's --signal, scancel) is passed on as the local sweep's Ctrl-C is: SIGINT to decnode-run's
process group, which checkpoints at its next iteration boundary.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ... import yamlio
from ...cli import fail
from ...config import ConfigError
from .command import sweep_log as log, write_csv
from .file import Cell, cells_of
from .plan import command, info, state

PROG = "decnode-sweep task"


def run(out: Path, cell: Cell, cells: list[Cell]) -> int:
    slurm_id = f"{os.environ.get('SLURM_ARRAY_JOB_ID', '?')}_{os.environ.get('SLURM_ARRAY_TASK_ID', '?')}"
    how = state(out, cell, retry_failed=True)  # submitted: a failed cell was submitted with --retry-failed
    if how == "done":
        print(f"{PROG}: cell {cell.name} is done already; nothing to run", flush=True)
        return 0
    n_cores = int(os.environ.get("SLURM_CPUS_PER_TASK") or 0) or None  # the allocation, not the node
    cmd = [sys.executable, "-m", "decnode.run", *command(cell, how, 1, n_cores)]
    log(out, f"start {cell.name} (SLURM {slurm_id}, {'resume' if how == 'stopped' else 'from scratch'}): "
             f"{' '.join(cmd)}")
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except (ProcessLookupError, NameError):
            pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    started = time.time()
    with open(out / "logs" / f"{cell.name}.log", "a") as f:
        f.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if stopping:  # a signal between the handler's install and Popen
        os.killpg(proc.pid, signal.SIGINT)
    rc = proc.wait()
    last = info(out, cell)
    entry = {"attempts": last.get("attempts", 0) + 1, "exit": rc, "interrupted": bool(stopping),
             "wall_s": last.get("wall_s", 0.0) + time.time() - started, "slurm": slurm_id}
    (out / "logs" / f"{cell.name}.json").write_text(json.dumps(entry) + "\n")
    st = state(out, cell)
    # Tasks end side by side: one at a time writes runs.csv, each from every cell's files as they are then.
    with open(out / "sweep.log", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log(out, f"{st} {cell.name} (SLURM {slurm_id}, exit {rc}, {entry['wall_s']:.0f} s)")
        write_csv(out, cells, {c.name: (st if c is cell else state(out, c)) for c in cells})
    if st == "failed":
        tail = (out / "logs" / f"{cell.name}.log").read_text(errors="replace").strip().splitlines()[-1:]
        print(f"decnode-sweep: cell {cell.name} failed (exit {rc}): {tail[0] if tail else ''}", file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        fail(PROG, "usage: python -m decnode.tools.sweep.task SWEEP_DIR CELL")
    out, name = Path(argv[0]), argv[1]
    try:
        cells = cells_of(out)
    except (OSError, ConfigError, yamlio.YamlError, KeyError, TypeError, ValueError) as err:
        fail(PROG, f"{out}: not a sweep directory decnode-sweep wrote ({err})")
    cell = next((c for c in cells if c.name == name), None)
    if cell is None:
        fail(PROG, f"{out}: no cell {name!r} in its sweep.yaml")
    sys.exit(run(out, cell, cells))


if __name__ == "__main__":
    main()
