"""Issue 9, class by class, through the real command line: every bad input is one line on stderr, exit code 2,
no traceback, no process started and no file changed; every accepted value means what it says.

Each refused input runs in a sandbox holding a sentinel tree (a user's files around the run directory) and the
test compares a snapshot of the whole sandbox before and after. Most inputs fail before torch is imported, so
they take a fraction of a second; a handful of tests train a tiny run (about 8 s each).
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
CONFIGS = ROOT / "configs"
TINY = ["--nproc", "2", "--k", "1", "--iterations", "1", "--set", "env.n_envs=2", "--set", "env.episode_length=5",
        "--set", "eval.episodes=2", "--set", "eval.test_episodes=2", "--set", "run.tensorboard=false"]
TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in (*TORCHRUN, "SC2PATH")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


# `python -m module`, after lowering the open-files limit in the child itself: a preexec_fn would make subprocess
# fork() the pytest process, where JAX (loaded by other test files) warns that a fork may deadlock, once per call.
_LIMITED = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv.pop(1)), "
            "resource.getrlimit(resource.RLIMIT_NOFILE)[1])); runpy.run_module(sys.argv.pop(1), run_name='__main__', "
            "alter_sys=True)")


def cli(args, cwd, env=None, module="decnode.run", timeout=120, nofile=None):
    start = ["-c", _LIMITED, str(nofile), module] if nofile else ["-m", module]
    return subprocess.run([sys.executable, *start, *map(str, args)], cwd=cwd, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict:
    """Every path below root with its content hash (files), target (symlinks) or None (directories)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = None
    return out


def one_line(res, needle, prog="decnode-run"):
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr[-2000:])
    assert lines[0].startswith(f"{prog}: error: ") and needle in lines[0], lines[0]
    return lines[0]


def refused(box, args, needle, env=None, module="decnode.run", prog="decnode-run", nofile=None):
    """The command is refused in one line and nothing anywhere in the sandbox changes."""
    args = [a.replace("{box}", str(box)) if isinstance(a, str) else a for a in args]
    before = snapshot(box)
    res = cli(args, box / "cwd", env=env, module=module, nofile=nofile)
    line = one_line(res, needle, prog)
    assert snapshot(box) == before, "a refused command changed files"
    return line


def resolved(box, args) -> dict:
    res = cli([*args, "--print-config"], box / "cwd")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr[-2000:]
    return yaml.safe_load(res.stdout)


def train_tiny(box, out, *extra):
    res = cli([*TINY, "--out", out, *extra], box / "cwd", timeout=240)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run (checkpoint, models, metrics), shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("finished")
    (base / "cwd").mkdir()
    train_tiny(base, base / "run")
    return base / "run"


# ---- 1. --overwrite deletes only what decnode wrote ---------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--out", "{box}/home", "--overwrite"], "not created by decnode"),
    (["--out", "{box}/home"], "not created by decnode"),
    (["--out", ".", "--overwrite"], "nothing is deleted"),
    (["--out", "{box}", "--overwrite"], "not created by decnode"),
    (["--out", "{box}/home/sub", "--overwrite"], "holds data.csv"),
])
def test_overwrite_refuses_directories_decnode_did_not_make(box, args, needle):
    refused(box, [*TINY, *args], needle)


@pytest.mark.parametrize("extra,needle", [
    ({"thesis.tex": "mine"}, "holds files decnode did not write (thesis.tex)"),
    ({"tb/mine.txt": "mine"}, "tb/mine.txt"),
    ({"drafts/a.txt": "mine"}, "drafts/"),
])
def test_overwrite_refuses_a_run_directory_holding_foreign_files(box, extra, needle):
    run = box / "home" / "run"
    run.mkdir()
    (run / ".decnode-run.json").write_text(json.dumps({"created_by": "decnode", "writes": ["config.yaml", "tb/events.*",
                                                                                          "checkpoint.pt"]}))
    (run / "config.yaml").write_text("x: 1\n")
    (run / "checkpoint.pt").write_text("x")
    for rel, text in extra.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(text)
    refused(box, [*TINY, "--out", run, "--overwrite"], needle)


