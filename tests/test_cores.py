"""More intra-op threads than cores: decnode says so once per host, names the setting that fixes it, and marks the
simulated table unreliable (cores.py). The rule itself on processes.json records; the warning through real runs."""

import json
import os
import subprocess
import sys

import pytest

from decnode.job.cores import oversubscribed

pytestmark = pytest.mark.serial  # it compares times with the host's: make test runs it alone

TINY = ["--k", "1", "--iterations", "2", "--set", "env.n_envs=2", "--set", "env.episode_length=5",
        "--set", "train.hidden=16", "--set", "eval.episodes=2", "--set", "eval.test_episodes=2",
        "--set", "run.tensorboard=false"]
CORES = len(os.sched_getaffinity(0))


def proc(rank, host, cores, threads, machine="m1", row_threads=1):
    return {"rank": rank, "host": host, "pid": 100 + rank, "machine": machine, "cores": cores, "threads": threads,
            "row_threads": row_threads}


def test_threads_beyond_the_cores_are_named_once_per_host_with_the_setting_that_fixes_them():
    # Two emulated hosts that each believe they have both cores (issue 24): one machine, the same cores.
    lines = oversubscribed([proc(0, "h0", [0, 1], 2), proc(1, "h1", [0, 1], 2)])
    assert len(lines) == 2 and [line.split()[3] for line in lines] == ["h0", "h1"]
    assert all("4 threads on 2 cores (0-1)" in line and "run.threads=1" in line and "taskset" in line
               for line in lines)
    # One host running 2 processes × 2 threads on 2 cores: one line, the fix divides the cores.
    [line] = oversubscribed([proc(0, "vm", [0, 1], 2), proc(1, "vm", [0, 1], 2)])
    assert line.startswith("decnode-run: warning: host vm runs 2 process(es)") and "run.threads=1" in line
    assert "taskset" not in line  # no other host shares them
    # Row threads count too: 2 row blocks of 2 intra-op threads each on 2 cores.
    assert len(oversubscribed([proc(0, "vm", [0, 1], 2, row_threads=2)])) == 1


def test_what_fits_or_cannot_spin_is_not_oversubscribed():
    assert oversubscribed([proc(0, "h0", [0], 1), proc(1, "h1", [1], 1)]) == []  # each host its own core
    assert oversubscribed([proc(0, "vm", [0, 1, 2, 3], 2), proc(1, "vm", [0, 1, 2, 3], 2)]) == []  # 4 on 4
    # Ten single-threaded processes on two cores time-share them; CPU time leaves that out, no thread spins.
    assert oversubscribed([proc(r, "vm", [0, 1], 1) for r in range(10)]) == []
    # Different machines never add up, whatever their hostnames.
    assert oversubscribed([proc(0, "a", [0, 1], 2, machine="m1"), proc(1, "b", [0, 1], 2, machine="m2")]) == []


def _run(tmp_path, *args):
    done = subprocess.run([sys.executable, "-m", "decnode.run", *TINY, *args, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.skipif(CORES < 2, reason="needs 2 cores to run 2 processes × 2 threads beyond them")
def test_a_run_with_more_threads_than_cores_warns_once_and_its_simulated_table_says_unreliable(tmp_path):
    threads = CORES  # each of the 2 processes takes every core: twice as many threads as cores
    done = _run(tmp_path, "--nproc", "2", "--set", f"run.threads={threads}", "--net", "ethernet")
    warnings = [line for line in done.stderr.splitlines() if "warning: host" in line]
    assert len(warnings) == 1, done.stderr[-3000:]
    assert f"{2 * threads} threads on {CORES} cores" in warnings[0]
    assert f"set run.threads={max(1, CORES // 2)}" in warnings[0]
    assert "UNRELIABLE" in done.stdout.split("simulated cluster", 1)[1]
    procs = json.loads((tmp_path / "run" / "processes.json").read_text())
    assert [p["threads"] for p in procs] == [threads, threads]


def test_the_default_threads_divide_the_cores_and_say_nothing(tmp_path):
    done = _run(tmp_path, "--nproc", "2", "--net", "ethernet")
    assert "warning: host" not in done.stderr and "UNRELIABLE" not in done.stdout
    procs = json.loads((tmp_path / "run" / "processes.json").read_text())
    assert [p["threads"] for p in procs] == [max(1, CORES // 2)] * 2
    assert all(p["cores"] == sorted(os.sched_getaffinity(0)) for p in procs)
