"""decnode-sweep --dry-run refuses exactly what the run refuses (issue 23, class 6), and a refused run leaves the
sweep directory as it was; decnode-report names why a sweep cell logged no iteration (class 9).

Each refusal goes through the real CLI twice, --dry-run then the run: both exit 2 with the same single line, and
nothing in the sandbox (the user's files, the sweep directory) changes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "simple_spread.yaml"
TINY = {"env.n_agents": 3, "env.n_envs": 2, "env.episode_length": 5, "train.hidden": 16, "eval.episodes": 2,
        "eval.test_episodes": 2, "eval.interval": 0, "run.tensorboard": False, "algo.k": 1, "train.iterations": 2}


def run(module, *args, cwd, timeout=120):
    # no progress bar: stderr holds only decnode's lines
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT), TQDM_DISABLE="1"))


def write_sweep(box, grid, name="grid.yaml", **extra):
    body = {"config": str(BASE), "out": str(box / "sweeps" / "grid"), "set": dict(TINY), "grid": grid, **extra}
    path = box / name
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


def tree(root: Path) -> dict:
    """Every path below root with its content (None for a directory)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def outside(root: Path) -> dict:
    """tree(root) but for root/sweeps, where every sweep of these tests writes (decnode-sweep made it)."""
    return {k: v for k, v in tree(root).items() if k != "sweeps" and not k.startswith("sweeps/")}


def one_line(res) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return lines[0]


def same(line: str) -> str:
    return re.sub(r"\d+\.\d+ GB", "… GB", line)  # the memory available moves between two commands


