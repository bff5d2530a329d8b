"""Issue 23, classes 4, 5 and 8, through the real commands: one strict YAML reading for every file decnode reads,
no silent no-op (each refused or reported in one line), and every numeric flag bounded before anything starts.

A refused command must exit with code 2, say one line on stderr (no traceback) and change no file in its sandbox.
Most of them fail before torch is imported; three tiny trainings (a stopped run and two resumes of it) show what
a run records of its network profile and what a resume says about it.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--nproc", "2", "--k", "1", "--set", "env.n_envs=2", "--set", "env.episode_length=5", "--set",
         "train.hidden=16", "--set", "eval.episodes=2", "--set", "eval.test_episodes=2", "--set", "eval.interval=0",
         "--set", "run.tensorboard=false", "--no-preflight"]
PROGS = {"decnode.run": "decnode-run", "decnode.tools.sweep.command": "decnode-sweep",
         "decnode.tools.plots": "decnode-plot", "decnode.tools.landscape": "decnode-landscape",
         "decnode.tools.evalmodes": "decnode-eval", "decnode.tools.netmodel": "decnode-netmodel",
         "decnode.tools.report.command": "decnode-report"}


def cli(module, *args, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def refused(box: Path, module: str, *args, needle: str) -> str:
    """Exit code 2, exactly one stderr line `prog: error: …` holding needle, no traceback, no file changed."""
    before = snapshot(box)
    res = cli(module, *args, cwd=box / "cwd")
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr[-2000:])
    assert lines[0].startswith(f"{PROGS[module]}: error: ") and needle in lines[0], lines[0]
    assert snapshot(box) == before, "a refused command changed files"
    return lines[0]


def resolved(box: Path, *args) -> dict:
    res = cli("decnode.run", *SMALL, *args, "--print-config", cwd=box / "cwd")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr[-2000:]
    return yaml.safe_load(res.stdout)


def write(path: Path, text) -> Path:
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


# ---- class 4: one YAML reading ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["1e8", "1.0e8", "1E8", "1.0e+8", "100_000_000", ".1e9"])
def test_a_profile_reads_numbers_as_a_config_does(box, spelling):
    profile = write(box / "cwd" / "lab.yaml", f"preset: ethernet\nbandwidth_bit_s: {spelling}\n")
    config = write(box / "cwd" / "c.yaml", f"base: {ROOT / 'configs' / 'simple_spread.yaml'}\n"
                                           f"run: {{timeout_s: {spelling}}}\n")
    cfg = resolved(box, "--config", config, "--net", profile)
    assert cfg["run"]["timeout_s"] == 1e8 and cfg["net"]["profile"]["bandwidth_bit_s"] == 1e8


SWEEP = ("config: {base}\nset: {{env.n_agents: 2, algo.k: 1, env.n_envs: 2, train.iterations: 1}}\n"
         "grid: {{train.lr: [1e-3, 2.0e-3]}}\n")
KINDS = {  # how each kind of file is given to its command, with what a valid file of it holds
    "config": ("config file", "base: {base}\n", lambda f: ("decnode.run", *SMALL, "--config", f, "--print-config")),
    "profile": ("network profile", "preset: wan\n", lambda f: ("decnode.run", *SMALL, "--net", f, "--print-config")),
    "sweep": ("sweep file", SWEEP, lambda f: ("decnode.tools.sweep.command", f, "--dry-run")),
}
BAD = {  # one bad content, the same message (after the file's kind and name) whatever the kind of file
    "duplicate": ("{valid}{first}: 1\n", "not valid YAML (line {line}: duplicate key '{first}' (first at line 1))"),
    "list": ("- 1\n- 2\n", "expected a mapping of"),
    "bad YAML": ("a: [1\nb: 2\n", "not valid YAML (line 2"),
    "not UTF-8": (b"a: \xff\xfe\n", "is not a text file (not UTF-8)"),
    "huge": ("#" * (2**20 + 10), "MB; a {kind} is at most 1 MB"),
    "directory": (None, "is a directory, not a YAML file"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", BAD)
def test_every_file_decnode_reads_is_refused_alike_in_one_line(box, kind, bad):
    what, valid, command = KINDS[kind]
    valid = valid.format(base=ROOT / "configs" / "simple_spread.yaml")
    content, needle = BAD[bad]
    path = box / "home" / f"{kind}.yaml"
    first = valid.split(":")[0]  # a valid file with its first key given again below
    if content is None:
        path.mkdir()
    else:
        write(path, content.format(valid=valid, first=first) if bad == "duplicate" else content)
    needle = needle.format(kind=what, first=first, line=valid.count("\n") + 1)
    line = refused(box, *command(path), needle=needle)
    assert str(path) in line


def test_an_empty_profile_is_refused_an_empty_config_is_the_defaults(box):
    empty = write(box / "home" / "empty.yaml", "")
    refused(box, "decnode.run", *SMALL, "--net", empty, "--print-config", needle=f"network profile {empty} is empty")
    refused(box, "decnode.tools.sweep.command", empty, "--dry-run", needle="`config:` must name the base config file")
    assert resolved(box, "--config", empty)["train"]["iterations"] == 1000  # the defaults, as documented


@pytest.mark.parametrize("faults,needle", [
    ("faults:\n  - {kind: kill, rank: 1, iteration: 1, iteration: 2}\n",
     "line 3: duplicate key 'iteration' (first at line 3)"),
    ("faults:\n  - kind: stall\n    rank: 1\n    kind: kill\n", "line 5: duplicate key 'kind' (first at line 3)"),
])
def test_a_fault_list_with_a_duplicate_key_is_refused(box, faults, needle):
    config = write(box / "home" / "faults.yaml", f"base: {ROOT / 'configs' / 'simple_spread.yaml'}\n{faults}")
    refused(box, "decnode.run", *SMALL, "--config", config, "--print-config", needle=needle)
    refused(box, "decnode.run", *SMALL, "--set", "faults=[{kind: kill, rank: 1, kind: stall}]", "--print-config",
            needle="--set faults: not valid YAML (line 1: duplicate key 'kind' (first at line 1))")


def test_a_sweep_reads_numbers_and_refuses_a_duplicate_key(box):
    good = write(box / "home" / "s.yaml", SWEEP.format(base=ROOT / "configs" / "simple_spread.yaml"))
    res = cli("decnode.tools.sweep.command", good, "--dry-run", "--out", box / "cwd" / "s", cwd=box / "cwd")
    assert res.returncode == 0 and "lr-0.001" in res.stdout and "lr-0.002" in res.stdout, res.stderr
    dup = write(box / "home" / "d.yaml", good.read_text() + "grid: {train.lr: [1]}\n")
    refused(box, "decnode.tools.sweep.command", dup, "--dry-run",
            needle="line 4: duplicate key 'grid' (first at line 3)")


# ---- a stopped run with a profile from a file: what it records, what a resume says ------------------------------
@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run on `--net lab.yaml` (α 1 ms, a relative path), stopped after iteration 2 of 4."""
    base = tmp_path_factory.mktemp("stopped")
    (base / "cwd").mkdir()
    write(base / "cwd" / "lab.yaml", "preset: ethernet\nlatency_s: 1e-3\n")
    res = cli("decnode.run", *SMALL, "--iterations", "4", "--set", "run.stop_after=2", "--net", "lab.yaml",
              "--out", "run", cwd=base / "cwd")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return base


