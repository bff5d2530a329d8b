"""Issue 23, class 1: one job per run directory, whoever launches it (decnode-run alone or launching its workers,
torchrun, a sweep's cell), in every attempt of a job that restarts.

Every test runs real jobs side by side on one directory: the live one keeps running and ends with every iteration
in metrics.jsonl exactly once; the other is refused in one line naming the live one (its pid and host) before it
writes or deletes anything, and no file outside the directories decnode made changes. A lock left by a job killed with SIGKILL is taken over, said in one line. The live
jobs train "forever" and are stopped with SIGINT (they checkpoint and exit 0) once the refusals are checked;
every wait is for evidence (the lock's record, a metrics line, a checkpoint), never a fixed sleep.
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
LOCK = ".decnode-run.lock"
TINY = ["--set", "env.n_agents=2", "--k", "1", "--set", "env.episode_length=5", "--set", "env.n_envs=2",
        "--set", "train.hidden=16", "--set", "run.tensorboard=false", "--set", "eval.episodes=2",
        "--set", "eval.test_episodes=2", "--set", "eval.interval=0", "--set", "run.trace_iterations=0",
        "--set", "run.checkpoint_interval=2"]
ONE = ["--nproc", "1", *TINY]
FOREVER = ["--iterations", "100000"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


def env():
    out = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    return {**out, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}  # no progress bar: stderr holds only our lines


def cli(args, cwd, module="decnode.run", timeout=120):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def torchrun(args, *options):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *map(str, options),
            "-m", "decnode.run", *map(str, args)]


def start(cmd, cwd):
    """A live job in a session of its own (SIGINT/SIGKILL reach it and its children, not pytest)."""
    return subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def record(run: Path) -> dict | None:
    try:
        return json.loads((run / LOCK).read_text())
    except (OSError, ValueError):
        return None


def logged(run: Path) -> list[str]:
    try:
        return (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []


def wait_live(proc, run: Path, checkpoint=False, timeout=240) -> dict:
    """Wait until the job holds run's lock and has logged an iteration (and written a checkpoint); its record."""
    deadline = time.time() + timeout
    while True:
        rec = record(run)
        if rec and logged(run) and (not checkpoint or (run / "checkpoint.pt").exists()):
            return rec
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the live job never got going"
        time.sleep(0.1)


