"""decnode-report on a tiny real sweep: files written, rows that match the runs' own files, groups that aggregate
the rows, claims decided by the data, unfinished runs, --pick-lr and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from decnode import config
from decnode.tools import evalmodes
from decnode.tools.report import command as report, text as report_text
import figcheck

ROOT = Path(__file__).resolve().parents[1]
CELLS = {"ps-s1": ("ps", 1, 1), "ps-s2": ("ps", 1, 2), "ps-s3": ("ps", 1, 3), "decpg-k1-s1": ("decpg", 1, 1),
         "decpg-k1-s2": ("decpg", 1, 2), "decpg-k2-s1": ("decpg", 2, 1)}
FILES = ("runs.csv", "groups.csv", "results.md", "eval_modes.md", "train_reward.png", "test_reward.png",
         "generalisation_gap.png", "entropy.png", "noise.png")


def _train(out: Path, algo: str, k: int, seed: int) -> None:
    from decnode.job.run import main
    main(["--nproc", "1", "--algo", algo, "--k", str(k), "--iterations", "3", "--seed", str(seed), "--out", str(out),
          "--set", "env.n_agents=3", "--set", "env.n_envs=4", "--set", "eval.interval=1", "--set", "eval.episodes=2",
          "--set", "eval.test_episodes=2", "--set", "run.tensorboard=false"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    (root / "sweep.yaml").write_text("# a stand-in for decnode-sweep's grid\ngrid: {}\n")
    for name, (algo, k, seed) in CELLS.items():
        _train(root / "cells" / name, algo, k, seed)
    evalmodes.main([str(root / "cells" / "decpg-k1-s1"), "--mode", "all"])  # Table 3 needs the four modes
    return root


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str) -> float:
    return float(text) if text != "" else math.nan


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def made(sweep, tmp_path_factory) -> Path:
    """The report, written through the command line as a user runs it."""
    out = tmp_path_factory.mktemp("report") / "report"
    proc = subprocess.run([sys.executable, "-m", "decnode.tools.report.command", str(sweep), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_writes_every_file(made):
    for name in FILES:  # what the figures show: test_figures_show_the_runs_numbers
        assert (made / name).stat().st_size > (1000 if name.endswith(".png") else 50), name


def test_figures_show_the_runs_numbers(sweep, made, tmp_path, saved_figures):
    """The report's figures, drawn again in this process so the test can read them: the same files as the command
    line wrote (Agg renders deterministically), whose curves are the medians of the runs' metrics.jsonl per group
    and whose bars are groups.csv's medians and stds."""
    report.main([str(sweep), "--out", str(tmp_path)])
    for name in (n for n in FILES if n.endswith(".png")):
        assert (tmp_path / name).read_bytes() == (made / name).read_bytes(), name
    cells = sweep / "cells"
    members = {"PS": ["ps-s1", "ps-s2", "ps-s3"], "DecPG k=2 (gap 1.00)": ["decpg-k2-s1"],
               "DecPG k=1 (gap 0.50)": ["decpg-k1-s1", "decpg-k1-s2"]}  # the paper's order: PS, dense → sparse
    seeds = [f"({len(m)} seed{'s' if len(m) > 1 else ''})" for m in members.values()]
    labels = [f"{group} {n}" for group, n in zip(members, seeds)]
    cfg = yaml.safe_load((cells / "ps-s1" / "config.yaml").read_text())
    title = f"{cfg['env']['name']}, n={cfg['env']['n_agents']}"

    def curves(ax, key, log=False):
        shown = [figcheck.assert_curve(ax, label, [cells / n for n in names], key, log)
                 for label, names in zip(labels, members.values())]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == shown

    evaluation, rollouts = saved_figures["train_reward.png"].axes
    assert (evaluation.get_title(), rollouts.get_title()) == (f"{title}: evaluation (paper Fig. 2)",
                                                              f"{title}: training rollouts")
    assert evaluation.get_ylabel() == "average episode reward (θ̄, deterministic, train env)"
    assert rollouts.get_ylabel() == "training rollouts' episode reward"
    curves(evaluation, "eval_reward")
    curves(rollouts, "train_reward")
    [ax] = saved_figures["entropy.png"].axes
    assert (ax.get_ylabel(), ax.get_title()) == ("policy entropy", f"{title}: policy entropy (paper Fig. 7)")
    curves(ax, "entropy")
    for ax, key in zip(saved_figures["noise.png"].axes, ("grad_disagreement", "update_variance")):
        assert ax.get_ylabel() == key.replace("_", " ") + " (log scale)"
        curves(ax, key, log=True)

    groups = {g["legend"]: g for g in _csv(made / "groups.csv")}
    for png, metric, ylabel, what in (
            ("test_reward.png", "average_test", "test average episode reward (θ̄, deterministic)",
             "test reward, perturbed env (paper Fig. 3; median ± std over seeds)"),
            ("generalisation_gap.png", "average_gap", "test − train episode reward",
             "generalisation gap (paper Fig. 4; median ± std over seeds)")):
        [ax] = saved_figures[png].axes
        assert (ax.get_ylabel(), ax.get_title()) == (ylabel, f"{title}: {what}")
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{group}\n{n}" for group, n in zip(members, seeds)]
        [series] = figcheck.bar_series(ax)
        heights, errors = figcheck.bars(series)
        assert heights == [_num(groups[g][f"{metric}_median"]) for g in members], png
        assert errors == pytest.approx([_num(groups[g][f"{metric}_std"]) for g in members], rel=1e-9, abs=1e-12), png


