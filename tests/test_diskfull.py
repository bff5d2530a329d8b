"""Issue 14: the run directory fills up or turns read-only during a run. The previous checkpoint stays intact and
loadable, no temporary file is left, and the run ends in one line saying what to do — no traceback.

A small tmpfs and a read-only bind mount make real ENOSPC and EROFS (mounting needs root: skipped otherwise).
"""

import contextlib
import json
import os
import re
import subprocess
import time

import pytest
import torch
from test_reliability import BASE, _wait_for_iterations, decnode

from decnode.job import checkpoint as ckpt
from decnode.job.logger import RunLogger
from decnode.job.rundir import RunDirWriteError, writing

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs / a read-only bind")
COMMON = [*BASE, "--set", "eval.test_episodes=4", "--iterations", "400", "--set", "run.checkpoint_interval=2"]


@contextlib.contextmanager
def mounted(target, *options):
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", *options, str(target)], check=True, capture_output=True, timeout=30)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _fill(disk, leave: int) -> None:
    """Fill the filesystem of `disk` until about `leave` bytes are free."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


def _run_until_a_write_fails(run_dir, nproc, spoil):
    """Start a run, wait for its first checkpoint (iteration 2), spoil the disk, and return what the run said."""
    proc = decnode("--nproc", nproc, "--agents-per-process", 2 // nproc, *COMMON, "--out", run_dir, wait=False)
    try:
        _wait_for_iterations(run_dir, 2, proc, time.time() + 150)
        spoil()
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def _check_the_line(err, reason, fix, run_dir):
    assert "Traceback" not in err, err[-3000:]
    ours = [line for line in err.splitlines() if "decnode-run" in line]
    assert len(ours) == 1 and ours[0] == err.strip().splitlines()[-1], err[-3000:]
    where = re.escape(str(run_dir))
    said = re.fullmatch(rf"decnode-run: error: could not write the checkpoint of iteration (\d+) to {where}: "
                        rf"{reason}; the checkpoint of iteration (\d+) is intact — {fix} and continue with "
                        rf"--resume {where}", ours[0])
    assert said, ours[0]
    failed, intact = int(said[1]), int(said[2])
    assert failed == intact + 2, ours[0]  # the disk broke between these two checkpoints
    assert ckpt.load(run_dir)["iteration"] == intact  # the previous checkpoint loads, as it was
    assert not (run_dir / "checkpoint.pt.tmp").exists()


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so_in_one_line(tmp_path):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=16m", "tmpfs") as disk:
        run_dir = disk / "run"
        # Room for a few metrics lines, not for a second checkpoint (written beside the first, then renamed).
        spoil = lambda: _fill(disk, (run_dir / "checkpoint.pt").stat().st_size // 3)  # noqa: E731
        code, _, err = _run_until_a_write_fails(run_dir, 2, spoil)
        assert code == 1, err[-3000:]
        _check_the_line(err, "No space left on device", "free space", run_dir)


def test_a_read_only_run_directory_during_a_checkpoint_keeps_the_previous_one(tmp_path):
    run_dir = tmp_path / "run"

    def read_only():  # a read-only bind mount over the run directory: every new file is refused
        # Made read-only beside it, then moved over it in one step: remounting a bind of the run directory in
        # place fails ("mount point is busy") if the run opens a file through it in between.
        staged = tmp_path / "staged"
        staged.mkdir()
        subprocess.run(["mount", "--bind", str(run_dir), str(staged)], check=True, timeout=30)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(staged)], check=True, timeout=30)
        subprocess.run(["mount", "--move", str(staged), str(run_dir)], check=True, timeout=30)

    try:
        code, _, err = _run_until_a_write_fails(run_dir, 1, read_only)  # one process: no launcher in between
    finally:
        for mount_point in (tmp_path / "staged", run_dir):
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)
    assert code == 1, err[-3000:]
    _check_the_line(err, "Read-only file system", "make it writable", run_dir)


def test_a_metrics_line_that_does_not_fit_ends_in_one_line_and_its_cut_remains_are_dropped(tmp_path):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as disk:
        logger = RunLogger(disk, 10, 0, tensorboard=False, writing=lambda what: writing(disk, what, 0))
        stats = {"iteration": 1, "env_steps": 1}
        logger.log(json.dumps(stats), stats, float("nan"))
        _fill(disk, 0)
        big = {"iteration": 2, "env_steps": 2, "pad": "x" * 200_000}
        with pytest.raises(RunDirWriteError, match=r"could not write metrics.jsonl \(iteration 2\) to .*: No space "
                                                   r"left on device; the checkpoint of iteration 0 is intact"):
            logger.log(json.dumps(big), big, float("nan"))
        logger.metrics.close()
        (disk / "filler").unlink()
        assert (disk / "metrics.jsonl").read_bytes().startswith(b'{"iteration": 1')
        RunLogger(disk, 10, 1, tensorboard=False).metrics.close()  # a resume at iteration 1 drops the cut line
        assert [json.loads(x) for x in (disk / "metrics.jsonl").read_text().splitlines()] == [stats]


def test_an_atomic_save_that_fails_removes_its_temporary_file_and_keeps_the_old_one(tmp_path):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        ckpt.atomic_save({"x": torch.zeros(10)}, disk / "a.pt")
        with pytest.raises(OSError, match="No space left"):
            ckpt.atomic_save({"x": torch.zeros(1_000_000)}, disk / "a.pt")
        assert sorted(os.listdir(disk)) == ["a.pt", "a.pt.sha256"]  # the old file and its digest file
        assert torch.equal(ckpt.load_file(disk / "a.pt")["x"], torch.zeros(10))


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")  # pytest's view of a traceback
def test_tensorboard_on_a_full_disk_is_one_error_without_its_threads_traceback(tmp_path, capfd):
    with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as disk:
        logger = RunLogger(disk, 10, 0, tensorboard=True, writing=lambda what: writing(disk, what, 3))
        _fill(disk, 4096)  # room for metrics lines; TensorBoard's own buffer fills it first
        with pytest.raises(RunDirWriteError, match=r"could not write TensorBoard events \(iteration \d+\) to .*: "
                                                   r"No space left on device; the checkpoint of iteration 3"):
            for it in range(1, 2000):
                stats = {"iteration": it, "env_steps": it, "policy_loss": 0.5, "entropy": 1.0, "lr": 0.1}
                logger.log(json.dumps(stats), stats, float("nan"))
                if it % 20 == 0:
                    logger.writer.flush()
        logger.metrics.close()
    assert "Traceback" not in capfd.readouterr().err
