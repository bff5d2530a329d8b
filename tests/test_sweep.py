"""decnode-sweep with real processes: a 2×2 grid end to end, Ctrl-C and resume, one-line errors, the paper's grids."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "simple_spread.yaml"
TINY = {"env.n_agents": 3, "env.n_envs": 4, "eval.episodes": 2, "eval.test_episodes": 2, "eval.interval": 0,
        "run.tensorboard": False, "algo.k": 1}


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT))


def sweep(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "decnode.tools.sweep.command", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env())


def write_sweep(tmp_path, iterations, grid, name="grid.yaml", **extra):
    body = {"config": str(BASE), "out": str(tmp_path / name.replace(".yaml", "")),
            "set": {**TINY, "train.iterations": iterations}, "grid": grid, **extra}
    path = tmp_path / name
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def rows(out):
    with open(out / "runs.csv", newline="") as f:
        return list(csv.DictReader(f))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def head_commit():
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def test_grid_runs_every_cell_writes_the_csv_and_skips_done_cells(tmp_path):
    path = write_sweep(tmp_path, 2, {"algo.name": ["ps", "decpg"], "train.seed": [1, 2]})
    out = tmp_path / "grid"
    res = sweep(path, "--jobs", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    table = rows(out)
    assert [r["cell"] for r in table] == ["name-ps_seed-1", "name-ps_seed-2", "name-decpg_seed-1", "name-decpg_seed-2"]
    assert [(r["algo.name"], r["train.seed"]) for r in table] == [("ps", "1"), ("ps", "2"), ("decpg", "1"),
                                                                    ("decpg", "2")]
    for r in table:
        assert r["status"] == "done" and r["iterations"] == "2" and int(r["env_steps"]) == 2 * 4 * 25
        assert math.isfinite(float(r["train_reward"])) and math.isfinite(float(r["gen_test"]))
        assert r["git_commit"] in (head_commit(), head_commit() + "+dirty"), r["git_commit"]
        run_dir = Path(r["run_dir"])
        assert run_dir == out / "cells" / r["cell"] and (run_dir / "models.pt").exists()
        # the cell's config file is what trained: decnode-run --config reproduces it
        cfg = (out / "configs" / f"{r['cell']}.yaml").read_text()
        assert f"name: {r['algo.name']}" in cfg and f"seed: {r['train.seed']}" in cfg
    # four different runs, not one copied: the seeds see other episodes, the algorithms end at other parameters
    assert table[0]["train_reward"] != table[1]["train_reward"]
    models = [torch.load(Path(r["run_dir"]) / "models.pt", weights_only=False)["actor_rows"] for r in table]
    assert not any(torch.equal(models[i], models[j]) for i in range(4) for j in range(i))
    before = {r["cell"]: (Path(r["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns for r in table}

    again = sweep(path, "--jobs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 of 4 cells done" in again.stdout
    assert {r["cell"]: (Path(r["run_dir"]) / "metrics.jsonl").stat().st_mtime_ns for r in rows(out)} == before
    log = (out / "sweep.log").read_text()
    assert log.count(" start ") == 4 and log.count(" skip ") == 4, log


def _wait(predicate, proc, seconds):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_ctrl_c_checkpoints_every_cell_and_the_same_command_resumes_exactly(tmp_path):
    grid = {"algo.name": ["ps", "decpg"]}
    n = 60
    straight = write_sweep(tmp_path, n, grid, name="straight.yaml")
    path = write_sweep(tmp_path, n, grid)
    out = tmp_path / "grid"
    cells = [out / "cells" / c for c in ("name-ps", "name-decpg")]
    proc = subprocess.Popen([sys.executable, "-m", "decnode.tools.sweep.command", str(path), "--jobs", "2"], cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: all((c / "metrics.jsonl").exists() and len(metrics(c)) >= 2 for c in cells), proc, 120)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("decnode-sweep:")]
    assert ours == ["decnode-sweep: stopped; 2 cells checkpointed — run the same command to resume"], stderr[-3000:]
    for c in cells:
        assert (c / "checkpoint.pt").exists() and 2 <= len(metrics(c)) < n
    assert {r["status"] for r in rows(out)} == {"stopped"}

    res = sweep(path, "--jobs", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {r["status"] for r in rows(out)} == {"done"}
    assert (out / "sweep.log").read_text().count("(resume)") == 2
    ref = sweep(straight, "--jobs", "2")  # the same cells, never interrupted
    assert ref.returncode == 0, ref.stderr[-3000:]
    for c in cells:
        assert [m["iteration"] for m in metrics(c)] == list(range(1, n + 1))
        a = torch.load(c / "models.pt", weights_only=False)
        b = torch.load(tmp_path / "straight" / "cells" / c.name / "models.pt", weights_only=False)
        assert torch.equal(a["actor_rows"], b["actor_rows"]), c.name


def test_a_failed_cell_is_reported_and_skipped_until_retried(tmp_path):
    path = write_sweep(tmp_path, 2, {"train.lr": [1e30]}, set={**TINY, "train.iterations": 2, "train.min_lr": 1e30})
    out = tmp_path / "grid"
    first = sweep(path)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "cell lr-1e30 failed (exit 1)" in first.stderr and "NaN or inf" in first.stderr, first.stderr[-3000:]
    assert "1 cells failed (lr-1e30)" in first.stderr.splitlines()[-1]
    assert [r["status"] for r in rows(out)] == ["failed"]
    again = sweep(path)  # skipped: a NaN would come back
    assert again.returncode == 1 and "skip lr-1e30 (failed)" in (out / "sweep.log").read_text()
    retried = sweep(path, "--retry-failed")
    assert retried.returncode == 1 and (out / "sweep.log").read_text().count(" start ") == 2
    assert json.loads((out / "logs" / "lr-1e30.json").read_text())["attempts"] == 2


def test_a_cell_that_ran_is_not_silently_given_another_config(tmp_path):
    path = write_sweep(tmp_path, 2, {"algo.k": [1]})
    assert sweep(path).returncode == 0
    body = json.loads(path.read_text())
    body["set"]["env.n_envs"] = 8
    path.write_text(json.dumps(body))
    res = sweep(path, timeout=60)
    assert res.returncode == 2 and "cell k-1 already ran with another config" in res.stderr, res.stderr
    assert rows(tmp_path / "grid")[0]["status"] == "done"


def test_a_second_sweep_in_the_same_directory_is_refused(tmp_path):
    import fcntl

    path = write_sweep(tmp_path, 2, {"algo.name": ["ps"]})
    (tmp_path / "grid").mkdir()
    with open(tmp_path / "grid" / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running decnode-sweep holds
        res = sweep(path, timeout=60)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"decnode-sweep: error: another decnode-sweep is running in {tmp_path / 'grid'}"], res.stderr
    assert not (tmp_path / "grid" / "cells").exists()


@pytest.mark.parametrize("change,needle", [
    ({"gird": {}}, "unknown key 'gird'"),
    ({"grid": {"train.lrr": [1]}}, "cell lrr-1: unknown config key 'train.lrr'"),
    ({"grid": {"algo.k": [1, 3]}}, "cell k-3: algo.k must be in [0, 2] for n=3 agents, got k=3"),
    ({"config": "nope.yaml"}, "config file not found"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"algo.k": 2}}, "grid.algo.k must be a non-empty list"),
    ({"grid": [{"algo.k": [1]}, {"algo.k": [1, 2]}]}, "cell k-1 appears twice"),
    ({"processes": 2}, "3 agents cannot be split evenly over 2 processes"),
])
def test_bad_sweep_file_is_one_line_and_starts_nothing(tmp_path, change, needle):
    path = write_sweep(tmp_path, 2, {"algo.name": ["ps"]})
    body = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps(body))
    res = sweep(path, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and str(path) in lines[0], res.stderr
    assert not (tmp_path / "grid").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_paper_grids_are_valid(path, tmp_path):
    res = sweep(path, "--dry-run", "--out", tmp_path / "s", timeout=60)
    assert res.returncode == 0, res.stderr
    summary = res.stdout.splitlines()[-1]
    cells = int(summary.split()[0])
    assert cells == len(res.stdout.splitlines()) - 1 and f"{cells} pending" in summary
    assert not (tmp_path / "s").exists()  # a dry run writes nothing
