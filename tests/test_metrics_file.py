"""Issue 23, class 7 and class 9 (first two members): one reading of metrics.jsonl for every command, and resumes
that keep every iteration in it exactly once or refuse, in one line, with a command that works.

A crash mid-write is real where it can be (a rank 0 that SIGKILLs itself by the faults config, then the cut line a
write interrupted there would leave); a finished tiny run is copied for the cases made by editing its files.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_inputs import snapshot

ROOT = Path(__file__).resolve().parent.parent
ONE = ["--nproc", "1", "--set", "env.n_agents=2", "--k", "1", "--set", "env.episode_length=5", "--set",
       "env.n_envs=2", "--set", "train.hidden=16", "--set", "run.tensorboard=false", "--set", "eval.episodes=2",
       "--set", "eval.test_episodes=2", "--set", "eval.interval=1", "--set", "run.trace_iterations=0",
       "--set", "run.checkpoint_interval=2"]
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


def cli(args, cwd, module="decnode.run", timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"})


def lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


def its(run: Path) -> list[int]:
    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line)["iteration"] for line in text.splitlines()]


def outside(box: Path, *made: Path) -> dict:
    """snapshot(box) but for what decnode made there (a run directory, a report): the user's files."""
    return {k: v for k, v in snapshot(box).items() if not any(m == box / k or m in (box / k).parents for m in made)}


def refused(res, needle: str, prog="decnode-run") -> str:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert res.returncode == 2 and len(lines(res.stderr)) == 1, res.stderr[-3000:]
    line = lines(res.stderr)[0]
    assert line.startswith(f"{prog}: error: ") and needle in line, line
    return line


