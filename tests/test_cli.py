"""The command lines a user types: our launcher, torchrun, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--iterations", "2", "--set", "env.n_envs=4", "--set", "eval.episodes=4", "--set", "eval.interval=0",
         "--set", "run.tensorboard=false"]


def run(args, timeout=240, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=kw.get("cwd", ROOT), env=env)


CORES = len(os.sched_getaffinity(0))


def threads_of(run_dir: Path) -> list[int]:
    return [p["threads"] for p in json.loads((run_dir / "processes.json").read_text())]


def assert_trained(run_dir: Path, n: int):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [1, 2]
    assert (run_dir / "models.pt").exists() and (run_dir / "config.yaml").exists()
    timing = json.loads((run_dir / "timing.json").read_text())
    assert len(timing["ranks"]) == n and timing["n_agents"] == n


def test_launcher_accepts_nproc(tmp_path):
    out = tmp_path / "run"
    res = run([sys.executable, "-m", "decnode.run", "--nproc", "3", "--k", "1", "--out", str(out), *SMALL])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "exchange" in res.stdout and "gossip/AR" in res.stdout and "all ranks" in res.stdout  # timing table
    assert_trained(out, 3)
    assert threads_of(out) == [max(1, CORES // 3)] * 3  # processes sharing the host's cores: no oversubscription


def test_torchrun_spelling(tmp_path):
    out = tmp_path / "run"
    res = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "decnode.run", "--k", "1", "--out", str(out), *SMALL])
    assert res.returncode == 0, res.stderr[-3000:]
    assert_trained(out, 2)
    assert threads_of(out) == [max(1, CORES // 2)] * 2


@pytest.mark.parametrize("extra,threads", [([], CORES), (["--set", "run.threads=1"], 1)])
def test_one_process_uses_every_core_unless_told(tmp_path, extra, threads):
    """Its 3 agents' backward in min(cores, 3) row threads of one intra-op thread each (one block on one core)."""
    out = tmp_path / "run"
    res = run([sys.executable, "-m", "decnode.run", "--nproc", "1", "--set", "env.n_agents=3", "--k", "1",
               "--out", str(out), *SMALL, *extra])
    assert res.returncode == 0, res.stderr[-3000:]
    (process,) = json.loads((out / "processes.json").read_text())
    assert process["row_threads"] == min(threads, 3) and process["threads"] == max(1, threads // min(threads, 3))


@pytest.mark.parametrize("args,needle", [
    (["--nproc", "3", "--k", "3"], "algo.k must be in [0, 2] for n=3 agents, got k=3"),
    (["--nproc", "3", "--k", "-1"], "algo.k must be in [0, 2]"),
    (["--nproc", "0"], "--nproc must be ≥ 1"),
    (["--nproc", "2", "--agents-per-process", "0"], "agents_per_process must be ≥ 1"),
    (["--nproc", "4", "--set", "env.n_agents=6"], "6 agents cannot be split evenly over 4 processes"),
    (["--nproc", "2", "--set", "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["--nproc", "2", "--set", "train.lr=-0.1"], "train.lr must be > 0"),
    (["--nproc", "2", "--set", "train.clip=0"], "train.clip must be > 0"),
    (["--nproc", "2", "--set", "eval.action_noise=1.5"], "eval.action_noise must be in [0, 1]"),
    (["--nproc", "2", "--set", "algo.k=two"], "config key 'algo.k' must be int"),
    (["--nproc", "3", "--config", "configs/smac_5m_vs_6m.yaml"], "5 agents cannot be split evenly over 3"),
    (["--nproc", "2", "--config", "nope.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_before_any_process_group(tmp_path, args, needle):
    res = run([sys.executable, "-m", "decnode.run", "--out", str(tmp_path / "r"), *args], timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "r").exists()


def test_non_integer_k_is_rejected_by_the_parser(tmp_path):
    res = run([sys.executable, "-m", "decnode.run", "--nproc", "2", "--k", "1.5"], timeout=60)
    assert res.returncode == 2 and "invalid int value: '1.5'" in res.stderr
