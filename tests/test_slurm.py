"""decnode-sweep --launcher slurm and launch/slurm.sbatch through a real one-machine SLURM (launch/slurm_local.sh:
Debian's munge, slurmctld and slurmd, started for the session and stopped after it). Root only; the packages are
installed once when missing (apt-get), else the tests are skipped with the reason. `make test-slurm` runs them."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch" / "slurm_local.sh"
BASE = ROOT / "configs" / "simple_spread.yaml"
TINY = {"env.n_agents": 3, "env.n_envs": 4, "eval.episodes": 2, "eval.test_episodes": 2, "eval.interval": 0,
        "run.tensorboard": False, "algo.k": 1}
WAIT_S = 300


def _free_port_pair() -> int:
    """slurmctld's port, with the next one (slurmd's) free too: another SLURM on this machine is left alone."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The environment in which sbatch, squeue and sinfo talk to this session's SLURM."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("needs root: munged, slurmctld and slurmd are started here")
    env = dict(os.environ, SLURM_LOCAL_DIR=str(tmp_path_factory.mktemp("slurm")),
               SLURM_LOCAL_PORT=str(_free_port_pair()))
    if not all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in ("munged", "slurmctld", "slurmd", "sbatch")):
        res = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=900, env=env)
        if res.returncode != 0:
            pytest.skip(f"SLURM is not installed and could not be: {(res.stderr or res.stdout).strip()[-300:]}")
    res = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True, timeout=120, env=env)
    try:
        assert res.returncode == 0, res.stderr
        env["SLURM_CONF"] = re.search(r"export SLURM_CONF=(\S+)", res.stdout).group(1)
        env["PYTHONPATH"] = str(ROOT)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # torchrun, for slurm.sbatch
        yield env
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120, env=env)


def sweep(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "decnode.tools.sweep.command", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def write_sweep(tmp_path, iterations, grid, name="grid", **extra):
    body = {"config": str(BASE), "out": str(tmp_path / name), "set": {**TINY, "train.iterations": iterations,
                                                                        **extra.pop("set", {})},
            "grid": grid, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(body))  # JSON is YAML
    return path, tmp_path / name


def squeue(env, *args) -> str:
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True, timeout=30, env=env,
                          check=True).stdout


def job_state(env, job: str) -> str:
    text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, timeout=30,
                          env=env, check=True).stdout
    return re.search(r"\bJobState=(\S+)", text).group(1)


