"""Issue 23, classes 2 and 9: a run file that is damaged, changed or not the run's own is refused in one line.

checkpoint.pt and models.pt are read only through checkpoint.load_file: every zip entry's CRC-32, the sha256 in
the digest file written with them, and, for models.pt, the run's config.yaml (decnode-eval, decnode-landscape,
decnode-report).
Every refusal goes through the real command: exit code 2, one stderr line naming the file, no traceback, and no
file anywhere in the sandbox changed (eval.json keeps its bytes). Two tiny runs are trained once (about 5 s each);
each refused command takes about a second.
"""

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from test_inputs import ROOT, cli, one_line, snapshot

from decnode.job import checkpoint as ckpt
from decnode.nn.models import RecurrentNet

TINY = ["--nproc", "1", "--k", "1", "--iterations", "2", "--set", "env.n_envs=2", "--set", "env.episode_length=5",
        "--set", "train.hidden=16", "--set", "eval.episodes=2", "--set", "eval.test_episodes=2",
        "--set", "run.tensorboard=false"]
TOOLS = {"eval": ("decnode.tools.evalmodes", "decnode-eval", ["--episodes", "2", "--test-episodes", "2"]),
         "landscape": ("decnode.tools.landscape", "decnode-landscape", ["--grid", "3", "--episodes", "1"])}


def _train(base: Path, name: str, agents: int) -> Path:
    (base / "cwd").mkdir(exist_ok=True)
    res = cli([*TINY, "--agents-per-process", agents, "--out", base / name], base / "cwd", timeout=240)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    res = cli([base / name, *TOOLS["eval"][2]], base / "cwd", module="decnode.tools.evalmodes", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]  # eval.json: what a refused tool must leave as it is
    return base / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs: 2 agents (the one spoiled) and 3 agents (whose files are put where they do not belong)."""
    base = tmp_path_factory.mktemp("integrity")
    return _train(base, "two", 2), _train(base, "three", 3)


@pytest.fixture
def run(box, runs):
    """A copy of the 2-agent run among the user's files."""
    shutil.copytree(runs[0], box / "home" / "run")
    return box / "home" / "run"


def refused(box, module, prog, args, needles):
    """Refused in one line naming every needle; nothing in the sandbox changed."""
    before = snapshot(box)
    eval_json = next(box.rglob("eval.json")).read_bytes()
    line = one_line(cli(args, box / "cwd", module=module), "", prog)
    for needle in needles:
        assert str(needle) in line, line
    assert snapshot(box) == before, "a refused command changed files"
    assert next(box.rglob("eval.json")).read_bytes() == eval_json
    return line


