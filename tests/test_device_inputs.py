"""run.device through the real command line in the main venv (no torch_xla here): what the XLA placement cannot
do is refused in one line before anything starts, like every other bad input (the sandbox of conftest.box)."""

import importlib.util

import pytest

from test_inputs import TORCHRUN, refused

XLA = ["--nproc", "4", "--k", "2", "--set", "run.device=xla"]


@pytest.mark.parametrize("args,needle", [
    (["--set", "run.device=tpu"], "run.device must be cpu or xla, got 'tpu'"),
    ([*XLA, "--net", "wan"], "run.device=xla does not support net.profile=wan"),
    ([*XLA, "--set", "faults=[{kind: stall, rank: 1, iteration: 1, seconds: 1}]"], "does not support faults"),
    ([*XLA, "--max-restarts", "1"], "without --max-restarts"),
])
def test_what_the_xla_placement_lacks_is_refused(box, args, needle):
    refused(box, args, needle)


def test_xla_under_torchrun_is_refused(box):
    refused(box, ["--k", "1", "--set", "run.device=xla"], "not under torchrun", env=TORCHRUN)


@pytest.mark.skipif(importlib.util.find_spec("torch_xla") is not None, reason="torch_xla is installed here")
def test_xla_without_torch_xla_names_the_venv_to_use(box):
    line = refused(box, XLA, "run.device=xla needs torch_xla")
    assert "make install-xla" in line and ".venv-xla/bin/decnode-run" in line