def wait_gone(env, job: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while squeue(env, "-j", job, "-o", "%i").strip():
        assert time.monotonic() < deadline, f"SLURM job {job} still queued after {WAIT_S} s"
        time.sleep(0.5)


def wait_logged(run_dir: Path, n: int, env, job: str) -> None:
    """Until run_dir logged n iterations; fails at once if SLURM no longer holds the job that should log them."""
    deadline = time.monotonic() + WAIT_S
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < n:
        assert time.monotonic() < deadline, f"{run_dir} logged fewer than {n} iterations in {WAIT_S} s"
        assert squeue(env, "-j", job, "-o", "%i").strip(), f"SLURM job {job} ended before {run_dir} logged {n}"
        time.sleep(0.2)


def iterations(run_dir: Path) -> list[int]:
    return [json.loads(line)["iteration"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def submitted(res) -> str:
    m = re.search(r"submitted \d+ cells as SLURM job array (\d+)", res.stdout)
    assert m, res.stdout + res.stderr
    return m.group(1)


def status(env, out: Path) -> dict[str, str]:
    res = sweep(env, out, "--status")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    return {line.split()[0]: line.split(" it  ", 1)[1] for line in lines[:-1]}


def test_four_cells_run_as_one_array_and_report_reads_them(slurm, tmp_path):
    path, out = write_sweep(tmp_path, 3, {"algo.name": ["ps", "decpg"], "train.seed": [1, 2]})
    res = sweep(slurm, path, "--launcher", "slurm", "--time", "00:10:00")
    assert res.returncode == 0, res.stderr
    job = submitted(res)
    script = (out / "slurm.sbatch").read_text()
    for line in ("#SBATCH --array=0-3", "#SBATCH --cpus-per-task=1", "#SBATCH --ntasks=1", "#SBATCH --time=00:10:00",
                 "#SBATCH --signal=B:TERM@120"):
        assert line in script.splitlines()
    cells = ["name-ps_seed-1", "name-ps_seed-2", "name-decpg_seed-1", "name-decpg_seed-2"]
    # Whatever each task is doing now, status names it with its own array task (or it is done already).
    now = status(slurm, out)
    assert list(now) == cells
    for i, name in enumerate(cells):
        assert re.fullmatch(rf"done|running \(SLURM job {job}_{i}\)|pending in queue \(SLURM job {job}_{i}(: \S+)?\)",
                            now[name]), now
    wait_gone(slurm, job)
    assert status(slurm, out) == {name: "done" for name in cells}
    for i, name in enumerate(cells):
        assert iterations(out / "cells" / name) == [1, 2, 3]
        record = json.loads((out / "logs" / f"{name}.json").read_text())
        assert (record["slurm"], record["exit"], record["attempts"]) == (f"{job}_{i}", 0, 1)
    assert job_state(slurm, job) == "COMPLETED"
    # Submitting again submits nothing: every cell is done.
    res = sweep(slurm, path, "--launcher", "slurm")
    assert res.returncode == 0 and "0 of 4 cells submitted; 4 done" in res.stdout, res.stdout + res.stderr
    assert len(json.loads((out / "slurm.json").read_text())["jobs"]) == 1
    # decnode-report reads the SLURM sweep as a local one.
    rep = subprocess.run([sys.executable, "-m", "decnode.tools.report.command", str(out)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT, env=slurm)
    assert rep.returncode == 0, rep.stderr[-2000:]
    rows = (out / "report" / "runs.csv").read_text().splitlines()
    assert len(rows) == 5 and all(f"cells/{name}" in "\n".join(rows) for name in cells)


def test_cancelled_and_timed_out_cells_resume_from_their_checkpoints_when_submitted_again(slurm, tmp_path):
    path, out = write_sweep(tmp_path, 80, {"train.seed": [1, 2]}, set={"run.checkpoint_interval": 5})
    cells = ["seed-1", "seed-2"]
    runs = [out / "cells" / name for name in cells]
    first = submitted(sweep(slurm, path, "--launcher", "slurm"))
    for run_dir in runs:
        wait_logged(run_dir, 5, slurm, first)
    # Meanwhile neither a local sweep nor another submission starts the cells SLURM holds.
    dry = sweep(slurm, path, "--dry-run")
    assert dry.returncode == 0 and "0 pending, 2 running" in dry.stdout, dry.stdout + dry.stderr
    again = sweep(slurm, path, "--launcher", "slurm")
    assert "0 of 2 cells submitted; 0 done, 2 queued or running already" in again.stdout, again.stdout + again.stderr
    # Cell 1 pre-empted (scancel: SIGTERM to every process, SIGKILL 30 s later); cell 2 at its time limit
    # (--signal=B:TERM@120: SIGTERM to the batch shell only, which is the task).
    subprocess.run(["scancel", f"{first}_0"], check=True, timeout=30, env=slurm)
    subprocess.run(["scancel", "--batch", "--signal=TERM", f"{first}_1"], check=True, timeout=30, env=slurm)
    wait_gone(slurm, first)
    stopped = [len(iterations(run_dir)) for run_dir in runs]
    assert all(5 <= n < 80 for n in stopped) and all((d / "checkpoint.pt").exists() for d in runs)
    assert status(slurm, out) == {"seed-1": f"stopped at iteration {stopped[0]} (SLURM job {first}_0: CANCELLED)",
                                  "seed-2": f"stopped at iteration {stopped[1]} (SLURM job {first}_1: COMPLETED)"}
    assert json.loads((out / "logs" / "seed-2.json").read_text())["interrupted"] is True

    res = sweep(slurm, path, "--launcher", "slurm")
    second = submitted(res)
    assert second != first and "2 of 2 cells submitted" in res.stdout
    wait_gone(slurm, second)
    assert status(slurm, out) == {name: "done" for name in cells}
    for name, run_dir in zip(cells, runs):
        assert iterations(run_dir) == list(range(1, 81))  # resumed: no iteration logged twice, none missing
        attempts = (out / "logs" / f"{name}.log").read_text().split("\n=== ")[1:]
        assert len(attempts) == 2 and "--resume" in attempts[1].splitlines()[0]
        assert "--resume" not in attempts[0].splitlines()[0]


def test_slurm_sbatch_trains_on_one_node_stops_at_the_time_limit_signal_and_resumes(slurm, tmp_path):
    run_dir = tmp_path / "run"
    flags = ["--k", "1", "--iterations", "40", "--set", "env.n_agents=2", "--set", "env.n_envs=4",
             "--set", "eval.episodes=2", "--set", "eval.test_episodes=2", "--set", "run.tensorboard=false"]

    def submit(*args):
        res = subprocess.run(["sbatch", "--parsable", "--nodes", "1", "--ntasks-per-node", "1", "--cpus-per-task",
                              "2", "--time", "00:10:00", "-o", str(tmp_path / "slurm-%j.out"),
                              str(ROOT / "launch" / "slurm.sbatch"), *args], capture_output=True, text=True,
                             timeout=30, env=slurm, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    job = submit(*flags, "--out", str(run_dir))
    wait_logged(run_dir, 3, slurm, job)
    # What --signal=TERM@120 does before the time limit: SIGTERM to every process of the job's steps.
    subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=30, env=slurm)
    wait_gone(slurm, job)
    output = (tmp_path / f"slurm-{job}.out").read_text()
    assert job_state(slurm, job) == "COMPLETED", output[-3000:]
    stopped = len(iterations(run_dir))
    assert stopped < 40 and f"stopped at iteration {stopped}; continue with --resume {run_dir}" in output
    assert "Traceback" not in output
    procs = json.loads((run_dir / "processes.json").read_text())
    assert sorted(p["rank"] for p in procs) == [0, 1]  # PER_NODE = --cpus-per-task ranks, under torchrun

    job = submit("--resume", str(run_dir))
    wait_gone(slurm, job)
    assert job_state(slurm, job) == "COMPLETED", (tmp_path / f"slurm-{job}.out").read_text()[-3000:]
    assert iterations(run_dir) == list(range(1, 41))


def test_refusals_are_one_line_and_submit_nothing(slurm, tmp_path):
    path, out = write_sweep(tmp_path, 3, {"algo.name": ["ps"]})
    before = squeue(slurm, "-o", "%i")

    def refused(res, pattern):
        assert res.returncode == 2, res.stdout + res.stderr
        assert re.fullmatch(f"decnode-sweep: error: {pattern}\n", res.stderr), res.stderr
        assert not out.exists()  # nothing written, nothing submitted

    empty = tmp_path / "empty"
    empty.mkdir()
    refused(sweep(dict(slurm, PATH=str(empty)), path, "--launcher", "slurm"),
            r"--launcher slurm: sbatch is not on PATH \(.*\)")
    refused(sweep(slurm, path, "--launcher", "slurm", "--partition", "nosuch"),
            r"--partition nosuch: SLURM knows no such partition \(sinfo lists debug\)")
    cpus = max(int(c.rstrip("+")) for c in subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True,
                                                          text=True, timeout=30, env=slurm).stdout.split())
    big, out = write_sweep(tmp_path, 3, {"algo.name": ["ps"]}, name="big", set={"run.threads": cpus + 1})
    refused(sweep(slurm, big, "--launcher", "slurm"),
            rf"\S+big.yaml: cell name-ps needs {cpus + 1} cores \(1 processes × {cpus + 1} threads\) but no node of "
            rf"partition debug has more than {cpus} \(sinfo\)")
    assert squeue(slurm, "-o", "%i") == before