def advised(line: str) -> list[str]:
    """The command a refusal advises (after 'with decnode-run'), as decnode.run's arguments."""
    assert " with decnode-run " in line, line
    return shlex.split(line.split(" with decnode-run ", 1)[1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    res = cli([*ONE, "--iterations", "4", "--out", run], run.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@pytest.fixture
def copy(box, finished) -> Path:
    run = box / "home" / "run"
    shutil.copytree(finished, run)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(str(finished), str(run)))
    return run


def cut_last_line(run: Path) -> None:
    text = (run / "metrics.jsonl").read_text()
    head, last = text[:-1].rsplit("\n", 1)
    (run / "metrics.jsonl").write_text(head + "\n" + last[: len(last) // 2])  # a write stopped half way


# ---- class 7: a cut last line ----------------------------------------------------------------------------------
def test_a_crash_mid_write_is_dropped_and_the_resume_replays_from_the_checkpoint(box):
    run = box / "home" / "crash"
    mine = outside(box, run)
    # rank 0 SIGKILLs itself as iteration 4 starts: lines 1-3 logged, the checkpoint is of iteration 2
    res = cli([*ONE, "--iterations", "6", "--out", run, "--set", "faults=[{kind: kill, rank: 0, iteration: 4}]"],
              box / "cwd")
    assert res.returncode == -9 and its(run) == [1, 2, 3], res.stderr[-3000:]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 4, "train_rew')  # what a write interrupted by the crash leaves
    res = cli(["--resume", run], box / "cwd")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    # stderr: the lock the killed job left, taken over (test_lock.py); stdout: what happens to metrics.jsonl
    assert len(lines(res.stderr)) == 1 and "was locked by a job that died" in res.stderr, res.stderr
    assert f"decnode-run: {run / 'metrics.jsonl'}: its last line after iteration 3 is cut short (a write " \
           "interrupted by a crash or a full disk): dropped" in res.stdout
    assert "decnode-run: metrics.jsonl: the lines of iterations 3–3, logged after the checkpoint, are replaced as " \
           "those iterations run again" in res.stdout
    assert its(run) == [1, 2, 3, 4, 5, 6]
    assert outside(box, run) == mine


def test_a_cut_line_of_the_checkpoints_own_iteration_is_restored_from_the_checkpoint(copy, box):
    cut_last_line(copy)  # iteration 4, which the checkpoint holds
    mine = outside(box, copy)
    res = cli(["--resume", copy, "--iterations", "6"], box / "cwd")
    assert res.returncode == 0 and lines(res.stderr) == [] and "Traceback" not in res.stdout, res.stderr[-3000:]
    assert "metrics.jsonl: the line of iteration 4 restored from the checkpoint" in res.stdout
    assert its(copy) == [1, 2, 3, 4, 5, 6]
    assert outside(box, copy) == mine


def test_plot_and_report_drop_a_cut_line_and_say_so(copy, box):
    cut_last_line(copy)
    report = box / "cwd" / "report"
    mine = outside(box, copy / "plots", report)  # the tools write only their own outputs; the run's files stay
    note = f"{copy / 'metrics.jsonl'}: its last line after iteration 3 is cut short (a write interrupted by a " \
           "crash or a full disk): dropped"
    res = cli([copy], box / "cwd", module="decnode.tools.plots")
    assert res.returncode == 0 and lines(res.stderr) == [], res.stderr[-3000:]
    assert lines(res.stdout)[0] == f"decnode-plot: {note}" and (copy / "plots" / "reward.png").is_file()
    res = cli([box / "home", "--include-unfinished", "--out", report], box / "cwd",
              module="decnode.tools.report.command")
    assert res.returncode == 0 and lines(res.stderr) == [], res.stderr[-3000:]
    assert note in lines(res.stdout) and "included unfinished run (3 of 4 iterations logged)" in res.stdout
    assert note in (report / "results.md").read_text()
    assert outside(box, copy / "plots", report) == mine


def test_a_damaged_line_before_the_last_is_one_line_everywhere(copy, box):
    text = (copy / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copy / "metrics.jsonl").write_text("".join([text[0], '{"iteration": 2, "trai\n', *text[2:]]))
    before = snapshot(box)
    needle = f"{copy / 'metrics.jsonl'}: line 2 is not a metrics record (damaged or edited"
    refused(cli([copy], box / "cwd", module="decnode.tools.plots"), needle, "decnode-plot")
    refused(cli(["--resume", copy, "--iterations", "6"], box / "cwd"), needle)
    assert snapshot(box) == before


def test_the_sweep_reads_the_same_way(copy):
    from decnode.tools.sweep import command as sweep, plan as sweepplan

    cut_last_line(copy)
    assert sweepplan.logged(copy) == 3 and [m["iteration"] for m in sweep._metrics(copy)] == [1, 2, 3]


# ---- class 9: the checkpoint or metrics.jsonl gone --------------------------------------------------------------
@pytest.mark.parametrize("spoil,needle", [
    (lambda run: (run / "metrics.jsonl").unlink(),
     "its metrics.jsonl is missing, so iterations 1–4 of the checkpoint would have no record; put the file back"),
    (lambda run: (run / "metrics.jsonl").write_text(""),
     "its metrics.jsonl ends at iteration 0 but the checkpoint is at iteration 4 (iterations 1–4 have no record)"),
    (lambda run: (run / "metrics.jsonl").write_text("".join((run / "metrics.jsonl").read_text()
                                                           .splitlines(keepends=True)[:2])),
     "its metrics.jsonl ends at iteration 2 but the checkpoint is at iteration 4 (iterations 3–4 have no record)"),
])
def test_a_resume_without_the_record_of_its_iterations_is_refused_with_a_command_that_works(copy, box, spoil,
                                                                                            needle):
    """Refused, not recreated: a run whose metrics.jsonl lacks iterations stays 'unfinished' for decnode-report
    and decnode-sweep forever, and its curves would start mid-way; only the file itself can bring them back."""
    spoil(copy)
    before = snapshot(box)
    line = refused(cli(["--resume", copy, "--iterations", "6"], box / "cwd"), f"cannot resume {copy}: {needle}")
    assert snapshot(box) == before
    res = cli(advised(line), box / "cwd")
    assert res.returncode == 0 and lines(res.stderr) == [], res.stderr[-3000:]
    assert its(copy) == [1, 2, 3, 4]


def test_a_resume_without_a_checkpoint_advises_a_command_that_works(copy, box):
    (copy / "checkpoint.pt").unlink()
    before = snapshot(box)
    line = refused(cli(["--resume", copy], box / "cwd"), f"no checkpoint in {copy} (it was deleted, or the run "
                                                         "stopped before its first one): start the run again")
    assert snapshot(box) == before
    assert advised(line) == ["--config", str(copy / "config.yaml"), "--nproc", "1", "--out", str(copy), "--overwrite"]
    res = cli(advised(line), box / "cwd")
    assert res.returncode == 0 and lines(res.stderr) == [], res.stderr[-3000:]
    assert its(copy) == [1, 2, 3, 4] and (copy / "checkpoint.pt").is_file()


def test_a_run_killed_before_its_first_checkpoint_gets_a_command_that_works(box):
    run = box / "home" / "my run"  # and a path a shell would split: the advice quotes it
    mine = outside(box, run)
    res = cli([*ONE, "--iterations", "3", "--out", run, "--set", "run.checkpoint_interval=0",
               "--set", "faults=[{kind: kill, rank: 0, iteration: 2}]"], box / "cwd")
    assert res.returncode == -9 and its(run) == [1] and not (run / "checkpoint.pt").exists()
    killed = snapshot(box)
    line = refused(cli(["--resume", run], box / "cwd"), f"no checkpoint in {run} (it was deleted, or the run")
    assert snapshot(box) == killed
    res = cli(advised(line), box / "cwd")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(lines(res.stderr)) == 1 and res.stderr.startswith(f"decnode-run: {run} was locked by a job that died")
    assert its(run) == [1, 2, 3] and outside(box, run) == mine
