"""Runs survive failure: exact resume, a killed rank, a graceful stop, and strict inputs before any group forms."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BASE = ["--k", "1", "--set", "env.n_envs=4", "--set", "eval.episodes=4", "--set", "eval.interval=2",
        "--set", "run.tensorboard=false"]
# torch's LaunchConfig.shutdown_timeout (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, default 30): how long the launcher gives the
# workers after a SIGTERM before it SIGKILLs them.
SHUTDOWN_S = int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "30"))


def decnode(*args, timeout=300, wait=True):
    cmd = [sys.executable, "-m", "decnode.run", *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    for line in lines:
        line.pop("timing")  # wall-clock differs between runs; everything else must not
    return lines


def models(run_dir: Path) -> dict:
    return torch.load(run_dir / "models.pt", weights_only=False)


@pytest.mark.parametrize("algo", ["decpg", "ps"])
def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, algo):
    common = ["--nproc", "2", "--algo", algo, "--iterations", "5", *BASE, "--set", "run.checkpoint_interval=0"]
    whole = decnode(*common, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = decnode(*common, "--out", tmp_path / "part", "--set", "run.stop_after=2")
    assert part.returncode == 0, part.stderr[-2000:]
    assert [d["iteration"] for d in metrics(tmp_path / "part")] == [1, 2]
    resumed = decnode("--nproc", "2", "--resume", tmp_path / "part")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metrics(tmp_path / "part") == metrics(tmp_path / "whole")
    a, b = models(tmp_path / "whole"), models(tmp_path / "part")
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])


def _worker_pids(run_dir: Path) -> dict[int, int]:
    return {p["rank"]: p["pid"] for p in json.loads((run_dir / "processes.json").read_text())}


def _wait_for_iterations(run_dir: Path, count: int, proc, deadline: float, checkpoint: bool = True) -> None:
    while time.time() < deadline:
        path = run_dir / "metrics.jsonl"
        logged = path.exists() and len(path.read_text().splitlines()) >= count
        if logged and (not checkpoint or (run_dir / "checkpoint.pt").exists()):
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach iteration {count} in time")


def test_killed_rank_ends_the_job_with_a_named_error_and_resume_continues(tmp_path, measured):
    run_dir = tmp_path / "run"
    proc = decnode("--nproc", "3", "--iterations", "400", *BASE, "--set", "run.checkpoint_interval=2",
                   "--out", run_dir, wait=False)
    try:
        _wait_for_iterations(run_dir, 3, proc, time.time() + 180)
        pids = _worker_pids(run_dir)
        assert set(pids) == {0, 1, 2}, pids
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.time()
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.time() - killed_at
    measured(f"ended {took:.1f} s after the kill (bound 60 s; run.timeout_s 300 s)")
    # The peers see the dead rank's connections close at once; had they not, they would wait out run.timeout_s.
    assert took < 60, "the other ranks took too long to stop"
    assert proc.returncode != 0
    last = stderr.strip().splitlines()[-1]
    assert "rank 1 died (SIGKILL)" in last and "iteration" in last and "--resume" in last, last
    assert "(no restart: --max-restarts 0)" in last, last
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # intact
    saved = state["iteration"]
    assert saved >= 2 and saved % 2 == 0
    resumed = decnode("--nproc", "3", "--resume", run_dir, "--iterations", saved + 2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [d["iteration"] for d in metrics(run_dir)] == list(range(1, saved + 3))


def test_sigterm_to_the_launcher_checkpoints_and_exits_cleanly(tmp_path, measured):
    run_dir = tmp_path / "run"
    proc = decnode("--nproc", "2", "--iterations", "400", *BASE, "--set", "run.checkpoint_interval=1000",
                   "--out", run_dir, wait=False)
    try:
        _wait_for_iterations(run_dir, 2, proc, time.time() + 180, checkpoint=False)
        assert not (run_dir / "checkpoint.pt").exists()  # the one we find later is the stop's
        proc.send_signal(signal.SIGTERM)
        sent = time.time()
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.time() - sent
    measured(f"ended {took:.1f} s after SIGTERM (bound {SHUTDOWN_S} s)")
    assert proc.returncode == 0, stderr[-2000:]
    # Workers still running SHUTDOWN_S after the signal are SIGKILLed by the launcher: this many seconds or more.
    assert took < SHUTDOWN_S, "workers should stop at the next iteration boundary, not be killed later"
    done = len(metrics(run_dir))
    assert done < 400
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["iteration"] == done
    ours = [line for line in stderr.splitlines() if line.startswith("decnode-run:")]
    assert len(ours) == 1 and "SIGTERM received" in ours[0] and f"iteration {done}" in ours[0], stderr[-2000:]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("done") / "run"
    res = decnode("--nproc", "2", "--iterations", "1", *BASE, "--out", run_dir)
    assert res.returncode == 0, res.stderr[-2000:]
    return run_dir


@pytest.mark.parametrize("args,needle", [
    (["--k", "1"], "exists; pass --resume"),
    (["--resume", "{run}", "--k", "0"], "algo.k was 1 in the checkpoint, now 0"),
    (["--resume", "{run}", "--algo", "ps"], "algo.name was 'decpg' in the checkpoint, now 'ps'"),
    (["--resume", "{run}", "--set", "env.n_envs=8"], "env.n_envs was 4 in the checkpoint, now 8"),
    (["--resume", "{run}", "--nproc", "3"], "2 agents cannot be split evenly over 3 processes"),
    (["--resume", "{run}", "--set", "env.name=smax:5m_vs_6m"], "env.name was 'simple_spread' in the checkpoint"),
])
def test_strict_inputs_against_an_existing_run(finished_run, args, needle):
    args = [a.replace("{run}", str(finished_run)) for a in args]
    if "--nproc" not in args:
        args = ["--nproc", "2", *args]
    res = decnode(*args, "--out", finished_run, timeout=60)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_missing_and_corrupt_checkpoints_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = decnode("--nproc", "2", "--resume", empty, timeout=60)
    assert res.returncode == 2 and "no checkpoint in" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    (empty / "checkpoint.pt").write_bytes(b"not a checkpoint")
    res = decnode("--nproc", "2", "--resume", empty, timeout=60)
    assert res.returncode == 2 and "corrupt or unreadable" in res.stderr and len(res.stderr.strip().splitlines()) == 1
