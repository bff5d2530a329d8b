"""The network layer's registries: a network preset and a fault kind are entries of net/ (profile.PRESETS,
faults.FAULT_KINDS) that the transport never names — one written here changes what a real 2-process job sees — and
an unknown name is one line listing the known ones at every entry point (--net, config file, --set, sweep file).

Run as a script, this file is decnode-run with two extra entries registered: the launcher's workers start by spawn,
which imports this file again as their main module, so every process of the job knows them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from decnode.net import faults, profile
from decnode.net.profile import NetProfile

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--k", "1", "--iterations", "3", "--set", "env.n_envs=2", "--set", "env.episode_length=5",
        "--set", "train.hidden=16", "--set", "eval.episodes=2", "--set", "eval.test_episodes=2",
        "--set", "eval.interval=0", "--set", "run.tensorboard=false"]
LATE_S = 5.0  # what the new fault kind adds to every message of its link, on the simulated clock


class Late(faults.Effect):
    """Every message of the link arrives `seconds` later on the simulated clock (the sender's stamp)."""

    def shift(self, depart, arrive, host):
        return depart, arrive + self.entry["seconds"], host


class LateKind(faults.FaultKind):
    keys = ("link", "iteration", "seconds")

    def start(self, entry, link):
        return Late(entry)


def register() -> None:
    """The two registry lines a new preset and a new fault kind need; nothing outside net/ learns their names."""
    profile.PRESETS.register("testlan", NetProfile("testlan", latency_s=1e-3, bandwidth_bit_s=1e9))
    faults.FAULT_KINDS.register("late", LateKind())


if __name__ in ("__main__", "__mp_main__"):  # this file as decnode-run, and as its workers' main module
    register()


def decnode(*args, module=None, script=None, cwd=None, timeout=300):
    cmd = [sys.executable, script] if script else [sys.executable, "-m", module or "decnode.run"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line(res, prog="decnode-run") -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def test_a_preset_and_a_fault_kind_written_outside_decnode_change_what_a_real_job_sees(tmp_path):
    late = f"faults=[{{kind: late, link: [0, 1], iteration: 2, seconds: {LATE_S}}}]"
    res = decnode("--nproc", "2", "--net", "testlan", *TINY, "--set", late, "--out", tmp_path / "r",
                  script=__file__, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "simulated cluster, profile 'testlan' (α 1000 µs, β 1 Gbit/s" in res.stdout, res.stdout[-2000:]
    sim = [json.loads(line)["sim"]["seconds"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # Iteration 1: 1 ms links. From iteration 2 each of the 5 steps waits for observations 0 → 1 that arrive
    # LATE_S later, and rank 0 for the actions that rank 1 sends only then: at least 5 × LATE_S per iteration.
    assert sim[0] < LATE_S and all(s >= 5 * LATE_S for s in sim[1:]), sim
    # Without the script's registry lines, neither name exists: the stock decnode-run refuses both, in one line.
    stock = one_line(decnode("--nproc", "2", "--net", "testlan", *TINY, "--out", tmp_path / "s", cwd=tmp_path))
    assert "'testlan' is neither a preset" in stock, stock


PRESETS = ", ".join(profile.PRESETS)
KINDS = ", ".join(faults.FAULT_KINDS)
UNKNOWN_KIND = "[{kind: melt, link: [0, 1], iteration: 1}]"


def _config(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'simple_spread.yaml'}\n{text}")
    return path


@pytest.mark.parametrize("entry", ["--net", "config", "--set", "config mapping"])
def test_an_unknown_preset_is_one_line_listing_the_known_ones(tmp_path, entry):
    config = {"config": "net:\n  profile: fibre\n", "config mapping": "net:\n  profile: {preset: fibre, latency_s: 0.1}\n"}
    args = ["--config", _config(tmp_path, config[entry])] if entry in config else \
        {"--net": ["--net", "fibre"], "--set": ["--set", "net.profile=fibre"]}[entry]
    line = one_line(decnode("--nproc", "2", *TINY, *args, "--out", tmp_path / "r", cwd=tmp_path))
    assert "'fibre'" in line and PRESETS in line, line


@pytest.mark.parametrize("entry", ["config", "--set"])
def test_an_unknown_fault_kind_is_one_line_listing_the_known_ones(tmp_path, entry):
    args = {"--set": ["--set", f"faults={UNKNOWN_KIND}"],
            "config": ["--config", _config(tmp_path, f"faults: {UNKNOWN_KIND}\n")]}
    line = one_line(decnode("--nproc", "2", *TINY, *args[entry], "--out", tmp_path / "r", cwd=tmp_path))
    assert line.endswith(f"faults[0]: unknown kind 'melt' (known: {KINDS})"), line


@pytest.mark.parametrize("what", ["preset", "fault kind"])
def test_an_unknown_preset_or_fault_kind_in_a_sweep_file_is_one_line(tmp_path, what):
    tiny = {"env.n_envs": 2, "env.episode_length": 5, "train.hidden": 16, "eval.interval": 0, "algo.k": 1,
            "run.tensorboard": False, "train.iterations": 1}
    overlay = tmp_path / "faults.yaml"  # a sweep's `set` takes dotted keys: faults come in a config or an overlay
    overlay.write_text(f"faults: {UNKNOWN_KIND}\n")
    sweep = tmp_path / "grid.yaml"
    body = {"config": str(ROOT / "configs" / "simple_spread.yaml"), "out": str(tmp_path / "sw"), "processes": 2,
            "set": tiny, "grid": {"train.seed": [1]}}
    if what == "preset":
        body["grid"]["net.profile"] = ["fibre"]
    else:
        body["overlays"] = [str(overlay)]
    sweep.write_text(json.dumps(body))
    line = one_line(decnode(sweep, "--dry-run", module="decnode.tools.sweep.command", cwd=tmp_path), "decnode-sweep")
    needle = f"'fibre' is neither a preset ({PRESETS})" if what == "preset" else f"unknown kind 'melt' (known: {KINDS})"
    assert needle in line, line

if __name__ == "__main__":
    from decnode.job.run import main

    main(sys.argv[1:])