def test_runs_csv_matches_each_run(sweep, made):
    rows = _csv(made / "runs.csv")
    assert list(rows[0]) == report.RUN_COLUMNS
    assert sorted(r["run_dir"] for r in rows) == sorted(f"cells/{name}" for name in CELLS)
    for row in rows:
        run_dir = sweep / row["run_dir"]
        algo, k, seed = CELLS[run_dir.name]
        metrics = _metrics(run_dir)
        evaluation = json.loads((run_dir / "eval.json").read_text())["modes"]
        assert (row["algo"], int(row["seed"]), int(row["iterations_logged"])) == (algo, seed, 3)
        assert row["group"] == ("PS" if algo == "ps" else f"DecPG k={k}")
        assert _num(row["final_eval_reward"]) == [m["eval_reward"] for m in metrics if "eval_reward" in m][-1]
        assert _num(row["final_train_reward"]) == metrics[-1]["train_reward"]  # 10% of 3 iterations: the last one
        assert _num(row["entropy_final"]) == metrics[-1]["entropy"]
        assert _num(row["grad_disagreement_mean"]) == pytest.approx(np.mean([m["grad_disagreement"] for m in metrics]))
        assert _num(row["update_variance_final"]) == metrics[-1]["update_variance"]
        assert _num(row["env_steps"]) == metrics[-1]["env_steps"]
        assert _num(row["average_test"]) == evaluation["average"]["test"]["return"]
        assert _num(row["average_gap"]) == evaluation["average"]["gap"]
        has_all = "local" in evaluation
        assert math.isnan(_num(row["local_train"])) != has_all
        if has_all:
            assert _num(row["individual_test_std"]) == evaluation["individual"]["test"]["return_std"]
        # kNN ring, n = 3: k=1 mixes with one neighbour (|λ₂| = 1/2), k=2 with everyone (P = J/3); PS has none
        if algo == "ps":
            assert row["spectral_gap"] == "" and row["k"] == ""
        else:
            assert _num(row["spectral_gap"]) == pytest.approx({1: 0.5, 2: 1.0}[k]) and int(row["k"]) == k
        manifest = json.loads((run_dir / ".decnode-run.json").read_text())
        assert row["git_commit"] == (manifest.get("git_commit") or "")
        assert _num(row["wall_seconds"]) > 0


def test_groups_aggregate_the_rows(made):
    rows, groups = _csv(made / "runs.csv"), _csv(made / "groups.csv")
    assert [g["group"] for g in groups] == ["PS", "DecPG k=2", "DecPG k=1"]  # the paper's order: PS, dense → sparse
    assert [g["legend"] for g in groups] == ["PS", "DecPG k=2 (gap 1.00)", "DecPG k=1 (gap 0.50)"]
    for g in groups:
        members = [r for r in rows if r["group"] == g["group"]]
        assert int(g["seeds"]) == len(members) == {"PS": 3, "DecPG k=2": 1, "DecPG k=1": 2}[g["group"]]
        for col in ("final_train_reward", "final_eval_reward", "average_test", "average_gap", "update_variance_mean"):
            values = [_num(r[col]) for r in members]
            assert _num(g[f"{col}_median"]) == pytest.approx(np.median(values), abs=1e-12), col
            assert _num(g[f"{col}_std"]) == pytest.approx(np.std(values), abs=1e-12), col
    ps = [_num(r["final_train_reward"]) for r in rows if r["group"] == "PS"]
    assert np.median(ps) != np.mean(ps)  # three seeds: the medians above are not means in disguise