def test_overwrite_replaces_only_our_own_run_and_the_config_is_what_trained(box):
    run = box / "home" / "run"
    train_tiny(box, run, "--set", "train.lr=0.02")
    assert (run / ".decnode-run.json").is_file()
    refused(box, [*TINY, "--out", run], "exists; pass --resume")
    (run / "keep.txt").write_text("mine\n")
    refused(box, [*TINY, "--out", run, "--overwrite"], "keep.txt")
    (run / "keep.txt").unlink()
    outside = snapshot(box / "home" / "sub"), (box / "home" / "thesis.tex").read_text()
    res = train_tiny(box, run, "--overwrite", "--set", "train.lr=3e-2", "--seed", "7")
    assert "--overwrite: deleting decnode's files" in res.stdout
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["lr"] == 0.03 and cfg["train"]["seed"] == 7
    assert torch_iteration(run) == 1
    assert (snapshot(box / "home" / "sub"), (box / "home" / "thesis.tex").read_text()) == outside


def torch_iteration(run: Path) -> int:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]["iteration"]


def test_a_run_that_stopped_during_setup_does_not_block_the_same_command(box):
    run = box / "home" / "run"
    run.mkdir()  # what a setup failure leaves: the manifest, config.yaml, processes.json, an empty metrics file
    (run / ".decnode-run.json").write_text(json.dumps({"created_by": "decnode", "writes": ["*.json", "*.yaml",
                                                                                          "*.jsonl", "*.pt"]}))
    (run / "config.yaml").write_text("old: 1\n")
    (run / "processes.json").write_text("[]")
    (run / "metrics.jsonl").write_text("")
    res = train_tiny(box, run)
    assert "stopped during setup" in res.stdout
    assert torch_iteration(run) == 1


# ---- 2. launcher variables ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("env,needle", [
    ({"RANK": "1"}, "RANK set but not WORLD_SIZE"),
    ({"LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "x"}, "LOCAL_RANK, TORCHELASTIC_RUN_ID set but not"),
    ({**TORCHRUN, "RANK": "abc"}, "RANK='abc' is not a non-negative integer"),
    ({**TORCHRUN, "RANK": "-1"}, "RANK='-1'"),
    ({**TORCHRUN, "RANK": "2"}, "RANK=2 ≥ WORLD_SIZE=2"),
    ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE=0 < 1"),
    ({**TORCHRUN, "MASTER_PORT": "99999"}, "MASTER_PORT=99999 is not a port"),
    ({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}, "but not MASTER_PORT"),
])
def test_partial_or_malformed_launcher_variables_are_one_line(box, env, needle):
    refused(box, [*TINY, "--out", "{box}/home/run"], needle, env=env)


def test_max_restarts_under_torchrun_must_be_torchruns(box):
    refused(box, [*TINY, "--max-restarts", "2", "--out", "{box}/home/run"],
            "--max-restarts 2 disagrees with torchrun's --max-restarts 1 (pass it to torchrun)",
            env={**TORCHRUN, "TORCHELASTIC_MAX_RESTARTS": "1"})


def test_rank_variable_cannot_bypass_the_run_directory_checks(box, finished):
    copy = box / "home" / "run"
    shutil.copytree(finished, copy)
    refused(box, [*TINY, "--out", copy], "RANK set but not", env={"RANK": "1"})


def test_under_torchrun_rank0_guards_the_run_directory_and_no_worker_is_silent(box, finished):
    copy = box / "home" / "run"
    shutil.copytree(finished, copy)
    before = snapshot(box)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "decnode.run", *TINY[2:], "--out", str(copy)], cwd=box / "cwd", env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "decnode-run: error: run directory" in res.stderr and "exists; pass --resume" in res.stderr
    assert snapshot(box) == before
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "decnode.run", *TINY[2:], "--k", "5", "--out", str(box / "home" / "new")],
                         cwd=box / "cwd", env=_env(), capture_output=True, text=True, timeout=120)
    # Each worker that gets to its check says so; torchrun may stop the slower one first (it saw the other's exit).
    ours = [line for line in res.stderr.splitlines() if line.startswith("decnode-run: error:")]
    assert 1 <= len(ours) <= 2 and all("algo.k must be in [0, 1]" in line for line in ours), res.stderr[-2000:]
    assert snapshot(box) == before


