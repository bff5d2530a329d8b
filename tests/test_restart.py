"""Issue 14: with --max-restarts a rank that dies is restarted, and the run continues from its last checkpoint by
itself to the same parameters as an uninterrupted run; when the restarts are spent it fails in one line."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_reliability import BASE, ROOT, _wait_for_iterations, _worker_pids, decnode, metrics, models

# timeout_s: a survivor stuck on its dead peer gives up after 20 s rather than waiting for the launcher's SIGKILL
COMMON = ["--nproc", "2", "--iterations", "8", *BASE, "--set", "eval.test_episodes=4",
          "--set", "run.checkpoint_interval=2", "--set", "run.timeout_s=20", "--max-restarts", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    res = decnode(*COMMON, "--out", run_dir, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    return run_dir


def _pids(run_dir) -> dict:
    try:
        return _worker_pids(run_dir)
    except (OSError, ValueError):  # not written yet, or being written
        return {}


def _kill(run_dir, rank, proc, after: int, old_pids=(), checkpoint=True):
    """SIGKILL `rank` once `after` iterations are logged past a checkpoint (in an attempt other than old_pids')."""
    deadline = time.time() + 150
    while old_pids and (not _pids(run_dir) or set(_pids(run_dir).values()) & set(old_pids)):
        assert time.time() < deadline and proc.poll() is None, "no restart"
        time.sleep(0.1)
    _wait_for_iterations(run_dir, after, proc, deadline, checkpoint)
    pids = _worker_pids(run_dir)
    logged = len((run_dir / "metrics.jsonl").read_text().splitlines())
    os.kill(pids[rank], signal.SIGKILL)
    return pids, logged


def test_a_killed_rank_is_restarted_and_the_run_equals_an_uninterrupted_one(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    proc = decnode(*COMMON, "--out", run_dir, wait=False)
    try:
        _, logged = _kill(run_dir, 1, proc, 3)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    lines = metrics(run_dir)
    records = [r for line in lines for r in line.pop("restarts", [])]
    assert lines == metrics(uninterrupted)  # the replayed iterations logged the same numbers
    a, b = models(uninterrupted), models(run_dir)
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])
    [rec] = records
    assert rec["restart"] == 1 and rec["rank"] == 1 and rec["how"] == "died", rec
    assert rec["iteration"] in (logged + 1, logged + 2), (rec, logged)  # rank 0 may log one more before the kill
    saved = rec["checkpoint"]
    assert saved % 2 == 0 and rec["replayed"] == rec["iteration"] - 1 - saved <= 2, rec  # ≤ checkpoint_interval
    said = [line for line in out.splitlines() if line.startswith("decnode-run:")]
    assert said == [f"decnode-run: restart 1 of 1: rank 1 died during iteration {rec['iteration']}; continuing "
                    f"from the checkpoint of iteration {saved} ({rec['replayed']} finished iteration"
                    f"{'s' if rec['replayed'] != 1 else ''} replayed)"], out[-2000:]
    assert "Traceback" not in err and "decnode-run" not in err, err[-2000:]


def test_killing_rank_0_is_restarted_and_a_second_death_spends_the_restarts(tmp_path):
    run_dir = tmp_path / "run"
    proc = decnode(*COMMON, "--iterations", "400", "--out", run_dir, wait=False)
    try:
        first, _ = _kill(run_dir, 0, proc, 3)
        _kill(run_dir, 1, proc, 1, old_pids=first.values())  # in the restarted attempt
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    said = re.search(r"^decnode-run: restart 1 of 1: rank 0 died during iteration (\d+); continuing from the "
                     r"checkpoint of iteration (\d+)", out, re.M)
    assert said, out[-2000:]
    ours = [line for line in err.splitlines() if "decnode-run" in line]
    assert len(ours) == 1 and ours[0] == err.strip().splitlines()[-1], err[-3000:]
    assert re.match(r"decnode-run: error: rank 1 died \(SIGKILL\) during iteration \d+, after 1 restart "
                    r"\(--max-restarts 1\); last checkpoint: iteration \d+, continue with --resume ", ours[0]), ours


def test_under_torchrun_a_restart_without_a_checkpoint_starts_over_and_keeps_the_directory(uninterrupted, tmp_path):
    """torchrun's --max-restarts runs the whole command again: its --overwrite must not delete the run, and with no
    checkpoint yet the run starts over from iteration 0 in the same directory, to the same parameters."""
    run_dir = tmp_path / "run"
    assert COMMON[-2:] == ["--max-restarts", "1"]
    args = COMMON[:-2]  # torchrun's --max-restarts is the one that counts
    args[args.index("run.checkpoint_interval=2")] = "run.checkpoint_interval=1000"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--max-restarts",
           "1", "-m", "decnode.run", *map(str, args[2:]), "--out", str(run_dir), "--overwrite"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _kill(run_dir, 1, proc, 2, checkpoint=False)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    lines = metrics(run_dir)
    [rec] = [r for line in lines for r in line.pop("restarts", [])]
    assert rec["rank"] == 1 and rec["checkpoint"] is None and rec["replayed"] == rec["iteration"] - 1, rec
    assert "no checkpoint yet: starting over from iteration 0" in out, out[-2000:]
    assert lines == metrics(uninterrupted)
    a, b = models(uninterrupted), models(run_dir)
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])


def test_a_kill_fault_under_max_restarts_recovers_to_the_uninterrupted_run(uninterrupted, tmp_path):
    """faults: fire only in the first attempt, so the restarted job runs past the kill to the same parameters."""
    run_dir = tmp_path / "run"
    res = decnode(*COMMON, "--out", run_dir, "--set", "faults=[{kind: kill, rank: 1, iteration: 4}]", timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = metrics(run_dir)
    [rec] = [r for line in lines for r in line.pop("restarts", [])]
    assert rec["rank"] == 1 and rec["how"] == "died" and rec["iteration"] == 4 and rec["checkpoint"] == 2, rec
    assert lines == metrics(uninterrupted)
    a, b = models(uninterrupted), models(run_dir)
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])
