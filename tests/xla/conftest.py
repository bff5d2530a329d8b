"""tests/xla run only where torch_xla is installed (.venv-xla, `make test-xla`); elsewhere they are skipped.

torch_xla 2.9.0 loads only with torch 2.9.0 and the main venv pins 2.13.0, so `make test` skips these. The test
modules never import torch_xla themselves (each test runs its devices in a subprocess), so collecting them is
cheap everywhere.
"""

import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # the helper module xla_run beside these tests

HAVE_XLA = importlib.util.find_spec("torch_xla") is not None


def pytest_collection_modifyitems(config, items):
    if HAVE_XLA:
        return
    skip = pytest.mark.skip(reason="torch_xla is not installed (it needs torch 2.9.0): run `make test-xla`, "
                                   "which builds .venv-xla")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(skip)