def test_claims_follow_the_data(made):
    text = (made / "results.md").read_text()
    groups = {g["group"]: g for g in _csv(made / "groups.csv")}
    runs = _csv(made / "runs.csv")
    lines = [line for line in text.splitlines() if line.startswith(("1. Paper", "2. Paper", "3. Paper"))]
    assert len(lines) == 3
    verdicts = [next(v for v in (report_text.UNTESTABLE, report_text.NOT_HELD, report_text.NO_DATA, report_text.HELD)
                     if f"**{v}**" in line) for line in lines]

    def med(group, col):
        return _num(groups[group][f"{col}_median"])

    def decided(held, involved):
        """A claim about what was learned, on groups the degeneracy check flags, is untestable (test_degenerate.py:
        3 iterations leave θ̄ near its initial greedy action, so these runs are); else the numbers decide."""
        if any(2 * sum(_num(r["degenerate"]) == 1 for r in runs if r["group"] == g) >= int(groups[g]["seeds"])
               for g in involved):
            return report_text.UNTESTABLE
        return report_text.HELD if held else report_text.NOT_HELD
    ps = med("PS", "final_train_reward")
    train_held = max(med("DecPG k=1", "final_train_reward"), med("DecPG k=2", "final_train_reward")) >= ps
    assert verdicts[0] == decided(train_held, ["PS", "DecPG k=1", "DecPG k=2"])
    noise_held = all(med("DecPG k=1", c) > med("DecPG k=2", c) for c in ("grad_disagreement_mean",
                                                                         "update_variance_mean"))
    assert verdicts[1] == (report_text.HELD if noise_held else report_text.NOT_HELD)  # the graph's: always tested
    test_held = med("DecPG k=1", "average_test") > med("DecPG k=2", "average_test")  # k=2 → k=1: sparser
    assert verdicts[2] == decided(test_held, ["DecPG k=1", "DecPG k=2"])
    for verdict, line in zip(verdicts, lines):  # the numbers stay on the line, marked as no evidence
        assert (verdict == report_text.UNTESTABLE) == ("the numbers, evidence neither way: " in line)
    assert "![train reward](train_reward.png)" in text and "Evaluation modes (Table 3)" in text


def test_claim_checks_on_known_numbers():
    def row(algo, k, **medians):
        out = {"algo": algo, "k": k, "group": f"{algo} {k}"}
        for col, v in medians.items():
            out.update({f"{col}_median": v, f"{col}_count": 1})
        return out
    noise = {("decpg", k): row("decpg", k, grad_disagreement_mean=d, update_variance_mean=v)
             for k, d, v in ((2, 3.0, 0.3), (4, 1.0, 0.2), (6, 2.0, 0.15), (8, 0.5, 0.1))}
    assert report_text.claim_noise(noise)[0] == report_text.HELD  # k=4 < k=6 in D: only the extremes count
    noise[("decpg", 8)]["update_variance_mean_median"] = 0.25
    assert report_text.claim_noise(noise)[0] == report_text.NOT_HELD
    assert report_text.claim_train({("decpg", 2): row("decpg", 2, final_train_reward=-1.0)})[0] == report_text.NO_DATA
    test = {("decpg", k): row("decpg", k, average_test=v) for k, v in ((8, -3.0), (4, -2.0), (2, -2.5))}
    verdict, detail = report_text.claim_test_trend(test)
    assert verdict == report_text.NOT_HELD and detail.startswith("mixed")
    assert report.final_mean(list(range(20))) == 18.5 and report.final_mean([4.0]) == 4.0


def test_unfinished_runs_are_skipped_unless_asked(sweep, tmp_path, capsys):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep / "cells", copy / "cells")
    metrics = copy / "cells" / "ps-s2" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    manifest = copy / "cells" / "ps-s1" / ".decnode-run.json"  # as decnode-sweep's branch writes it
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "git_commit": "abc123",
                                    "resumed_git_commits": ["def456+dirty"]}))
    report.main([str(copy), "--out", str(tmp_path / "a")])
    assert {r["run_dir"]: r for r in _csv(tmp_path / "a" / "runs.csv")}["cells/ps-s1"]["git_commit"] == \
        "abc123;def456+dirty"
    commits_line = next(x for x in (tmp_path / "a" / "results.md").read_text().splitlines()
                        if x.startswith("- git commits: "))  # the other runs carry this checkout's commit
    assert {"abc123", "def456+dirty"} <= set(commits_line.removeprefix("- git commits: ").split(", "))
    assert "skipped cells/ps-s2: unfinished (1 of 3 iterations logged" in capsys.readouterr().out
    assert "cells/ps-s2" not in {r["run_dir"] for r in _csv(tmp_path / "a" / "runs.csv")}
    report.main([str(copy), "--out", str(tmp_path / "b"), "--include-unfinished"])
    rows = {r["run_dir"]: r for r in _csv(tmp_path / "b" / "runs.csv")}
    assert len(rows) == len(CELLS) and rows["cells/ps-s2"]["finished"] == "False"


def _drop_models(run_dir: Path) -> None:
    """A copy whose config.yaml was edited no longer matches its models.pt, which decnode-report refuses (in one
    line) when it has to replay it; the stand-ins below test other things, so they keep no models.pt."""
    for name in ("models.pt", "models.pt.sha256"):
        (run_dir / name).unlink()


