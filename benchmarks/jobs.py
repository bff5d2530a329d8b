"""Run one real `decnode.run` job for a benchmark and read back what it measured (shared by iteration.py, scale.py).

Seconds per iteration come from metrics.jsonl: rank 0's timed sections of each iteration (they cover the whole
iteration, including an evaluation or the previous iteration's checkpoint), the warm-up iterations and the last one
(which waits for the end-of-run work) left out. The communication share is averaged over ranks from timing.json.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decnode.job.metricsfile import records  # noqa: E402
from decnode.timing import grouped  # noqa: E402

COMM = ("step_exchange", "gossip/allreduce", "waiting")
NOT_ITERATION = ("setup", "eval", "checkpoint")  # one-off sections: the share is of the iterations' time
BARE = ["--set", "eval.interval=0", "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0"]
# the end-of-run evaluation (1000 test episodes by default) is not what is measured: keep it short
SHORT_FINAL_EVAL = ["--set", "eval.episodes=1", "--set", "eval.test_episodes=1"]


def run_process(cmd: list[str], cwd: Path, timeout: float, env: dict | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of CMD; on a timeout its whole process group (a launcher and its workers: it has
    its own session) is killed, and stderr says so."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return proc.returncode, "", f"timed out after {timeout:.0f} s"
    return proc.returncode, out, err


def run(args: list[str], warmup: int, timeout: float = 1800) -> dict:
    """`python -m decnode.run ARGS --out TMP` (ARGS must hold --iterations); the figures, or {"error": last line}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "decnode.run", *args, "--out", str(out)]
        start = time.monotonic()
        code, _, err = run_process(cmd, ROOT, timeout)
        result: dict = {"job_seconds": round(time.monotonic() - start, 1)}
        if code:
            lines = [x for x in err.splitlines() if x.strip()]
            result["error"] = lines[-1].strip() if lines else f"exit code {code}"
            return result
        metrics = records(out)
        timing = json.loads((out / "timing.json").read_text())
        procs = json.loads((out / "processes.json").read_text())
    kept = metrics[warmup:-1] or metrics[-1:]  # a run too short for warm-up still gives a (rough) figure
    per_iteration = [sum(d["timing"].values()) for d in kept]
    breakdown: dict[str, float] = {}
    for d in kept:
        for section, seconds in grouped({**{s: {"seconds": x} for s, x in d["timing"].items()},
                                         "wall": {"seconds": 0}}).items():
            if section != "wall":
                breakdown[section] = breakdown.get(section, 0.0) + seconds / len(kept)
    names = {name for d in kept for name in d["timing"]}
    sections = {name: statistics.mean(d["timing"].get(name, 0.0) for d in kept) for name in sorted(names)}
    shares = []
    for snap in timing["ranks"]:
        g = grouped(snap)
        busy = g["wall"] - sum(g.get(c, 0.0) for c in NOT_ITERATION)
        shares.append(sum(g.get(c, 0.0) for c in COMM) / busy if busy > 0 else 0.0)
    result.update(seconds_per_iteration=statistics.median(per_iteration),
                  mean_seconds_per_iteration=statistics.mean(per_iteration), iterations_measured=len(kept),
                  breakdown=breakdown, sections=sections, comm_share=statistics.mean(shares),
                  peak_rss_mib=timing["peak_rss_mb"], cpu_seconds=timing["cpu_seconds"],
                  threads=[p.get("threads") for p in procs], row_threads=[p.get("row_threads", 1) for p in procs])
    return result