def stop(proc, sig=signal.SIGINT, timeout=180):
    """Ctrl-C (the job checkpoints and exits) or SIGKILL, to the job's whole session; its stderr."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def restarted(run: Path) -> bool:
    """Rank 0 of a restarted attempt has logged (its first line carries the restart's record)."""
    return any('"restarts"' in line for line in logged(run))


def each_once(run: Path) -> int:
    """Every line whole and every iteration there exactly once, in order; how many."""
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    its = [json.loads(line)["iteration"] for line in text.splitlines()]
    assert its == list(range(1, len(its) + 1)), its
    return len(its)


def lines(res) -> list[str]:
    return [x for x in res.stderr.splitlines() if x.strip()]


def refused_by(res, run: Path, holder: dict):
    """One line, exit code 2, no traceback, naming the live job by its pid and host."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert res.returncode == 2 and len(lines(res)) == 1, res.stderr[-3000:]
    assert lines(res)[0].startswith(f"decnode-run: error: run directory {run} is in use by another job (pid "
                                    f"{holder['pid']} on host {socket.gethostname()}, "), lines(res)
    assert lines(res)[0].endswith("nothing was changed: wait for it to end, or stop it")


def digest(root: Path, *made: Path) -> dict:
    """Every path below root with its content hash (None for a directory), except what decnode made (`made`: a
    run or sweep directory, which changes by itself while a job lives). test_inputs.snapshot reads every file, and
    a live run's files come and go under it: this walk never enters `made`."""
    out = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if Path(top, d) not in made)
        for name in sorted(dirs + files):
            path = Path(top, name)
            out[str(path.relative_to(root))] = None if name in dirs else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_a_live_run_refuses_a_second_run_an_overwrite_a_resume_and_a_torchrun_job(box):
    run = box / "home" / "run"
    proc = start([sys.executable, "-m", "decnode.run", *ONE, *FOREVER, "--out", run], box / "cwd")
    try:
        holder = wait_live(proc, run, checkpoint=True)
        assert holder["pid"] == proc.pid  # one process, no launcher: it is the job and holds the lock
        own = {name: (run / name).read_bytes() for name in (".decnode-run.json", "config.yaml")}
        outside = digest(box, run)
        for args in ([*ONE, "--iterations", "3", "--out", run],  # the same --out: before, both ran, interleaved
                     [*ONE, "--iterations", "3", "--out", run, "--overwrite"],  # before: deleted the live run's files
                     [*ONE, "--iterations", "3", "--out", run, "--overwrite", "--seed", "9"],
                     ["--resume", run, "--iterations", "100001"],  # before: every iteration twice
                     ["--resume", run, "--iterations", "100001", "--set", "eval.episodes=3"],
                     ["--resume", run, "--overwrite"]):  # the live job is named before the flags' conflict
            refused_by(cli(args, box / "cwd"), run, holder)
        # torchrun's rank 0 is refused the same way, again after torchrun's restart; its rank 1, which would leave
        # a note in attempts/ under restarts, waits for a lock its job never gets until torchrun stops it. Each
        # worker's output goes to a file of its own (torchrun's --log-dir), apart from torchrun's failure report
        # and traceback (exit code 1), which are torchrun's, not decnode's
        logs = box / "torchrun-logs"
        res = subprocess.run(torchrun([*TINY, "--iterations", "3", "--out", run, "--overwrite"], "--max-restarts", 1,
                                      "--log-dir", logs, "--redirects", 3),
                             cwd=box / "cwd", env=env(), capture_output=True, text=True, timeout=240)
        assert res.returncode == 1 and not re.search(r'File ".*/decnode/', res.stderr), res.stderr[-3000:]
        # what torchrun saw of each attempt: rank 0 exited with code 2 (rank 1 was then stopped by torchrun)
        assert re.findall(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)", res.stderr) == [("2", "0")] * 2, res.stderr
        for attempt in (0, 1):
            [ranks] = logs.glob(f"*/attempt_{attempt}")
            out = {rank: ((ranks / rank / "stdout.log").read_text(), (ranks / rank / "stderr.log").read_text())
                   for rank in ("0", "1")}
            refused_by(SimpleNamespace(returncode=2, stdout=out["0"][0], stderr=out["0"][1]), run, holder)
            assert out["1"] == ("", ""), out  # stopped while it waited for the lock: nothing to say, no traceback
        assert not (run / "attempts").exists()
        assert {name: (run / name).read_bytes() for name in own} == own
        assert digest(box, run, logs) == outside
        assert proc.poll() is None  # still training
    finally:
        stderr = stop(proc)
    assert proc.returncode == 0, stderr[-3000:]
    assert each_once(run) >= 2 and not (run / LOCK).exists()  # a job that ends leaves no lock behind


def test_two_runs_started_together_one_runs_the_other_is_refused(box):
    run = box / "home" / "dual"
    cmd = [sys.executable, "-m", "decnode.run", *ONE, "--iterations", "30", "--out", run]
    outside = digest(box, run)
    procs = [start(cmd, box / "cwd") for _ in range(2)]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    ok = [r for r in results if r[0].returncode == 0]
    no = [r for r in results if r[0].returncode != 0]
    assert len(ok) == 1 and len(no) == 1, [(p.returncode, err[-1500:]) for p, _, err in results]
    (loser, _, err), (winner, _, _) = no[0], ok[0]
    assert loser.returncode == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.strip().startswith(f"decnode-run: error: run directory {run} is in use by another job (pid "
                                  f"{winner.pid} on host {socket.gethostname()}"), err
    assert each_once(run) == 30 and not (run / LOCK).exists()
    assert digest(box, run) == outside


def test_a_torchrun_job_holds_the_lock_in_its_rank_0_and_again_after_a_restart(box):
    run = box / "home" / "trun"
    outside = digest(box, run)
    proc = start(torchrun([*TINY, *FOREVER, "--out", run], "--max-restarts", 1), box / "cwd")
    try:
        holder = wait_live(proc, run, checkpoint=True)
        assert holder["pid"] != proc.pid and holder["job"]  # a worker of torchrun's, with torchrun's job id
        for args in ([*ONE, "--iterations", "3", "--out", run, "--overwrite"], ["--resume", run, "--iterations", "9"]):
            refused_by(cli(args, box / "cwd"), run, holder)
        # rank 1 killed (by hand: the refusals above had to come first): torchrun starts both ranks again, and the
        # new rank 0 takes the lock its predecessor held
        ranks = {p["rank"]: p["pid"] for p in json.loads((run / "processes.json").read_text())}
        os.kill(ranks[1], signal.SIGKILL)
        deadline = time.time() + 180
        while not (restarted(run) and (record(run) or {}).get("attempt") == 1):
            assert proc.poll() is None and time.time() < deadline, "no restart"
            time.sleep(0.1)
        again = record(run)
        assert again["pid"] not in (holder["pid"], *ranks.values()) and again["job"] == holder["job"]
        refused_by(cli(["--resume", run, "--iterations", "9"], box / "cwd"), run, again)
        assert proc.poll() is None
    finally:
        stop(proc)  # torchrun itself exits 1 on a signal (torch's SignalException); its workers checkpoint
    assert (run / "checkpoint.pt").exists() and each_once(run) >= 2
    assert not (run / LOCK).exists()  # rank 0 released it before ending by the signal, as torchrun expects
    assert digest(box, run) == outside


