"""Training on 4 CPU XLA devices (`run.device: xla`) against the single-process CPU reference, both real
`decnode-run` jobs started from this venv (torch 2.9.0), on the same small Simple Spread.

What must agree, and how closely (measured here: 6e-8 on the actor's parameters after 2 iterations):
- the rollouts exactly: acting samples on the host from each agent's own generator, so while the logits agree to
  float32 rounding the actions, rewards and the central critic (on the host) are the reference's bit for bit;
  local critics (one per agent, on the devices) within ATOL;
- the actors' parameters within ATOL: the devices' float32 kernels (XLA's, not MKL's) round differently;
- every logged statistic within RTOL (or ATOL near zero);
- PS: every device's replica bit-identical.
"""

import json
import subprocess
import sys

import pytest
import torch

from xla_run import REPO, xla_env

ATOL, RTOL = 1e-6, 1e-5
SMALL = ["--iterations", "2", "--set", "env.n_envs=4", "--set", "env.episode_length=5", "--set", "train.ppo_epochs=3",
         "--set", "eval.episodes=4", "--set", "eval.test_episodes=4", "--set", "run.tensorboard=false"]


def decnode_run(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "decnode.run", *map(str, args)]
    proc = subprocess.run(cmd, env=xla_env(4), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}"
    return proc


def run_job(out, n, extra, xla: bool) -> dict:
    placement = ["--nproc", "4", "--set", "run.device=xla"] if xla else ["--nproc", "1", "--agents-per-process", str(n)]
    proc = decnode_run(*placement, "--set", f"env.n_agents={n}", *SMALL, *extra, "--out", out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"models": torch.load(out / "models.pt", weights_only=False), "metrics": lines, "stdout": proc.stdout}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("n,extra", [(8, ["--algo", "decpg", "--k", "3"]), (4, ["--algo", "ps"]),
                                     (4, ["--algo", "decpg", "--k", "2", "--critic", "local"])],
                         ids=["decpg-n8-k3", "ps-n4", "decpg-n4-k2-local-critics"])
def test_two_iterations_on_xla_devices_equal_the_cpu_reference(tmp_path, n, extra):
    ref = run_job(tmp_path / "cpu", n, extra, xla=False)
    xla = run_job(tmp_path / "xla", n, extra, xla=True)
    rows, ref_rows = xla["models"]["actor_rows"], ref["models"]["actor_rows"]
    assert rows.shape == ref_rows.shape == (n, rows.shape[1])
    torch.testing.assert_close(rows, ref_rows, atol=ATOL, rtol=0)
    if "ps" not in extra:  # DecPG's agents must have moved apart, or the comparison says little
        assert not torch.equal(ref_rows, ref_rows[:1].expand_as(ref_rows))
    if "local" in extra:  # the agents' critics train on the devices too: float32 rounding, like the actors
        torch.testing.assert_close(xla["models"]["critic"], ref["models"]["critic"], atol=ATOL, rtol=0)
    else:  # the coordinator's central critic is on the host: the same bits
        torch.testing.assert_close(xla["models"]["critic"], ref["models"]["critic"], atol=0, rtol=0)
    assert len(xla["metrics"]) == len(ref["metrics"]) == 2
    for got, want in zip(xla["metrics"], ref["metrics"]):
        assert got["train_reward"] == want["train_reward"]  # the same actions, so the same episodes
        for key, value in want.items():
            if isinstance(value, float) and key not in ("train_reward",):
                assert got[key] == pytest.approx(value, rel=RTOL, abs=ATOL), key
    if "ps" in extra:
        assert all(torch.equal(r, rows[0]) for r in rows), "PS replicas differ between XLA devices"
    assert "device" in xla["stdout"] and "peak memory of the process holding the 4 device threads" in xla["stdout"]


def test_nproc_sets_the_number_of_cpu_devices(tmp_path):
    """--nproc 2 on the CPU runs 2 XLA devices of 2 agents each, whatever CPU_NUM_DEVICES said before."""
    cmd = [sys.executable, "-m", "decnode.run", "--nproc", "2", "--k", "1", "--set", "run.device=xla",
           "--set", "env.n_agents=4", *SMALL, "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=xla_env(4), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    procs = json.loads((tmp_path / "run" / "processes.json").read_text())
    assert [p["rank"] for p in procs] == [0, 1] and len({p["pid"] for p in procs}) == 1  # threads of one process
    assert torch.load(tmp_path / "run" / "models.pt", weights_only=False)["actor_rows"].shape[0] == 4


@pytest.mark.timeout(900)
def test_a_run_stopped_on_4_devices_resumes_on_2_and_ends_as_the_cpu_reference(tmp_path):
    """The checkpoint holds host tensors by agent id: a resume may change the device count, as the process count."""
    extra = ["--algo", "decpg", "--k", "2"]
    out = tmp_path / "xla"
    decnode_run("--nproc", "4", "--set", "run.device=xla", "--set", "env.n_agents=4", *SMALL, *extra,
                "--set", "run.stop_after=1", "--out", out)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 1
    decnode_run("--nproc", "2", "--resume", out)  # run.device=xla comes from the run's config
    ref = run_job(tmp_path / "cpu", 4, extra, xla=False)
    resumed = torch.load(out / "models.pt", weights_only=False)
    assert resumed["iteration"] == 2
    torch.testing.assert_close(resumed["actor_rows"], ref["models"]["actor_rows"], atol=ATOL, rtol=0)