def made_by_sweep(out: Path, path: Path) -> None:
    """out as a first decnode-sweep run leaves it: its record, sweep.yaml (without it the directory is refused
    whole, before any cell is looked at)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(json.dumps({"sweep_file": str(path), "given": path.read_text(), "cells": []}))


def refused_alike(box, path, needle, *extra):
    """--dry-run and the run refuse with the same one line, exit 2, and change nothing in the sandbox."""
    before = tree(box)
    dry = run("decnode.tools.sweep.command", path, "--dry-run", *extra, cwd=box / "cwd")
    assert dry.returncode == 2, (dry.stdout, dry.stderr)
    line = one_line(dry)
    assert line.startswith("decnode-sweep: error: ") and needle in line, line
    assert tree(box) == before
    real = run("decnode.tools.sweep.command", path, *extra, cwd=box / "cwd")
    assert real.returncode == 2, (real.stdout, real.stderr[-3000:])
    assert same(one_line(real)) == same(line)
    assert tree(box) == before  # no sweep.yaml, configs/, logs/, lock or cell started
    return line


# ---- what decnode-run would refuse in a cell -----------------------------------------------------------------------
def test_a_network_profile_that_one_cell_cannot_load(box):
    path = write_sweep(box, {"net.profile": ["loopback", "profiles/nope.yaml"]})
    line = refused_alike(box, path, "cell profile-profiles-nope.yaml: --net: 'profiles/nope.yaml' is neither a preset")
    assert str(path) in line


def test_a_network_profile_file_decnode_run_refuses(box):
    bad = box / "home" / "wan.yaml"
    bad.write_text("preset: wan\nstraggler_p: 2\n")  # a probability
    path = write_sweep(box, {"train.seed": [1]}, set={**TINY, "net.profile": str(bad)})
    refused_alike(box, path, f"cell seed-1: {bad}: net.straggler_p must be in [0, 1], got 2")


def test_a_fault_list_valid_for_one_cell_but_not_another(box):
    overlay = box / "home" / "stall.yaml"
    overlay.write_text("faults:\n  - {kind: stall, rank: 0, iteration: 3, seconds: 0}\n")
    path = write_sweep(box, {"train.iterations": [3, 2]}, overlays=[str(overlay)])
    refused_alike(box, path, "cell iterations-2: faults[0]: iteration 3 is not in 1…2")


def test_a_fault_on_a_rank_the_cell_does_not_have(box):
    overlay = box / "home" / "kill.yaml"
    overlay.write_text("faults:\n  - {kind: kill, rank: 2, iteration: 1}\n")
    path = write_sweep(box, {"train.seed": [1]}, overlays=[str(overlay)])  # processes: 1
    refused_alike(box, path, "cell seed-1: faults[0]: rank 2 is not in the job's ranks 0…0")


def test_a_cell_beyond_the_memory_preflight(box):
    path = write_sweep(box, {"train.hidden": [16, 400000]})
    refused_alike(box, path, "cell hidden-400000: estimated peak memory")


def test_a_cell_directory_holding_the_users_files(box):
    path = write_sweep(box, {"train.seed": [1, 2]})
    grid = box / "sweeps" / "grid"
    mine = grid / "cells" / "seed-2"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine\n")
    # a directory decnode-sweep did not make is refused whole, before any cell is looked at
    refused_alike(box, path, f"sweep directory {grid} is not empty and was not made by decnode-sweep")
    made_by_sweep(grid, path)  # the cell's own decnode-run check names the cell
    refused_alike(box, path, f"cell seed-2: {mine} is not empty and was not created by decnode")


def test_a_stopped_cell_whose_checkpoint_cannot_be_read(box):
    path = write_sweep(box, {"train.seed": [1]})
    cell = box / "sweeps" / "grid" / "cells" / "seed-1"
    cell.mkdir(parents=True)
    (cell / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a stopped cell: the sweep resumes it
    made_by_sweep(box / "sweeps" / "grid", path)
    refused_alike(box, path, f"cell seed-1: {cell / 'checkpoint.pt'} is corrupt or unreadable")


# ---- what the sweep itself would refuse -----------------------------------------------------------------------------
def test_a_path_longer_than_the_filesystem_takes(box):
    def deep(size):  # a path of `size` bytes below the sandbox
        parts, now = [], len(str(box / "sweeps"))
        while now < size:
            parts.append("d" * min(200, size - now))
            now += len(parts[-1]) + 1
        return box / "sweeps" / "/".join(parts)

    path = write_sweep(box, {"train.seed": [1]})
    # a cell's files below a 4030-byte sweep directory would pass PATH_MAX (4096); the directory itself passes it
    refused_alike(box, path, "cell seed-1: its run directory's files would have paths of up to", "--out", deep(4030))
    line = refused_alike(box, path, "bytes, beyond this filesystem's 4095; choose a shorter out", "--out", deep(4200))
    assert ": its path is 42" in line
    long = box / "sweeps" / ("x" * 300)
    line = refused_alike(box, path, "bytes, beyond this filesystem's 255", "--out", long)
    assert "the name xxxx" in line


def test_a_folder_where_the_sweep_writes_a_file(box):
    path = write_sweep(box, {"train.seed": [1]})
    out = box / "sweeps" / "grid"
    out.mkdir(parents=True)
    (out / "configs").write_text("mine\n")
    refused_alike(box, path, f"sweep directory {out} is not empty and was not made by decnode-sweep")
    made_by_sweep(out, path)
    refused_alike(box, path, f"sweep directory {out} holds files decnode did not write (configs)")
    (out / "configs").unlink()
    (out / "runs.csv").mkdir()
    refused_alike(box, path, f"sweep directory {out} holds files decnode did not write (runs.csv/)")


def test_a_running_sweep_is_named_by_the_dry_run_too(box):
    import fcntl

    path = write_sweep(box, {"train.seed": [1]})
    out = box / "sweeps" / "grid"
    out.mkdir(parents=True)
    with open(out / ".sweep.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running decnode-sweep holds
        line = refused_alike(box, path, "another decnode-sweep is running in")
    assert line == f"decnode-sweep: error: another decnode-sweep is running in {out}"


@pytest.mark.parametrize("change,needle", [
    ({"gird": {"train.seed": [1]}}, "unknown key 'gird'"),
    ({"grid": {"env.n_agents": [3, 2]}, "set": {**TINY, "algo.k": 2}},
     "cell n_agents-2: algo.k must be in [0, 1] for n=2 agents, got k=2"),
    ({"grid": {"train.lr": [0.1, "0.1"]}}, "cell lr-0.1 appears twice in the grid"),
    ({"grid": {"net.profile": ["a/b.yaml", "a-b.yaml"]}}, "cell profile-a-b.yaml appears twice in the grid"),
])
def test_a_bad_sweep_file(box, change, needle):
    path = write_sweep(box, {"train.seed": [1]})
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    refused_alike(box, path, needle)


# ---- with cells that ran ----------------------------------------------------------------------------------------
def test_an_edited_set_is_refused_by_the_dry_run_not_listed_as_done(box):
    path = write_sweep(box, {"algo.k": [1]})
    first = run("decnode.tools.sweep.command", path, cwd=box / "cwd", timeout=180)
    assert first.returncode == 0, first.stderr[-3000:]
    body = json.loads(path.read_text())
    body["set"]["env.n_envs"] = 4
    path.write_text(json.dumps(body))
    out = box / "sweeps" / "grid"
    refused_alike(box, path, f"cell k-1 already ran with another config ({out / 'configs' / 'k-1.yaml'})")
    # configs/ gone: the run directory's own config.yaml still says what trained
    for f in (out / "configs").iterdir():
        f.unlink()
    (out / "configs").rmdir()
    refused_alike(box, path, f"cell k-1 already ran with another config ({out / 'cells' / 'k-1' / 'config.yaml'})")
    body["set"]["env.n_envs"] = 2  # back as it ran: done, nothing refused, nothing rerun
    path.write_text(json.dumps(body))
    dry = run("decnode.tools.sweep.command", path, "--dry-run", cwd=box / "cwd")
    assert dry.returncode == 0 and dry.stdout.splitlines()[0].split()[:4] == ["k-1", "processes", "1", "done"], dry


def test_cell_names_too_long_for_a_file_are_shortened_and_stay_apart(box):
    # 300-odd characters of name, the two cells differing only at its end (the seed)
    grid = {"train.lr": [0.01], "train.min_lr": [0.001], "train.clip": [0.2], "train.gamma": [0.99],
            "train.gae_lambda": [0.95], "train.entropy_coef": [0.0], "train.value_coef": [1.0],
            "train.max_grad_norm": [10.0], "train.huber_delta": [10.0], "train.ppo_epochs": [2],
            "eval.obs_noise": [0.2], "eval.action_noise": [0.2], "env.local_ratio": [0.5],
            "net.profile": ["loopback"], "run.checkpoint_interval": [1], "run.exchange": ["p2p"],
            "run.trace_iterations": [0], "env.state_agent_id": [False], "algo.mix_every": ["step"],
            "algo.critic": ["central"], "env.backend": ["batched"], "env.reward": ["smac"], "eval.interval": [0],
            "eval.episodes": [2], "eval.test_episodes": [2], "run.tensorboard": [False]}
    path = write_sweep(box, grid, seeds=[1, 2], set={**TINY, "train.iterations": 1})
    before, mine = tree(box), outside(box)
    dry = run("decnode.tools.sweep.command", path, "--dry-run", cwd=box / "cwd")
    assert dry.returncode == 0 and not dry.stderr.strip(), dry.stderr  # nothing to warn about, no traceback
    assert tree(box) == before  # a dry run writes nothing
    names = [line.split()[0] for line in dry.stdout.splitlines()[:-1]]
    assert len(names) == 2 and names[0] != names[1] and all(len(n) <= 245 for n in names), names
    assert all(n.startswith("lr-0.01_min_lr-0.001_clip-0.2") for n in names)
    res = run("decnode.tools.sweep.command", path, "--jobs", "2", cwd=box / "cwd", timeout=240)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr[-3000:]
    assert "2 of 2 cells done" in res.stdout
    assert outside(box) == mine
    out = box / "sweeps" / "grid"
    for n in names:
        assert (out / "cells" / n / "models.pt").exists() and (out / "configs" / f"{n}.yaml").exists()
        assert (out / "logs" / f"{n}.log").exists()
    done = tree(box)
    again = run("decnode.tools.sweep.command", path, "--dry-run", cwd=box / "cwd")  # the same names: both done
    assert again.returncode == 0 and "(2 done, 0 stopped, 0 failed, 0 pending)" in again.stdout, again
    assert not again.stderr.strip() and tree(box) == done, again.stderr


# ---- class 9: a NaN in iteration 1 is not "failed during setup?" ---------------------------------------------------
def test_the_report_names_the_nan_that_stopped_a_cell_in_iteration_1(box):
    path = write_sweep(box, {"train.lr": [1e30]}, set={**TINY, "train.min_lr": 1e30})
    mine = outside(box)
    res = run("decnode.tools.sweep.command", path, cwd=box / "cwd", timeout=180)
    out = box / "sweeps" / "grid"
    # one line as the cell fails (a long sweep says it at once), one as the sweep ends; no traceback
    assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    cell, end = [line for line in res.stderr.splitlines() if line.strip()]
    assert cell.startswith("decnode-sweep: cell lr-1e30 failed (exit 1): decnode-run: error: rank 0: ") and \
        "NaN or inf in iteration 1" in cell and cell.endswith(f"[{out / 'logs' / 'lr-1e30.log'}]"), cell
    assert end.startswith("decnode-sweep: error: 1 cells failed (lr-1e30); their output is in "), end
    assert outside(box) == mine
    assert (out / "cells" / "lr-1e30" / "metrics.jsonl").read_text() == ""  # nothing logged: why is in the log
    before = tree(box)
    report = run("decnode.tools.report.command", out, cwd=box / "cwd")
    assert report.returncode == 2
    line = one_line(report)
    assert "skipped cells/lr-1e30: no iteration logged; its last attempt ended: rank 0: actor parameters of agent " \
           "0 became NaN or inf in iteration 1" in line and "setup" not in line, line
    assert tree(box) == before
