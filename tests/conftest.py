import atexit
import os
import shutil
import sys
import tempfile

import pytest

# matplotlib's font cache lives in ~/.config (~/.cache) and is shared by every matplotlib of that version on the
# machine: one built while another venv's matplotlib was half installed or deleted lists no STIX/Computer Modern
# fonts, and every figure then warns "findfont: Font family ['STIXGeneral'] not found" on stderr (seen once on a
# fresh clone here), which tests that require a silent stderr read as a failure. The suite builds its own, once per
# test process and the commands it starts.
os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="decnode-tests-matplotlib-")
atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)

# Tests import the helpers modules `multiproc` and `figcheck` that sit beside them.
sys.path.insert(0, os.path.dirname(__file__))
pytest.register_assert_rewrite("figcheck")  # its failures show the values, as a test's own asserts do


def pytest_configure(config):
    # One JAX compilation cache per test run (decnode keeps one in ~/.cache/decnode/jax otherwise: envs/jaxcache.py),
    # made here, in the process that starts pytest-xdist's workers, so they and every command they start share it:
    # each SMAX map and batch size compiles once per run instead of once per test (~20 s each), and a run's timing
    # does not depend on what an earlier run left in the user's cache.
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="decnode-tests-jax-")
        atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    config.addinivalue_line("markers", "slurm: needs a real SLURM (tests/test_slurm.py starts one; make test-slurm)")
    config.addinivalue_line("markers", "serial: compares wall-clock or simulated time with the host's: make test runs "
                                       "these alone, after the others have run two at a time")


@pytest.fixture
def box(tmp_path):
    """A sandbox: the user's files (home/), and the working directory the command runs in (cwd/)."""
    (tmp_path / "home" / "sub").mkdir(parents=True)
    (tmp_path / "home" / "thesis.tex").write_text("years of work\n")
    (tmp_path / "home" / "sub" / "data.csv").write_text("1,2,3\n")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "notes.txt").write_text("mine\n")
    return tmp_path


# Figures a test measured (a timing ratio, a prediction's accuracy), printed together at the end of the run so that
# every `make test` shows them, pass or fail, beside the CPU they were measured on.
_MEASURED: list[tuple[str, str]] = []


@pytest.fixture
def measured(request):
    """measured("ratio 0.97") records a figure under the test's name for the end-of-run summary."""
    return lambda text: _MEASURED.append((request.node.nodeid, text))


def pytest_terminal_summary(terminalreporter):
    if not _MEASURED:
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    terminalreporter.section(f"measured on {cpu} ({os.cpu_count()} cores)")
    for nodeid, text in _MEASURED:
        terminalreporter.write_line(f"{nodeid}: {text}")


@pytest.fixture
def saved_figures(monkeypatch):
    """{file name: Figure} of every figure decnode saves in this process (all go through plots.save_figure), so a
    test reads what a figure shows (axes, series, the numbers plotted) instead of trusting a file's size. The
    file is still written, unchanged."""
    from pathlib import Path

    from decnode.tools import plots

    figures = {}
    save = plots.save_figure

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", keep)
    return figures
