"""Every command that writes follows decnode-run's rule, through the real CLI: a user's file at an output path (or in
an output directory) is refused in one line, exit 2, before anything is written, and its bytes stay; the same
command run twice replaces decnode's own output; a file decnode wrote and the user edited since is the user's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--nproc", "1", "--k", "1", "--iterations", "2", "--set", "env.n_agents=3", "--set", "env.episode_length=5",
        "--set", "env.n_envs=2", "--set", "train.hidden=16", "--set", "eval.episodes=1", "--set",
        "eval.test_episodes=1", "--set", "eval.interval=1", "--set", "run.tensorboard=false"]
PROGS = {"report": "decnode-report", "plots": "decnode-plot", "analysis": "decnode-eval",
         "landscape": "decnode-landscape", "netmodel": "decnode-netmodel", "sweep": "decnode-sweep",
         "run": "decnode-run"}
MODULES = {"report": "decnode.tools.report.command", "plots": "decnode.tools.plots",
           "analysis": "decnode.tools.evalmodes", "landscape": "decnode.tools.landscape",
           "netmodel": "decnode.tools.netmodel", "sweep": "decnode.tools.sweep.command", "run": "decnode.run"}
EVAL = ["--mode", "average", "--episodes", "1", "--test-episodes", "1"]


def cli(module: str, *args, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", MODULES[module], *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below root with its bytes (None for a directory, the target for a symlink)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = (b"-> " + os.readlink(path).encode()) if path.is_symlink() else (
            None if path.is_dir() else path.read_bytes())
    return out


def refused(proc: subprocess.CompletedProcess, module: str, *words: str) -> str:
    """Exit 2 and exactly one line on stderr, `prog: error: …` naming `words`; no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith(f"{PROGS[module]}: error: "), proc.stderr[-3000:]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def unchanged_by(box: Path, module: str, *args, words=(), cwd: Path | None = None) -> str:
    """Run a command that must be refused: nothing in the sandbox changes, not a byte, not a new file."""
    before = tree(box)
    line = refused(cli(module, *args, cwd=cwd or box / "cwd"), module, *words)
    assert tree(box) == before
    return line


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    ok(cli("run", *TINY, "--out", out))
    return out


@pytest.fixture
def run(trained, box) -> Path:
    """A copy of a finished tiny run (its manifest too) in the sandbox."""
    shutil.copytree(trained, box / "cwd" / "run")
    return box / "cwd" / "run"


# ---- decnode-report --out DIR, --pick-lr FILE --------------------------------------------------------------------
def test_report_refuses_a_users_results_md_or_folder(run, box):
    mine = box / "home" / "paper"
    mine.mkdir()
    (mine / "results.md").write_text("# my results, by hand\n")
    unchanged_by(box, "report", run, "--out", mine, words=(str(mine), "did not write (results.md)"))  # the issue's
    unchanged_by(box, "report", run, "--out", ".", words=("notes.txt", "run/"))  # `--out .`: the user's folder


@pytest.mark.parametrize("what", ["text", "config"])
def test_report_pick_lr_refuses_a_users_file_before_anything_is_written(run, box, what):
    target = {"text": box / "home" / "thesis.tex", "config": box / "home" / "lr.yaml"}[what]
    if what == "config":  # a config of the user's, which decnode itself would read
        target.write_text("train:\n  lr: 0.002\n  min_lr: 0.0001\n")
    unchanged_by(box, "report", run, "--out", box / "cwd" / "report", "--pick-lr", target,
                 words=(str(target), "decnode did not write it"))
    assert not (box / "cwd" / "report").exists()  # refused before the report, not after it


def test_report_twice_replaces_its_own_and_refuses_what_the_user_added_or_edited(run, box):
    out, overlay = box / "cwd" / "report", box / "home" / "lr.yaml"
    home = tree(box / "home")
    ok(cli("report", run, "--out", out, "--pick-lr", overlay, cwd=box / "cwd"))
    first = {name: stamp(out / name) for name in ("results.md", "runs.csv", "train_reward.png")}
    assert overlay.read_text().startswith("# written by decnode-report --pick-lr (sha256 ")
    ok(cli("report", run, "--out", out, "--pick-lr", overlay, cwd=box / "cwd"))  # an idempotent re-run
    assert all(stamp(out / name) != s for name, s in first.items())  # replaced, not skipped
    assert {k: v for k, v in tree(box / "home").items() if k != "lr.yaml"} == home  # the user's files as they were
    assert yaml.safe_load(overlay.read_text())["per_algo"]["decpg"]["lr"] > 0

    (out / "notes.txt").write_text("my notes among decnode's figures\n")
    unchanged_by(box, "report", run, "--out", out, words=("notes.txt", "did not write"))
    (out / "notes.txt").unlink()
    with open(out / "results.md", "a") as f:
        f.write("\nMy reading of these numbers.\n")
    unchanged_by(box, "report", run, "--out", out, words=("results.md (edited since decnode wrote it)",))
    shutil.rmtree(out)
    overlay.write_text(overlay.read_text() + "# keep lr for the paper\n")  # decnode's overlay, now the user's
    unchanged_by(box, "report", run, "--out", out, "--pick-lr", overlay, words=("lr.yaml was edited since",))