# ---- 3. layers merge key by key, in a tested order --------------------------------------------------------------
def test_per_algo_overrides_merge_key_by_key(box):
    spread, smac = CONFIGS / "simple_spread.yaml", CONFIGS / "smac_5m_vs_6m.yaml"
    cfg = resolved(box, ["--nproc", "3", "--k", "1", "--config", spread, "--algo", "ps_entropy",
                         "--set", "per_algo.ps_entropy.entropy_coef=0.01"])
    assert cfg["train"]["entropy_coef"] == 0.01 and cfg["algo"]["name"] == "ps_entropy" and cfg["per_algo"] == {}
    cfg = resolved(box, ["--nproc", "5", "--config", smac, "--algo", "ps", "--set", "per_algo.ps.lr=0.5"])
    assert (cfg["train"]["lr"], cfg["train"]["min_lr"]) == (0.5, 0.001)
    cfg = resolved(box, ["--nproc", "5", "--config", smac, "--algo", "ps_entropy", "--set", "train.lr=0.05"])
    assert (cfg["train"]["lr"], cfg["train"]["min_lr"], cfg["train"]["entropy_coef"]) == (0.05, 0.001, 0.005)
    cfg = resolved(box, ["--nproc", "5", "--config", smac])  # base file + the map's overrides
    assert (cfg["train"]["clip"], cfg["train"]["chunk_length"], cfg["algo"]["k"]) == (0.05, 10, 2)


def test_precedence_defaults_base_file_per_algo_flags_set(box):
    (box / "base.yaml").write_text("train: {lr: 0.1, clip: 0.3, entropy_coef: 0.1, iterations: 5}\n"
                                   "per_algo: {decpg: {value_coef: 0.7, clip: 0.25}}\n")
    (box / "run.yaml").write_text("base: base.yaml\ntrain: {lr: 0.2, clip: 0.4, gamma: 0.9}\n"
                                  "per_algo: {decpg: {lr: 0.3, gamma: 0.8}}\n")
    cfg = resolved(box, ["--nproc", "2", "--k", "1", "--config", box / "run.yaml", "--iterations", "9",
                         "--set", "train.gamma=0.7", "--set", "per_algo.decpg.value_coef=0.6"])["train"]
    assert cfg["huber_delta"] == 10.0  # default
    assert cfg["entropy_coef"] == 0.1  # base
    assert cfg["lr"] == 0.3 and cfg["clip"] == 0.25  # per_algo beats the file and its base
    assert cfg["value_coef"] == 0.6  # --set per_algo.* merges into the file's per_algo table
    assert cfg["gamma"] == 0.7 and cfg["iterations"] == 9  # --set and flags beat per_algo