def _copy(stopped: Path, box: Path) -> Path:
    run = box / "cwd" / "run"
    shutil.copytree(stopped / "cwd" / "run", run)
    return run


def test_a_run_records_its_profile_by_content(stopped):
    profile = yaml.safe_load((stopped / "cwd" / "run" / "config.yaml").read_text())["net"]["profile"]
    assert profile["file"] == str((stopped / "cwd" / "lab.yaml").resolve())
    assert profile["latency_s"] == 0.001 and profile["bandwidth_bit_s"] == 1e9 and profile["name"] == "ethernet+"


def _resume(box: Path, run: Path, cwd: Path, *args) -> list[str]:
    """Resume to iteration 3: exit 0, no traceback, no file changed outside the run directory; decnode's notes."""
    outside = lambda: {k: v for k, v in snapshot(box).items() if not k.startswith("cwd/run")}  # noqa: E731
    before = outside()
    res = cli("decnode.run", "--nproc", "2", "--resume", run, "--set", "run.stop_after=3", *args, cwd=cwd)
    assert res.returncode == 0 and "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    assert outside() == before
    return [line for line in res.stdout.splitlines() if line.startswith("decnode-run: ")]


def test_an_edited_profile_file_is_reported_and_the_run_keeps_its_record_from_any_directory(stopped, box):
    run = _copy(stopped, box)
    lab = stopped / "cwd" / "lab.yaml"
    original = lab.read_text()
    write(lab, "preset: ethernet\nlatency_s: 0.5\n")
    try:
        elsewhere = box / "cwd" / "elsewhere"
        elsewhere.mkdir()
        notes = _resume(box, Path("..") / "run", elsewhere)
    finally:
        write(lab, original)
    drift = [n for n in notes if "changed since this run recorded it" in n]
    assert len(drift) == 1 and "latency_s 0.001 → 0.5" in drift[0] and f"--net {lab}" in drift[0], notes
    assert yaml.safe_load((run / "config.yaml").read_text())["net"]["profile"]["latency_s"] == 0.001
    sim = [json.loads(line)["sim"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(sim) == 3 and all(s["wire"] < 0.5 for s in sim)  # no 500 ms message: the recorded α stayed


def test_a_resume_lists_a_changed_profile_and_new_faults_among_its_changes(stopped, box):
    run = _copy(stopped, box)
    slow = write(box / "cwd" / "slow.yaml", "preset: ethernet\nlatency_s: 0.002\n")
    notes = _resume(box, run, box / "cwd", "--net", slow, "--set",
                    "faults=[{kind: stall, rank: 1, iteration: 3, seconds: 0.1}]")
    head = [n for n in notes if n.startswith("decnode-run: resuming")]
    assert len(head) == 1 and "net.profile.latency_s 0.001 → 0.002" in head[0], notes
    assert "faults: stall rank 1 for 0.1 s at iteration 3" in head[0], notes
    assert yaml.safe_load((run / "config.yaml").read_text())["net"]["profile"]["file"] == str(slow.resolve())


@pytest.mark.parametrize("fault,needle", [
    ("{kind: kill, rank: 1, iteration: 2}", "faults[0]: iteration 2 is already done (the run resumes after "
                                            "iteration 2): it would never fire; name an iteration in 3…4"),
    ("{kind: drop, link: [0, 1], iteration: 1}", "faults[0]: iteration 1 is already done"),
])
def test_a_fault_for_an_iteration_already_done_is_refused_on_resume(stopped, box, fault, needle):
    run = _copy(stopped, box)
    refused(box, "decnode.run", "--nproc", "2", "--resume", run, "--set", f"faults=[{fault}]", needle=needle)


def test_a_config_yaml_with_a_duplicate_key_is_refused_by_every_reader(stopped, box):
    run = _copy(stopped, box)
    text = (run / "config.yaml").read_text()
    write(run / "config.yaml", text + "train:\n  lr: 0.5\n")
    needle = (f"{run / 'config.yaml'}: not valid YAML (line {text.count(chr(10)) + 1}: duplicate key 'train' "
              f"(first at line {text.splitlines().index('train:') + 1}))")
    refused(box, "decnode.run", "--nproc", "2", "--resume", run, needle=needle)
    refused(box, "decnode.tools.plots", run, "--out", box / "cwd" / "plots", needle=needle)
    # decnode-eval reads it after models.pt (the stopped run has one), decnode-report as it finds the run
    refused(box, "decnode.tools.evalmodes", run, "--episodes", "2", "--test-episodes", "2", needle=needle)
    refused(box, "decnode.tools.report.command", run, "--out", box / "cwd" / "report", needle=needle)


# ---- class 5: silent no-ops -------------------------------------------------------------------------------------
@pytest.mark.parametrize("profile,needle", [
    ("name: loopback\npreset: ethernet\nlatency_s: 0.01\n", "net.name 'loopback' is the preset's name, but this "
                                                           "profile has latency_s 0.01, bandwidth_bit_s 1e+09"),
    ("name: wan\nlatency_s: 1\n", "net.name 'wan' is the preset's name"),
    ("name: ''\npreset: ethernet\n", "net.name must be a non-empty text"),
    ("preset: loopback\n", "profile 'loopback' costs nothing"),
    ("preset: ethernet\nlatency_s: 0\nbandwidth_bit_s: .inf\n", "profile 'ethernet+' costs nothing"),
    ("speed: [1, 1.0]\nstraggler_p: 0.5\n", "profile 'loopback+' costs nothing"),  # stragglers 1× slower: nothing
    ("mode: emulate\n", "profile 'loopback+' costs nothing"),
])
def test_a_profile_that_would_simulate_nothing_is_refused(box, profile, needle):
    path = write(box / "home" / "p.yaml", profile)
    refused(box, "decnode.run", *SMALL, "--iterations", "2", "--net", path, "--out", box / "cwd" / "r",
            needle=f"{path}: {needle}")


@pytest.mark.parametrize("args,needle", [
    (["--set", "net.mode=emulate"], "net.mode=emulate needs a network profile (--net)"),
    (["--set", "net.mode=simulate"], "net.mode=simulate needs a network profile (--net)"),
    (["--net", "loopback", "--set", "net.mode=emulate"], "net.mode=emulate needs a network profile"),
    (["--net", "wan", "--nproc", "1", "--agents-per-process", "2"], "--net wan needs 2 or more processes"),
    (["--set", "faults=[{kind: link_down, link: [0, 1], iteration: 1, seconds: 1}]"],
     "faults[0]: link_down needs a network profile (--net)"),
    (["--net", "loopback", "--set", "faults=[{kind: link_down, link: [1, 0], iteration: 2, seconds: 1}]"],
     "faults[0]: link_down needs a network profile (--net)"),
    (["--set", "run.stop_after=1", "--set", "faults=[{kind: stall, rank: 1, iteration: 2, seconds: 1}]"],
     "faults[0]: iteration 2 is after run.stop_after=1, where this job stops: it would never fire"),
])
def test_settings_that_would_do_nothing_are_refused(box, args, needle):
    refused(box, "decnode.run", *SMALL, "--iterations", "2", "--out", box / "cwd" / "r", *args, needle=needle)


# ---- class 8: bounds, one line, before anything starts --------------------------------------------------------------
@pytest.mark.parametrize("value", ["0.001", "1", "4.9", "0", "-1"])
def test_a_timeout_below_what_setup_needs_is_refused_before_anything_starts(box, value):
    refused(box, "decnode.run", *SMALL, "--iterations", "2", "--out", box / "cwd" / "r", "--set",
            f"run.timeout_s={value}", needle="run.timeout_s must be ≥ 5 s")


def test_a_timeout_at_the_floor_is_accepted(box):
    assert resolved(box, "--set", "run.timeout_s=5")["run"]["timeout_s"] == 5.0


@pytest.mark.parametrize("args,needle", [
    *[(["sweep", "--latency-s", v], f"argument --latency-s: must be ≥ 0 and finite, got '{v}'")
      for v in ("inf", "nan", "-1")],
    (["sweep", "--latency-s=-inf"], "argument --latency-s: must be ≥ 0 and finite, got '-inf'"),
    (["sweep", "--latency-s", "1e-4", "inf"], "argument --latency-s: must be ≥ 0 and finite, got 'inf'"),
    *[(["sweep", "--compute-s", v], f"argument --compute-s: must be ≥ 0 and finite, got '{v}'")
      for v in ("inf", "NaN", "-0.5")],
    *[(["predict", "--overlap-s", v], f"argument --overlap-s: must be ≥ 0 and finite, got '{v}'")
      for v in ("inf", "nan", "-0.001")],
    (["predict", "--overlap-s", "soon"], "argument --overlap-s: expected a number, got 'soon'"),
    (["predict", "--nproc", "inf"], "argument --nproc: invalid int value: 'inf'"),
    (["compare", "--iterations", "nan"], "argument --iterations: invalid int value: 'nan'"),
])
def test_netmodel_numbers_must_be_finite_and_non_negative(box, args, needle):
    refused(box, "decnode.tools.netmodel", *args, needle=needle)


@pytest.mark.parametrize("module,args,needle", [
    ("decnode.tools.landscape", ["RUN", "--span", "inf"], "argument --span: must be > 0 and finite, got 'inf'"),
    ("decnode.tools.landscape", ["RUN", "--span", "nan"], "argument --span: must be > 0 and finite, got 'nan'"),
    ("decnode.tools.landscape", ["RUN", "--span", "0"], "argument --span: must be > 0 and finite, got '0'"),
    ("decnode.tools.landscape", ["RUN", "--grid", "inf"], "argument --grid: invalid int value: 'inf'"),
    ("decnode.tools.evalmodes", ["RUN", "--episodes", "nan"], "argument --episodes: invalid int value: 'nan'"),
    ("decnode.tools.plots", ["RUN", "--smooth", "inf"], "argument --smooth: invalid int value: 'inf'"),
    ("decnode.tools.sweep.command", ["S.yaml", "--jobs", "inf"], "argument --jobs/-j: invalid int value: 'inf'"),
    ("decnode.run", ["--iterations", "inf"], "argument --iterations: invalid int value: 'inf'"),
])
def test_every_numeric_flag_refuses_inf_and_nan(box, module, args, needle):
    refused(box, module, *args, needle=needle)
