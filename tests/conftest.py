import os
import sys

import pytest

# Tests import the helpers module `multiproc` that sits beside them.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def box(tmp_path):
    """A sandbox: the user's files (home/), and the working directory the command runs in (cwd/)."""
    (tmp_path / "home" / "sub").mkdir(parents=True)
    (tmp_path / "home" / "thesis.tex").write_text("years of work\n")
    (tmp_path / "home" / "sub" / "data.csv").write_text("1,2,3\n")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "notes.txt").write_text("mine\n")
    return tmp_path