# ---- 4. non-finite and inconsistent values; 5. every float spelling; bools are not numbers -------------------------
@pytest.mark.parametrize("args,needle", [
    (["--set", "train.lr=.inf"], "'train.lr' must be a finite number"),
    (["--set", "train.lr=-.inf"], "'train.lr' must be a finite number"),
    (["--set", "train.min_lr=.nan"], "'train.min_lr' must be a finite number"),
    (["--set", "run.timeout_s=.NaN"], "'run.timeout_s' must be a finite number"),
    (["--set", "train.clip=1e400"], "'train.clip' must be a finite number"),
    (["--set", "train.min_lr=0.5"], "train.min_lr=0.5 must be ≤ train.lr=0.01"),
    (["--set", "run.stop_after=-3"], "run.stop_after must be ≥ 1"),
    (["--set", "run.stop_after=0"], "run.stop_after must be ≥ 1"),
    (["--out", ""], "must not be empty"),
    (["--set", "eval.obs_noise=-1e-3"], "eval.obs_noise must be ≥ 0"),
    (["--set", "train.lr=true"], "'train.lr' must be float, got True"),
    (["--set", "train.hidden=64.0"], "'train.hidden' must be int, got 64.0"),
    (["--set", "run.tensorboard=1"], "'run.tensorboard' must be bool, got 1"),
    (["--set", "train.lr=1:30"], "'train.lr' must be float, got '1:30'"),
    (["--set", "train"], "--set expects section.key=value"),
    (["--set", "train.lr=[1"], "--set train.lr: not valid YAML"),
    (["--set", "per_algo.sac.lr=1"], "per_algo.sac: unknown algorithm 'sac' (known: decpg, ps, ps_entropy, push_sum)"),
    (["--set", "per_algo.ps.k=1"], "unknown key 'per_algo.ps.k'"),
])
def test_non_finite_inconsistent_and_mistyped_values_are_refused(box, args, needle):
    refused(box, [*TINY, "--out", "{box}/home/run", *args], needle)


# ---- issue 14: fault injection entries, checked against the job before anything starts ----------------------------
@pytest.mark.parametrize("faults,needle", [
    ("[{kind: explode, rank: 1, iteration: 1}]", "faults[0]: unknown kind 'explode' (known: kill, stall, drop"),
    ("[{kind: kill, rank: 2, iteration: 1}]", "faults[0]: rank 2 is not in the job's ranks 0…1"),
    ("[{kind: stall, rank: 0, iteration: 1, seconds: -1}]", "faults[0]: seconds must be a finite number ≥ 0, got -1"),
    ("[{kind: stall, rank: 0, iteration: 1}]", "faults[0]: stall needs seconds"),
    ("[{kind: kill, rank: 0, iteration: 0}]", "faults[0]: iteration 0 is not in 1…1"),
    ("[{kind: kill, rank: 0, iteration: 1, link: [0, 1]}]", "faults[0]: kill takes rank, iteration, not 'link'"),
    ("[{kind: drop, link: [1, 1], iteration: 1}]", "faults[0]: link 1→1 carries no messages in this job"),
    ("[{kind: drop, link: [0], iteration: 1}]", "faults[0]: link must be [sender rank, receiver rank]"),
    ("[{kind: delay, link: [0, 1], iteration: 1, seconds: 400}]", "a delay of 400 s is not below run.timeout_s=300"),
    ("[{kind: link_down, link: [0, 1], iteration: 1, seconds: 3}]", "link_down needs a network profile (--net)"),
    ("{kind: kill}", "faults must be a list of mappings"),
])
def test_bad_fault_entries_are_one_line(box, faults, needle):
    refused(box, [*TINY, "--out", "{box}/home/run", "--set", f"faults={faults}"], needle)


def test_a_link_must_be_an_edge_of_the_knn_graph(box):
    # k=1 on 4 agents: agent i listens to i+1, so 2 → 1 carries gossip and 1 → 2 nothing (neither is rank 0's).
    args = [*TINY, "--nproc", "4", "--no-preflight", "--out", "{box}/home/run"]
    refused(box, [*args, "--set", "faults=[{kind: drop, link: [1, 2], iteration: 1}]"],
            "link 1→2 carries no messages in this job: not an edge of the graph (k=1, 4 processes)")
    assert resolved(box, [*TINY[2:], "--nproc", "4", "--no-preflight", "--set",
                          "faults=[{kind: drop, link: [2, 1], iteration: 1}]"])["faults"][0]["link"] == [2, 1]


def test_hang_warning_must_be_below_the_timeout(box):
    refused(box, [*TINY, "--out", "{box}/home/run", "--set", "run.timeout_s=20", "--set", "run.hang_warning_s=20"],
            "run.hang_warning_s=20 must be below run.timeout_s=20")


def test_non_finite_value_in_a_file_names_the_file(box):
    (box / "c.yaml").write_text("train:\n  lr: .inf\n")
    line = refused(box, [*TINY, "--config", box / "c.yaml"], "must be a finite number")
    assert "c.yaml" in line


