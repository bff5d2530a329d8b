"""`python benchmarks/same_results.py BASE_REF`: did behaviour change since BASE_REF? (issue 25: a refactor must not)

Runs the same tiny jobs with the code of BASE_REF (a temporary git worktree, PYTHONPATH pointing at it) and with
this checkout, and compares what must be equal bit for bit:
- models.pt: every key; tensors with torch.equal (run.out, the run directory, is the one key allowed to differ;
  a config key only one side has, added or removed since BASE_REF, is named on the job's line, not a difference:
  wherever it changed a number, the numbers differ);
- metrics.jsonl: every line, minus its `timing` and `sim` fields (wall-clock and CPU time), exactly;
- timing.json: each rank's bytes and messages per section (what the communication carried);
for decpg / ps / ps_entropy × central / local critic × (`--nproc 3`, `--nproc 1 --agents-per-process 3`), plus one
`--net wan` job whose simulated table is compared on what is deterministic: its profile line (and the profile in
timing.json) and, above, the bytes and messages that priced its wire. The table's numbers are not compared: compute
is CPU time, and wire is not bytes/β + α alone either — a receive charges as wire only the part of a message's
flight after the receiver got there (NodeClock.complete), so it moves with compute too (three runs of one commit:
rank 0's wire 0.9806, 0.9806, 0.9846 s).

One line per job (`same` or `DIFFERENT: <what>`); exit 1 on any difference or failed job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # jobs.py; it imports decnode for its readers, never for the jobs here

from jobs import run_process  # noqa: E402

TINY = ["--k", "2", "--iterations", "2", "--set", "env.n_agents=3", "--set", "env.episode_length=5",
        "--set", "env.n_envs=2", "--set", "train.hidden=16",
        # the end-of-run evaluation defaults to 1000 test episodes: one is enough to compare its numbers
        "--set", "eval.episodes=1", "--set", "eval.test_episodes=1", "--set", "run.tensorboard=false"]
LAYOUTS = {"nproc3": ["--nproc", "3"], "nproc1x3": ["--nproc", "1", "--agents-per-process", "3"]}


def jobs() -> list[tuple[str, list[str]]]:
    out = [(f"{algo} {critic} {layout}", ["--algo", algo, "--critic", critic, *flags])
           for algo in ("decpg", "ps", "ps_entropy") for critic in ("central", "local")
           for layout, flags in LAYOUTS.items()]
    out.append(("decpg central nproc3 --net wan", ["--algo", "decpg", "--critic", "central", "--nproc", "3",
                                                    "--net", "wan"]))
    return out


def run(code: Path, args: list[str], out: Path, timeout: float) -> str | None:
    """One job with the decnode of CODE; None, or why it failed (the last line of its stderr)."""
    cmd = [sys.executable, "-m", "decnode.run", *TINY, *args, "--out", str(out)]
    status, stdout, err = run_process(cmd, code, timeout, env={**os.environ, "PYTHONPATH": str(code)})
    (out.parent / "stdout.txt").write_text(stdout)
    if status:
        lines = [x for x in err.splitlines() if x.strip()]
        return lines[-1].strip() if lines else f"exit code {status}"
    return None


def differ(a, b, key: str = "", notes: list | None = None) -> str | None:
    """The first key where A and B differ, or None. A config key that only one side has (a key added or removed
    since BASE_REF, e.g. run.plugins) goes to `notes`: its value shows wherever it changed a number."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            if not key.startswith("/config") or notes is None:
                return f"{key or '/'}: keys {sorted(set(a) ^ set(b))}"
            notes += [f"{key}/{k}"[len("/config/"):].replace("/", ".") for k in sorted(set(a) ^ set(b))]
        for k in [k for k in a if k in b]:
            if f"{key}/{k}" == "/config/run/out":
                continue
            found = differ(a[k], b[k], f"{key}/{k}", notes)
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{key}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = differ(x, y, f"{key}/{i}", notes)
            if found:
                return found
        return None
    if type(a) is not type(b):
        return f"{key}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        return None if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else key
    if isinstance(a, np.ndarray):
        return None if a.dtype == b.dtype and np.array_equal(a, b) else key
    return None if a == b else f"{key}: {a!r} != {b!r}"


def metrics(run_dir: Path) -> list[dict]:
    # read as plain lines, not through decnode: the comparison must not depend on the code it checks
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in d.items() if k not in ("timing", "sim")} for d in lines]


def volume(run_dir: Path) -> list[dict]:
    """Per rank, per section: [bytes, messages] (seconds and calls left out: time, and waits polled)."""
    ranks = json.loads((run_dir / "timing.json").read_text())["ranks"]
    return [{name: [s["bytes"], s["messages"]] for name, s in sorted(snap.items())} for snap in ranks]


def simulated(run_dir: Path) -> tuple[dict, str]:
    profile = json.loads((run_dir / "timing.json").read_text())["simulated"]["profile"]
    line = next((x for x in (run_dir.parent / "stdout.txt").read_text().splitlines()
                 if x.startswith("simulated cluster, profile")), "")
    return profile, line


def compare(old: Path, new: Path, wan: bool, notes: list) -> str | None:
    """The first difference between the runs in OLD and NEW, or None; config keys only one has go to `notes`."""
    found = differ(torch.load(old / "models.pt", weights_only=False),
                   torch.load(new / "models.pt", weights_only=False), notes=notes)
    if found:
        return f"models.pt {found}"
    m_old, m_new = metrics(old), metrics(new)
    only = sorted({k for d in m_old for k in d} ^ {k for d in m_new for k in d})
    if only:  # a metrics field only one side writes (bytes, added since 227550b) is named, not a difference
        notes += [f"metrics.jsonl:{k}" for k in only]
        m_old, m_new = ([{k: v for k, v in d.items() if k not in only} for d in m] for m in (m_old, m_new))
    found = differ(m_old, m_new)
    if found:
        return f"metrics.jsonl line {found}"
    found = differ(volume(old), volume(new))
    if found:
        return f"timing.json bytes, messages of rank/section {found}"
    if wan:
        (p_old, line_old), (p_new, line_new) = simulated(old), simulated(new)
        if not line_old or line_old != line_new:
            return f"simulated table's profile line: {line_old!r} != {line_new!r}"
        found = differ(p_old, p_new, "/simulated/profile")
        if found:
            return f"timing.json {found}"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base_ref", metavar="BASE_REF", help="the commit to compare with, e.g. 935b064")
    p.add_argument("--timeout", type=float, default=600, help="seconds per job")
    p.add_argument("--only", metavar="TEXT", default="", help="only the jobs whose name holds TEXT, e.g. 'wan'")
    a = p.parse_args()
    failed = False
    with tempfile.TemporaryDirectory(prefix="same_results-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(base), a.base_ref],
                       check=True)
        try:
            for i, (name, args) in enumerate(jobs()):
                if a.only not in name:
                    continue
                old, new = Path(tmp) / f"{i}-old", Path(tmp) / f"{i}-new"
                old.mkdir()
                new.mkdir()
                error = run(base, args, old / "run", a.timeout) or run(ROOT, args, new / "run", a.timeout)
                notes: list[str] = []
                found = None if error else compare(old / "run", new / "run", "--net" in args, notes)
                verdict = f"FAILED: {error}" if error else f"DIFFERENT: {found}" if found else None
                same = "same" + (f" (keys on one side only: {', '.join(notes)})" if notes else "")
                print(f"{name:34s} {verdict or same}", flush=True)
                failed |= verdict is not None
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