def test_our_launcher_holds_the_lock_in_its_own_process_through_a_restart(box):
    """decnode-run --nproc 2 takes the lock in the process that launches the workers, before any starts; the
    workers the elastic agent starts again after a kill fault never touch it, so no attempt leaves it free."""
    run = box / "home" / "two"
    outside = digest(box, run)
    proc = start([sys.executable, "-m", "decnode.run", *TINY, "--nproc", "2", "--max-restarts", "1", *FOREVER,
                  "--out", run, "--set", "faults=[{kind: kill, rank: 1, iteration: 3}]"], box / "cwd")
    try:
        holder = wait_live(proc, run)
        assert holder["pid"] == proc.pid and holder["job"] is None  # the launcher itself, not a worker
        # whichever attempt runs now (the kill comes at iteration 3), the launcher refuses a second job
        refused_by(cli([*ONE, "--iterations", "3", "--out", run, "--overwrite"], box / "cwd"), run, holder)
        deadline = time.time() + 180
        while not restarted(run):  # the restarted attempt is training
            assert proc.poll() is None and time.time() < deadline, "no restart"
            time.sleep(0.1)
        assert record(run) == holder  # the same lock, never released between the attempts
        refused_by(cli(["--resume", run, "--iterations", "100001"], box / "cwd"), run, holder)
        assert proc.poll() is None
    finally:
        stderr = stop(proc)
    assert proc.returncode == 0, stderr[-3000:]  # Ctrl-C: checkpointed
    assert each_once(run) >= 3 and not (run / LOCK).exists()
    assert digest(box, run) == outside


def _sweep_file(tmp: Path, iterations: int) -> Path:
    body = {"config": str(ROOT / "configs" / "simple_spread.yaml"), "out": str(tmp / "grid"),
            "set": {"env.n_agents": 2, "env.episode_length": 5, "env.n_envs": 2, "train.hidden": 16,
                    "run.tensorboard": False, "eval.episodes": 2, "eval.test_episodes": 2, "eval.interval": 0,
                    "run.trace_iterations": 0, "run.checkpoint_interval": 2, "train.iterations": iterations},
            "grid": {"algo.k": [1]}}
    path = tmp / "grid.yaml"
    path.write_text(json.dumps(body))
    return path


def test_a_sweep_cell_and_a_run_by_hand_on_one_directory(box):
    path = _sweep_file(box / "home", 100000)
    grid = box / "home" / "grid"
    cell = grid / "cells" / "k-1"
    outside = digest(box, grid)
    # 1. the sweep's cell runs; decnode-run by hand on its directory is refused
    proc = start([sys.executable, "-m", "decnode.tools.sweep.command", path], box / "cwd")
    try:
        holder = wait_live(proc, cell, checkpoint=True)
        assert holder["pid"] != proc.pid  # the cell's decnode-run, not the sweep
        config = grid / "configs" / "k-1.yaml"
        before = digest(box, cell, grid / "logs")  # the live cell writes its run directory and its log
        for args in (["--config", config, "--nproc", "1", "--out", cell, "--overwrite"],  # its configs/ header's command
                     ["--resume", cell, "--iterations", "100001"]):
            refused_by(cli(args, box / "cwd"), cell, holder)
        assert digest(box, cell, grid / "logs") == before
        assert proc.poll() is None
    finally:
        stderr = stop(proc)
    assert proc.returncode == 130, stderr[-3000:]
    done = each_once(cell)
    # 2. a run by hand in the cell's directory: the sweep refuses to start, in one line, before writing anything;
    # its dry run names the live job the same way (it promises no cell that the run would refuse)
    live = start([sys.executable, "-m", "decnode.run", "--resume", cell, "--iterations", "100000"], box / "cwd")
    try:
        holder = wait_live(live, cell)
        before = digest(box, cell)
        for dry in (["--dry-run"], []):
            res = cli([path, *dry], box / "cwd", module="decnode.tools.sweep.command")
            assert res.returncode == 2 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
            assert lines(res) == [f"decnode-sweep: error: {path}: cell k-1: run directory {cell} is in use by another "
                                  f"job (pid {holder['pid']} on host {socket.gethostname()}, decnode-run since "
                                  f"{holder['since']}); nothing was changed: wait for it to end, or stop it"], dry
            assert digest(box, cell) == before
    finally:
        stderr = stop(live)
    assert live.returncode == 0, stderr[-3000:]
    assert each_once(cell) > done
    assert digest(box, grid) == outside