@pytest.mark.parametrize("text,value", [("1e-3", 0.001), ("1E-3", 0.001), (".5", 0.5), ("1_000", 1000.0),
                                        ("2", 2.0), ("+1.5e+1", 15.0), ("5.", 5.0), ("1_0.2_5", 10.25)])
def test_every_float_spelling_works_in_yaml_and_in_set(box, text, value):
    (box / "c.yaml").write_text(f"train:\n  max_grad_norm: {text}\n")
    from_file = resolved(box, ["--nproc", "2", "--k", "1", "--config", box / "c.yaml"])["train"]["max_grad_norm"]
    from_set = resolved(box, ["--nproc", "2", "--k", "1", "--set", f"train.max_grad_norm={text}"])
    assert from_file == from_set["train"]["max_grad_norm"] == value and isinstance(from_file, float)


# ---- 6. duplicate keys -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,needle", [
    ("train:\n  lr: 0.1\neval:\n  episodes: 4\ntrain:\n  clip: 0.3\n", "line 5: duplicate key 'train' (first at line 1)"),
    ("train:\n  lr: 0.1\n  lr: 0.2\n", "line 3: duplicate key 'lr' (first at line 2)"),
    ("per_algo:\n  ps: {lr: 0.1, lr: 0.2}\n", "duplicate key 'lr'"),
    ("train: {clip: 0.1}\ntrain: {clip: 0.1}\n", "line 2: duplicate key 'train'"),
])
def test_duplicate_keys_are_refused_naming_file_and_line(box, text, needle):
    (box / "c.yaml").write_text(text)
    line = refused(box, [*TINY, "--config", box / "c.yaml"], needle)
    assert "c.yaml" in line


def test_duplicate_key_in_a_base_file_names_the_base(box):
    (box / "b.yaml").write_text("eval:\n  episodes: 2\n  episodes: 3\n")
    (box / "c.yaml").write_text("base: b.yaml\n")
    line = refused(box, [*TINY, "--config", box / "c.yaml"], "duplicate key 'episodes'")
    assert "b.yaml" in line
    (box / "b.yaml").write_text("base: c.yaml\n")
    refused(box, [*TINY, "--config", box / "c.yaml"], "form a cycle")


# ---- 7. resume: refuse what cannot apply, apply and say what may change --------------------------------------------
@pytest.mark.parametrize("args,edit,needle", [
    (["--config", str(CONFIGS / "simple_spread.yaml")], None, "--config cannot apply to --resume"),
    (["--set", "train.lr=0.5"], None, "cannot resume: train.lr was 0.01 in the checkpoint, now 0.5"),
    (["--critic", "local"], None, "cannot resume: algo.critic was 'central'"),
    ([], ("train", "hidden", 128), "cannot resume: train.hidden was 64 in the checkpoint, now 128"),
    ([], ("env", "name", "smax:5m_vs_6m"), "cannot resume: env.name was 'simple_spread'"),
    (["--iterations", "1"], None, "already at iteration 1"),
    (["--overwrite"], None, "--overwrite cannot apply to --resume"),
    (["--out", "{box}/home/elsewhere"], None, "--out cannot apply to --resume"),
    (["--iterations", "3", "--set", "run.stop_after=1"], None, "run.stop_after=1 is not after"),
])
def test_resume_refuses_what_cannot_apply(box, finished, args, edit, needle):
    copy = box / "home" / "run"
    shutil.copytree(finished, copy)
    if edit:
        cfg = yaml.safe_load((copy / "config.yaml").read_text())
        cfg[edit[0]][edit[1]] = edit[2]
        (copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    refused(box, ["--nproc", "2", "--resume", copy, *args], needle)


def test_resume_applies_an_edited_config_yaml_and_says_so(box, finished):
    copy = box / "home" / "run"
    shutil.copytree(finished, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["train"]["iterations"] = 2
    cfg["eval"]["interval"] = 1
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = cli(["--nproc", "1", "--resume", copy], box / "cwd", timeout=240)  # same agents, one process now
    assert res.returncode == 0, res.stderr[-2000:]
    assert "train.iterations 1 → 2" in res.stdout and "eval.interval" in res.stdout
    assert "algo.agents_per_process 1 → 2" in res.stdout
    assert torch_iteration(copy) == 2
    assert yaml.safe_load((copy / "config.yaml").read_text())["train"]["iterations"] == 2


# ---- 8. late failures become checks before anything starts ---------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--seed", "-5"], "train.seed must be an integer in [0, "),
    (["--seed", str(2**64)], "train.seed must be an integer in [0, "),
    (["--seed", str(2**63)], "train.seed must be an integer in [0, "),
    (["--set", "train.seed=-1"], "train.seed must be an integer in [0, "),
    (["--set", "train.hidden=100000"], "estimated peak memory"),
    (["--set", "env.n_envs=100000000", "--set", "train.hidden=256"], "estimated peak memory"),
    (["--nproc", "5", "--config", str(CONFIGS / "smac_5m_vs_6m.yaml"), "--set", "env.name=smac:5m_vs_6m",
      "--set", "env.episode_length=10"],
     "needs StarCraft II"),
    (["--set", "algo.k=100000000000000000000000"], "algo.k must be below 2^63"),
])
def test_values_that_failed_inside_workers_are_checked_first(box, args, needle):
    refused(box, [*TINY, "--out", "{box}/home/run", *args], needle)