def test_pick_lr(sweep, tmp_path, capsys):
    """Copies of real runs at three learning rates, their training rewards shifted so that lr 0.05 is best."""
    root = tmp_path / "lr"
    shifts = {(0.01, 0.001): 0.0, (0.05, 0.005): 1.0, (0.5, 0.05): -3.0}
    finals: dict = {}
    for name in ("ps-s1", "ps-s2", "ps-s3", "decpg-k1-s1", "decpg-k1-s2"):
        for (lr, min_lr), shift in shifts.items():
            dst = root / f"{name}-lr{lr}"
            shutil.copytree(sweep / "cells" / name, dst)
            cfg = yaml.safe_load((dst / "config.yaml").read_text())
            cfg["train"].update(lr=lr, min_lr=min_lr)
            (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
            _drop_models(dst)
            metrics = [{**m, "train_reward": m["train_reward"] + shift} for m in _metrics(dst)]
            (dst / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
            finals.setdefault((cfg["algo"]["name"], lr), []).append(metrics[-1]["train_reward"])
    overlay = tmp_path / "lr.yaml"
    report.main([str(root), "--out", str(tmp_path / "report"), "--pick-lr", str(overlay)])
    printed = capsys.readouterr().out
    data = config.read_file(overlay)
    for algo in ("ps", "decpg"):
        best = max((np.median(v), lr) for (a, lr), v in finals.items() if a == algo)[1]
        assert best == 0.05  # the construction
        min_lr = next(m for lr, m in shifts if lr == best)
        assert data["per_algo"][algo] == {"lr": best, "min_lr": min_lr}
        cfg = config.compose([(str(overlay), data)], [("--set", {"algo": {"name": algo}})])
        assert (cfg.train.lr, cfg.train.min_lr) == (best, min_lr)
        assert f"{algo}: lr=0.05 min_lr=0.005" in printed
    header = [line for line in overlay.read_text().splitlines() if line.startswith("#   ")]
    assert len(header) == 6 and sum("<- chosen" in line for line in header) == 2


@pytest.mark.parametrize("case,needle", [("missing", "sweep directory not found"), ("empty", "no run directories"),
                                         ("only_unfinished", "no iteration logged"),
                                         ("out_is_file", "is a file, not a directory"),
                                         ("pick_lr_is_dir", "is a directory; name a file")])
def test_bad_input_one_line_exit_2(case, needle, sweep, tmp_path, capsys):
    target, extra = tmp_path / "x", []
    if case != "missing":
        target.mkdir()
    if case in ("only_unfinished", "out_is_file", "pick_lr_is_dir"):
        shutil.copytree(sweep / "cells" / "ps-s1", target / "ps-s1")
    if case == "only_unfinished":
        (target / "ps-s1" / "metrics.jsonl").write_text("")
    if case == "out_is_file":
        (target / "report").write_text("not a directory")
    if case == "pick_lr_is_dir":
        extra = ["--pick-lr", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(target), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("decnode-report: error:") and needle in err, err
    assert not (target / "report").is_dir()  # checked before the work


def test_one_figure_per_setting(sweep, tmp_path, capsys):
    """A tree holding two (env, n): figures suffixed per setting, one table each; --pick-lr refuses to mix them."""
    root = tmp_path / "two"
    shutil.copytree(sweep / "cells" / "decpg-k1-s1", root / "n3")
    shutil.copytree(sweep / "cells" / "decpg-k1-s1", root / "n4")
    cfg = yaml.safe_load((root / "n4" / "config.yaml").read_text())
    cfg["env"]["n_agents"] = 4
    (root / "n4" / "config.yaml").write_text(yaml.safe_dump(cfg))
    _drop_models(root / "n4")
    report.main([str(root)])
    made = root / "report"
    for n in (3, 4):
        for name in ("train_reward", "test_reward", "generalisation_gap", "entropy", "noise"):
            assert (made / f"{name}_simple_spread_n{n}.png").is_file(), (name, n)
    assert not (made / "train_reward.png").exists()
    text = (made / "results.md").read_text()
    assert "## simple_spread, n=3" in text and "## simple_spread, n=4" in text
    gaps = {r["n_agents"]: _num(r["spectral_gap"]) for r in _csv(made / "runs.csv")}
    assert gaps["3"] == pytest.approx(0.5) and gaps["4"] == pytest.approx(1 - np.sqrt(2) / 2)  # |1+i|/2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(root), "--out", str(tmp_path / "r"), "--pick-lr", str(tmp_path / "lr.yaml")])
    assert exit_info.value.code == 2 and "needs runs of one env and n" in capsys.readouterr().err
    assert not (tmp_path / "lr.yaml").exists()