# ---- decnode-plot --out -----------------------------------------------------------------------------------------
def test_plot_refuses_a_users_folder_or_a_file_among_its_figures(run, box):
    unchanged_by(box, "plots", run, "--out", ".", words=("notes.txt",))  # cwd holds the user's notes.txt
    (run / "plots").mkdir()
    (run / "plots" / "draft.txt").write_text("caption ideas\n")  # the default RUN_DIR/plots
    unchanged_by(box, "plots", run, words=("draft.txt",))


def test_plot_twice_replaces_its_own_figures_and_removes_its_stale_ones(run, box):
    other = box / "cwd" / "run2"
    shutil.copytree(run, other)
    out = box / "cwd" / "figs"
    ok(cli("plots", run, "--out", out, cwd=box / "cwd"))
    assert (out / "timeline.png").is_file()  # one run: its timeline
    reward = stamp(out / "reward.png")
    ok(cli("plots", run, other, "--out", out, cwd=box / "cwd"))  # two runs: no timeline
    assert stamp(out / "reward.png") != reward and not (out / "timeline.png").exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        json.loads((out / ".decnode-outputs.json").read_text())["files"])
    (out / "reward.png").write_bytes(b"\x89PNG my own figure")  # a user's figure under decnode's name
    unchanged_by(box, "plots", run, other, "--out", out, words=("reward.png (edited since decnode wrote it)",))


# ---- decnode-eval --out, decnode-landscape (into RUN_DIR) --------------------------------------------------------
def test_eval_refuses_a_users_file_at_its_output(run, box):
    unchanged_by(box, "analysis", run, *EVAL, "--out", box / "home" / "thesis.tex", words=("thesis.tex",))
    (run / "notes.json").write_text('{"mine": true}\n')  # relative --out is inside RUN_DIR
    unchanged_by(box, "analysis", run, *EVAL, "--out", "notes.json", words=("notes.json",))