# ---- 9. I/O: paths, unreadable and malformed files ---------------------------------------------------------------
@pytest.mark.parametrize("setup,args,needle", [
    ("file", ["--out", "{box}/home/thesis.tex"], "is a file, not a directory"),
    ("file", ["--out", "{box}/home/thesis.tex/run"], "home/thesis.tex is a file"),
    (None, ["--out", "/proc/decnode-test/run"], "not writable"),
    (None, ["--config", "{box}/home"], "is a directory, not a YAML file"),
    (None, ["--config", "{box}/home/missing.yaml"], "config file not found"),
    ("binary", ["--config", "{box}/c.yaml"], "not a text file"),
    ("bigint", ["--config", "{box}/c.yaml"], "integer with 100000 digits is too large"),
    ("huge", ["--config", "{box}/c.yaml"], "is 10.0 MB; a config file is at most 1 MB"),
    ("list", ["--config", "{box}/c.yaml"], "expected a mapping of sections, got list"),
    ("badyaml", ["--config", "{box}/c.yaml"], "not valid YAML (line 3: expected"),
    ("section", ["--config", "{box}/c.yaml"], "unknown config section 'trian'"),
])
def test_io_errors_are_one_line_naming_the_path(box, setup, args, needle):
    content = {"binary": bytes(range(256)) * 4, "bigint": b"train:\n  hidden: " + b"9" * 100_000 + b"\n",
               "huge": b"train:\n  hidden: " + b"9" * (10 * 2**20 - 20) + b"\n",
               "list": b"- 1\n- 2\n", "badyaml": b"train:\n  lr: [1\n", "section": b"trian: {lr: 1}\n"}.get(setup)
    if content is not None:
        (box / "c.yaml").write_bytes(content)
    line = refused(box, [*TINY, *args], needle)
    if setup in ("binary", "bigint", "huge", "list", "badyaml"):
        assert "c.yaml" in line


@pytest.mark.parametrize("module,prog,args,needle", [
    ("decnode.tools.plots", "decnode-plot", ["{run}", "--out", "{box}/home/thesis.tex"], "is a file, not a directory"),
    ("decnode.tools.evalmodes", "decnode-eval", ["{run}", "--out", "/proc/decnode-test/eval.json"], "not writable"),
    ("decnode.tools.evalmodes", "decnode-eval", ["{run}", "--out", "{box}/home"], "is a directory; name a file"),
    ("decnode.tools.evalmodes", "decnode-eval", ["{run}", "--mode", "best"], "mode"),
    ("decnode.tools.landscape", "decnode-landscape", ["{box}/home"], "models.pt"),
])
def test_analysis_tools_check_their_output_before_the_work(box, finished, module, prog, args, needle):
    copy = box / "home" / "run"
    shutil.copytree(finished, copy)
    args = [a.replace("{run}", str(copy)) for a in args]
    refused(box, args, needle, module=module, prog=prog)