def test_a_lock_left_by_a_killed_job_is_taken_over_and_said(box):
    run = box / "home" / "run"
    outside = digest(box, run, box / "home" / "run2")
    proc = start([sys.executable, "-m", "decnode.run", *ONE, *FOREVER, "--out", run], box / "cwd")
    holder = wait_live(proc, run, checkpoint=True)
    stop(proc, signal.SIGKILL)
    assert record(run) == holder  # the dead job's record stays; the kernel released its flock
    checkpoint = __import__("torch").load(run / "checkpoint.pt", weights_only=False)["iteration"]
    res = cli(["--resume", run, "--iterations", checkpoint + 2], box / "cwd", timeout=240)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines(res) == [f"decnode-run: {run} was locked by a job that died (pid {holder['pid']} on host "
                          f"{socket.gethostname()}, decnode-run since {holder['since']}); taking it over"]
    assert each_once(run) == checkpoint + 2 and not (run / LOCK).exists()
    # --overwrite, too: the lock file is decnode's own, not a foreign file that would block it
    run = box / "home" / "run2"
    proc = start([sys.executable, "-m", "decnode.run", *ONE, *FOREVER, "--out", run], box / "cwd")
    holder = wait_live(proc, run)
    stop(proc, signal.SIGKILL)
    res = cli([*ONE, "--iterations", "3", "--out", run, "--overwrite"], box / "cwd", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert lines(res) == [f"decnode-run: {run} was locked by a job that died (pid {holder['pid']} on host "
                          f"{socket.gethostname()}, decnode-run since {holder['since']}); taking it over"]
    assert each_once(run) == 3
    assert digest(box, box / "home" / "run", run) == outside


def test_a_killed_sweep_is_taken_over_and_its_cell_resumes(box):
    path = _sweep_file(box / "home", 30)
    out, cell = box / "home" / "grid", box / "home" / "grid" / "cells" / "k-1"
    outside = digest(box, out)
    proc = start([sys.executable, "-m", "decnode.tools.sweep.command", path], box / "cwd")
    holder = None
    try:
        holder = wait_live(proc, cell, checkpoint=True)
        sweeper = json.loads((out / ".sweep.lock").read_text())
        assert sweeper["pid"] == proc.pid
    finally:
        stop(proc, signal.SIGKILL)  # the sweep; its cell runs in a session of its own: killed next
        if holder is not None:
            os.killpg(holder["pid"], signal.SIGKILL)
    res = cli([path], box / "cwd", module="decnode.tools.sweep.command", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert lines(res) == [f"decnode-sweep: {out} was locked by a sweep that died (pid {sweeper['pid']} on host "
                          f"{socket.gethostname()}, decnode-sweep since {sweeper['since']}); taking it over"]
    log = (out / "logs" / "k-1.log").read_text()
    assert f"decnode-run: {cell} was locked by a job that died (pid {holder['pid']} " in log
    assert each_once(cell) == 30 and not (out / ".sweep.lock").exists()
    assert digest(box, out) == outside


def test_refusals_for_other_reasons_write_no_lock(box):
    """A user's directory, or a decnode run that needs --resume/--overwrite: refused with nothing written."""
    (box / "home" / "sub" / "x.txt").write_text("mine\n")
    before = digest(box)
    for out, needle in ((box / "home" / "sub", "was not created by decnode"), (box / "home", "was not created")):
        res = cli([*ONE, "--iterations", "2", "--out", out], box / "cwd")
        assert res.returncode == 2 and len(lines(res)) == 1 and needle in res.stderr, res.stderr
    assert digest(box) == before and not list(box.rglob(LOCK))