def test_eval_twice_replaces_its_own_result_and_refuses_an_edited_one(run, box):
    trainer_eval = stamp(run / "eval.json")  # written by decnode-run: the run's manifest covers it
    ok(cli("analysis", run, *EVAL))
    assert stamp(run / "eval.json") != trainer_eval
    assert set(json.loads((run / "eval.json").read_text())["modes"]) == {"average"}
    out = box / "cwd" / "results" / "e.json"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a staging folder left by a killed command (its pid is gone) is decnode's: removed
    (out.parent / f".decnode-tmp-{dead.pid}").mkdir(parents=True)
    (out.parent / f".decnode-tmp-{dead.pid}" / "e.json").write_text("{")
    ok(cli("analysis", run, *EVAL, "--out", out))
    first = stamp(out)
    ok(cli("analysis", run, *EVAL, "--nproc", "2", "--out", out))  # the workers write it: the same rule
    assert stamp(out) != first and json.loads(out.read_text())["processes"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == [".decnode-outputs.json", "e.json"]
    out.write_text(out.read_text().replace('"processes": 2', '"processes": 20'))
    unchanged_by(box, "analysis", run, *EVAL, "--out", out, words=("e.json was edited since",))
    # the run directory holds only decnode's files (its record of eval.json, a killed command's staging folder):
    # decnode-run --overwrite may clear it
    (run / f".decnode-tmp-{dead.pid}").mkdir()
    (run / f".decnode-tmp-{dead.pid}" / "eval.json").write_text("{")
    ok(cli("run", *TINY, "--iterations", "1", "--out", run, "--overwrite", cwd=box / "cwd"))
    assert not (run / ".decnode-outputs.json").exists() and not (run / f".decnode-tmp-{dead.pid}").exists()


def test_landscape_refuses_a_users_file_and_replaces_its_own(run, box):
    (run / "landscape.npz").symlink_to(box / "home" / "thesis.tex")  # a symlink is the user's, wherever it is
    unchanged_by(box, "landscape", run, "--grid", "1", "--episodes", "1", words=("landscape.npz",))
    (run / "landscape.npz").unlink()
    copy = box / "cwd" / "copied"  # copied without its manifest: nothing there is known to be decnode's
    shutil.copytree(run, copy)
    (copy / ".decnode-run.json").unlink()
    (copy / "landscape_reward.png").write_bytes(b"\x89PNG the user's own")
    unchanged_by(box, "landscape", copy, "--grid", "1", "--episodes", "1", words=("landscape_reward.png",))
    ok(cli("landscape", run, "--grid", "1", "--episodes", "1", cwd=box / "cwd"))
    first = stamp(run / "landscape_loss.png")
    ok(cli("landscape", run, "--grid", "1", "--episodes", "1", "--nproc", "2", cwd=box / "cwd"))
    assert stamp(run / "landscape_loss.png") != first


# ---- decnode-netmodel calibrate --out, sweep --out ---------------------------------------------------------------
def test_netmodel_sweep_refuses_a_users_figure_and_replaces_its_own(box):
    (box / "home" / "bw.png").write_bytes(b"\x89PNG the user's figure")
    sweep = ["sweep", "--compute-s", "0.5", "--latency-s", "0.001"]
    unchanged_by(box, "netmodel", *sweep, "--out", box / "home" / "bw.png", words=("bw.png",))
    ok(cli("netmodel", *sweep, cwd=box / "cwd"))  # the default: netmodel-bandwidth.png in the working directory
    first = stamp(box / "cwd" / "netmodel-bandwidth.png")
    ok(cli("netmodel", *sweep, cwd=box / "cwd"))
    assert stamp(box / "cwd" / "netmodel-bandwidth.png") != first
    assert (box / "cwd" / "notes.txt").read_text() == "mine\n"


def test_netmodel_calibrate_refuses_a_users_profile_and_replaces_its_own(box):
    mine = box / "home" / "lab.yaml"
    mine.write_text("preset: ethernet\nlatency_s: 0.002\n")
    unchanged_by(box, "netmodel", "calibrate", "--reps", "1", "--out", mine, words=("lab.yaml",))
    out = box / "cwd" / "calibrated.yaml"
    ok(cli("netmodel", "calibrate", "--reps", "1", "--out", out, cwd=box / "cwd"))
    first = out.read_text()
    assert first.startswith("# written by decnode-netmodel calibrate (sha256 ")
    ok(cli("netmodel", "calibrate", "--reps", "1", "--out", out, cwd=box / "cwd"))
    assert out.read_text() != first  # a new measurement replaced decnode's own profile
    from decnode.net.profile import load_profile
    assert load_profile(str(out)).name == "calibrated"  # the mark is a comment: the profile reads as before
    out.write_text(out.read_text().replace("name: calibrated", "name: our cluster"))
    unchanged_by(box, "netmodel", "calibrate", "--reps", "1", "--out", out, words=("was edited since",))


# ---- decnode-sweep: its directory -------------------------------------------------------------------------------
def _sweep_file(box: Path, out: Path) -> Path:
    path = box / "cwd" / "grid.yaml"
    path.write_text(json.dumps({"config": str(ROOT / "configs" / "simple_spread.yaml"), "out": str(out),
                                "set": {"env.n_agents": 3, "env.n_envs": 2, "env.episode_length": 5,
                                        "train.hidden": 16, "eval.episodes": 1, "eval.test_episodes": 1,
                                        "eval.interval": 0, "run.tensorboard": False, "algo.k": 1,
                                        "train.iterations": 1}, "grid": {"train.seed": [1]}}))
    return path


def test_sweep_refuses_a_users_directory_and_a_file_among_its_own(box):
    (box / "home" / "runs.csv").write_text("my,table\n")
    path = _sweep_file(box, box / "home")
    for dry in ([], ["--dry-run"]):  # the dry run promises what the run does
        unchanged_by(box, "sweep", path, *dry, words=("not made by decnode-sweep", "runs.csv"))
    out = box / "cwd" / "grid"
    path = _sweep_file(box, out)
    ok(cli("sweep", path, cwd=box / "cwd"))
    again = ok(cli("sweep", path, cwd=box / "cwd"))  # the same command: done cells are skipped, files rewritten
    assert "1 of 1 cells done" in again.stdout
    (out / "configs" / "mine.yaml").write_text("train:\n  lr: 0.1\n")
    (out / "paper.tex").write_text("draft\n")
    for dry in ([], ["--dry-run"]):
        unchanged_by(box, "sweep", path, *dry, words=("configs/mine.yaml", "paper.tex", "did not write"))
    (out / "paper.tex").unlink()
    (out / "configs" / "mine.yaml").unlink()
    cell = next((out / "configs").iterdir())
    cell.write_text("# my own version of the cell\n" + cell.read_text())
    unchanged_by(box, "sweep", path, words=(f"configs/{cell.name}",))