# ---- 10. argparse's own errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--k", "1.5"], "argument --k: invalid int value: '1.5'"),
    (["--nproc", "x"], "invalid int value: 'x'"),
    # names are checked against the registries (plugins included) once config.compose has loaded the plugins
    (["--algo", "foo"], "unknown algorithm 'foo' (known: decpg, ps, ps_entropy, push_sum)"),
    (["--critic", "up"], "unknown critic placement 'up' (known: central, local)"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--iterations"], "expected one argument"),
    (["--max-restarts", "-1"], "--max-restarts must be ≥ 0, got -1"),
    (["--max-restarts", "1.5"], "argument --max-restarts: invalid int value: '1.5'"),
])
def test_argument_errors_are_one_line_with_the_allowed_values(box, args, needle):
    refused(box, args, needle)


# ---- 11. what the machine can run --------------------------------------------------------------------------------
@pytest.mark.parametrize("args,nofile,needle", [
    (["--nproc", "1000"], None, "estimated peak memory"),
    (["--nproc", "4000"], None, "estimated peak memory"),
    (["--nproc", "20"], 60, "need about 104 open files each, but the limit is 60"),
])
def test_process_count_is_bounded_by_memory_and_files(box, args, nofile, needle):
    line = refused(box, [*TINY, *args, "--k", "1", "--out", "{box}/home/run"], needle, nofile=nofile)
    assert "--no-preflight" in line


def test_more_agents_than_a_dense_graph_can_hold_are_refused_before_it_is_built(box):
    refused(box, [*TINY, "--nproc", "100000", "--k", "1", "--out", "{box}/home/run"],
            "n=100000 agents: decnode plans the agents' graph as dense n×n matrices (74.5 GiB per round here), for up "
            "to 4096 agents")


def test_no_preflight_skips_the_estimate(box):
    # With the estimate skipped the next check speaks: the run directory (so no process was started either).
    refused(box, [*TINY, "--nproc", "1000", "--no-preflight", "--out", "{box}/home"], "not created by decnode")


# ---- issue 10 item 9: every config key documented ------------------------------------------------------------------
def test_help_config_lists_every_key(box):
    from decnode.config import SECTIONS, _fields

    res = cli(["--help-config"], box / "cwd")
    assert res.returncode == 0 and not res.stderr
    for section, cls in SECTIONS.items():
        for name in _fields(cls):
            line = next(x for x in res.stdout.splitlines() if x.split()[:1] == [f"{section}.{name}"])
            assert len(line.split()) > 4, line  # type, default and a doc


def test_missing_optional_dependencies_are_named_with_the_extra(monkeypatch):
    # In-process: jax is installed here, so hide it from the finder the check uses (the CLI path is shared).
    import importlib.util

    from decnode.job import preflight
    from decnode.config import ConfigError, load, resolve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    cfg = resolve(load(CONFIGS / "smac_5m_vs_6m.yaml"), 5)
    with pytest.raises(ConfigError, match=r"needs jax, which is not installed: install the smax extra: "
                                          r"pip install -e '\.\[smax\]'"):
        preflight.check_dependencies(cfg)


def test_ctrl_c_shows_our_line_not_the_launcher_logs(box):
    import signal
    import time

    run = box / "home" / "run"
    cmd = [sys.executable, "-m", "decnode.run", *TINY, "--iterations", "400", "--out", str(run)]
    proc = subprocess.Popen(cmd, cwd=box / "cwd", env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [x for x in stderr.replace("\r", "\n").splitlines() if x.strip() and not x.startswith("train:")]
    assert proc.returncode == 0 and len(lines) == 1 and "SIGINT received" in lines[0], stderr[-2000:]