# ---- ways to damage a file ----------------------------------------------------------------------------------------
def _largest_entry(data: bytes) -> tuple[zipfile.ZipInfo, int]:
    """The largest tensor entry of a torch.save archive and where its bytes start."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[h + 26:h + 30])
    return info, h + 30 + name_len + extra_len


def flip_tensor_bit(path: Path, fix_crc: bool = False) -> None:
    """One bit of a parameter flipped; with fix_crc the entry's CRC-32 is recomputed in the local header and the
    central directory, as a tool rewriting the archive would, so that only the digest can tell."""
    d = bytearray(path.read_bytes())
    info, start = _largest_entry(bytes(d))
    d[start + info.file_size // 2] ^= 0x10
    if fix_crc:
        crc = struct.pack("<I", zlib.crc32(d[start:start + info.file_size]))
        d[info.header_offset + 14:info.header_offset + 18] = crc
        at = d.find(b"PK\x01\x02" + bytes(d[info.header_offset + 4:info.header_offset + 6]))
        while d[at + 46:at + 46 + len(info.filename)] != info.filename.encode():
            at = d.find(b"PK\x01\x02", at + 4)
        d[at + 16:at + 20] = crc
    path.write_bytes(bytes(d))
    if fix_crc:
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None  # the CRCs now agree with the changed bytes


def flip_padding_bit(path: Path) -> None:
    """A bit flipped in the alignment padding torch puts in a local header: outside every CRC."""
    d = bytearray(path.read_bytes())
    info, start = _largest_entry(bytes(d))
    d[start - 2] ^= 0x01
    path.write_bytes(bytes(d))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def _cut(keep):
    return lambda p: p.write_bytes(p.read_bytes()[:keep(p.stat().st_size)])


def _edit_digest(p: Path) -> None:
    sidecar = ckpt.digest_path(p)
    text = sidecar.read_text()
    sidecar.write_text(("0" if text[0] != "0" else "1") + text[1:])


SPOILS = {  # name: (how, what the line says)
    "tensor bit (CRC sees it)": (flip_tensor_bit, "(CRC-32 mismatch)"),
    "tensor bit, CRC recomputed": (lambda p: flip_tensor_bit(p, fix_crc=True), "differs from the"),
    "padding bit (no CRC covers it)": (flip_padding_bit, "differs from the"),
    "cut in half": (_cut(lambda n: n // 2), "not a complete zip archive"),
    "last byte cut": (_cut(lambda n: n - 1), "not a complete zip archive"),
    "zeros": (lambda p: p.write_bytes(bytes(p.stat().st_size)), "not a complete zip archive"),
    "empty": (lambda p: p.write_bytes(b""), "it is empty"),
    "digest edited": (_edit_digest, "differs from the"),
    "digest garbled": (lambda p: ckpt.digest_path(p).write_text("not a digest\n"), "is not a digest file"),
    "digest removed": (lambda p: ckpt.digest_path(p).unlink(), ".sha256 is missing"),
}


# ---- class 2: checkpoint.pt ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spoil", list(SPOILS))
def test_resume_refuses_a_damaged_checkpoint(box, run, spoil):
    how, needle = SPOILS[spoil]
    how(run / "checkpoint.pt")
    refused(box, "decnode.run", "decnode-run", ["--resume", run, "--iterations", "4"],
            [needle, run / "checkpoint.pt"])


def test_resume_refuses_another_runs_checkpoint_under_this_runs_digest(box, run, runs):
    shutil.copy(runs[1] / "checkpoint.pt", run / "checkpoint.pt")  # intact, CRCs fine: only the digest tells
    refused(box, "decnode.run", "decnode-run", ["--resume", run, "--iterations", "4", "--nproc", "2"],
            ["differs from the", run / "checkpoint.pt"])


# ---- class 2: models.pt, wherever a tool reads it -----------------------------------------------------------------
@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("spoil", ["tensor bit (CRC sees it)", "tensor bit, CRC recomputed", "last byte cut",
                                   "zeros", "digest edited", "digest removed"])
def test_tools_refuse_a_damaged_models_file(box, run, tool, spoil):
    how, needle = SPOILS[spoil]
    how(run / "models.pt")
    module, prog, args = TOOLS[tool]
    refused(box, module, prog, [run, *args], [needle, run / "models.pt"])


def test_eval_on_several_processes_refuses_before_launching(box, run):
    flip_tensor_bit(run / "models.pt", fix_crc=True)
    module, prog, args = TOOLS["eval"]
    refused(box, module, prog, [run, *args, "--nproc", "2"], ["differs from the", run / "models.pt"])


# ---- class 9: models.pt that is not this run's --------------------------------------------------------------------
def _rewrite_models(path: Path, change) -> None:
    """models.pt changed and written back as decnode writes it (digest included), so only the shapes can tell."""
    models = ckpt.load_file(path)
    change(models)
    ckpt.atomic_save({k: v for k, v in models.items() if k != ckpt.DIGESTED}, path)


def _other_obs_dim(models):
    od = models["obs_dim"] + 2
    d = sum(p.numel() for p in RecurrentNet(1, od, models["n_actions"], 16).parameters())
    models.update(obs_dim=od, actor_rows=torch.zeros(2, d), actor_mean=torch.zeros(d), obs_std=torch.ones(od))


def _edit_yaml(key, value):
    def edit(run):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        section, name = key.split(".")
        cfg[section][name] = value
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return edit


MISMATCHES = {
    "another run's models.pt with its digest": (
        lambda run, other: [shutil.copy(other / n, run / n) for n in ("models.pt", "models.pt.sha256")],
        ["env.n_agents=3", "env.n_agents=2", "config.yaml"]),
    "config.yaml says 3 agents": (lambda run, other: _edit_yaml("env.n_agents", 3)(run),
                                  ["env.n_agents=2", "env.n_agents=3"]),
    "config.yaml says hidden 32": (lambda run, other: _edit_yaml("train.hidden", 32)(run),
                                   ["train.hidden=16", "train.hidden=32"]),
    "an extra actor row": (lambda run, other: _rewrite_models(run / "models.pt", lambda m: m.update(
        actor_rows=torch.cat([m["actor_rows"], m["actor_rows"][:1]]))), ["actor_rows [3,", "env.n_agents=2"]),
    "obs_dim without its parameters": (lambda run, other: _rewrite_models(run / "models.pt", lambda m: m.update(
        obs_dim=m["obs_dim"] + 2)), ["actor parameters per agent"]),
    "obs_std of another size": (lambda run, other: _rewrite_models(run / "models.pt", lambda m: m.update(
        obs_std=m["obs_std"][:-1])), ["obs_std [", "not one entry per observation"]),
    "parameters for another observation": (lambda run, other: _rewrite_models(run / "models.pt", _other_obs_dim),
                                           ["simple_spread with 2 agents has obs_dim="]),
}


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("case", list(MISMATCHES))
def test_tools_refuse_models_that_disagree_with_the_runs_config(box, run, runs, tool, case):
    change, needles = MISMATCHES[case]
    change(run, runs[1])
    module, prog, args = TOOLS[tool]
    refused(box, module, prog, [run, *args], [run / "models.pt", *needles])


# ---- classes 2 and 9: models.pt as decnode-report reads it --------------------------------------------------------
def _without_greedy_counts(run: Path) -> None:
    """eval.json as decnode-eval wrote it before it counted greedy actions: decnode-report then replays models.pt
    for its degeneracy check (tools/report/degenerate.py)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("greedy_actions", "greedy_episodes")}
        return node
    (run / "eval.json").write_text(json.dumps(strip(json.loads((run / "eval.json").read_text()))))


REPORT_CASES = {**{spoil: (lambda run, other, how=SPOILS[spoil][0]: how(run / "models.pt"), [SPOILS[spoil][1]])
                   for spoil in ("tensor bit, CRC recomputed", "last byte cut", "digest removed")},
                "another run's models.pt with its digest": MISMATCHES["another run's models.pt with its digest"]}


@pytest.mark.parametrize("case", list(REPORT_CASES))
def test_report_refuses_models_that_are_damaged_or_not_the_runs(box, run, runs, case):
    """Refused as decnode-eval refuses them, not a 'not measured' note in results.md beside a report of the rest."""
    _without_greedy_counts(run)
    change, needles = REPORT_CASES[case]
    change(run, runs[1])
    refused(box, "decnode.tools.report.command", "decnode-report", [box / "home", "--out", box / "cwd" / "report"],
            [run / "models.pt", *needles, f"{run / 'eval.json'} has no greedy action counts"])


# ---- what is accepted ---------------------------------------------------------------------------------------------
def test_an_intact_run_verifies_with_sha256sum_and_evaluates(box, run):
    if shutil.which("sha256sum"):  # the digest files are sha256sum's own format
        for name in ("checkpoint.pt.sha256", "models.pt.sha256"):
            assert subprocess.run(["sha256sum", "-c", name], cwd=run, capture_output=True, timeout=30).returncode == 0
    res = cli([run, *TOOLS["eval"][2]], box / "cwd", module="decnode.tools.evalmodes")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr[-2000:]


def test_files_from_before_digests_are_checked_by_their_crcs_and_get_a_digest_on_resume(box, run):
    """A run made before digest files: no digest file, no DIGESTED key, a manifest that does not list them."""
    for name in ("checkpoint.pt", "models.pt"):
        state = torch.load(run / name, weights_only=False)
        del state[ckpt.DIGESTED]
        torch.save(state, run / name)
        (run / f"{name}.sha256").unlink()
    manifest = json.loads((run / ".decnode-run.json").read_text())
    manifest["writes"] = [p for p in manifest["writes"] if "sha256" not in p]
    (run / ".decnode-run.json").write_text(json.dumps(manifest))

    res = cli([run, *TOOLS["eval"][2]], box / "cwd", module="decnode.tools.evalmodes")
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr[-2000:]
    flipped = box / "flipped"
    shutil.copytree(run, flipped)
    flip_tensor_bit(flipped / "checkpoint.pt")  # without a digest the CRCs still stand guard
    one_line(cli(["--resume", flipped, "--iterations", "3"], box / "cwd"), "(CRC-32 mismatch)")

    res = cli(["--resume", run, "--iterations", "3"], box / "cwd", timeout=240)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "checkpoint.pt predates digest files: checked by its zip CRCs only" in res.stdout
    for name in ("checkpoint.pt", "models.pt"):
        digest = hashlib.sha256((run / name).read_bytes()).hexdigest()
        assert (run / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    assert "checkpoint.pt.sha256" in json.loads((run / ".decnode-run.json").read_text())["writes"]
    # the upgraded manifest lists the digest files: --overwrite treats them as decnode's
    res = cli([*TINY, "--agents-per-process", "2", "--out", run, "--overwrite", "--iterations", "1"], box / "cwd",
              timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]


# ---- the order of the renames ---------------------------------------------------------------------------------
CRASH = """
import os, sys, torch
from pathlib import Path
from decnode.job import checkpoint
real, calls, die = os.replace, [0], int(sys.argv[2])
def replace(a, b):  # the process dies (no cleanup, no flush) just before the die-th rename
    calls[0] += 1
    if calls[0] == die:
        os._exit(9)
    real(a, b)
os.replace = replace
checkpoint.atomic_save({"iteration": 2, "x": torch.ones(1000)}, Path(sys.argv[1]))
"""


@pytest.mark.parametrize("die,expect,lines", [(1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 2, 1)])
def test_a_crash_between_the_renames_leaves_a_file_its_digest_vouches_for(tmp_path, die, expect, lines):
    """atomic_save renames three times: the digest file listing both digests, the file, the digest file listing
    the new one. Dying before each (4: not at all), the file in place is the old or the new one, and verifies."""
    path = tmp_path / "checkpoint.pt"
    ckpt.atomic_save({"iteration": 1, "x": torch.zeros(1000)}, path)
    res = subprocess.run([sys.executable, "-c", CRASH, str(path), str(die)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == (9 if die < 4 else 0), res.stderr[-2000:]
    assert ckpt.load_file(path)["iteration"] == expect
    assert len(ckpt.digest_path(path).read_text().splitlines()) == lines
