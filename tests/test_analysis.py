"""decnode-eval (four modes, train/test/gap, nproc invariance), decnode-landscape and decnode-plot on tiny runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from decnode.tools import evalmodes, landscape, plots
from decnode.tools.evalmodes import MODES, evaluate_run, load_models
from decnode.job.checkpoint import atomic_save
from decnode.comm.transport import Collectives
from decnode.marl.evaluate import Evaluator
from figcheck import assert_curve, bar_series, bars

N = 3


def _train(out, seed: int) -> None:
    from decnode.job.run import main
    main(["--nproc", "1", "--agents-per-process", str(N), "--k", "1", "--iterations", "2", "--seed", str(seed),
          "--out", str(out), "--overwrite", "--set", "eval.episodes=4", "--set", "eval.test_episodes=8",
          "--set", "eval.interval=1", "--set", "env.n_envs=8", "--set", "run.tensorboard=false"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "s1"
    _train(out, seed=1)
    return out


@pytest.fixture
def equal_rows_run(run_dir, tmp_path):
    """A copy of the run whose agents all hold θ̄ (as after PS training)."""
    out = tmp_path / "equal"
    shutil.copytree(run_dir, out)
    models = load_models(out)
    models["actor_rows"] = models["actor_mean"].unsqueeze(0).repeat(N, 1)
    atomic_save(models, out / "models.pt")  # as decnode writes it: with its digest file
    return out


def _close(a: dict, b: dict) -> None:
    """Same numbers up to the order in which per-rank sums were added."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _close(a[key], b[key])
        elif isinstance(a[key], list):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9)
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key
        else:
            assert a[key] == b[key], key


def test_four_modes(run_dir):
    res = evaluate_run(run_dir, MODES)
    assert list(res["modes"]) == list(MODES)
    assert res["episodes"] == {"train": 4, "test": 8}
    for mode, entry in res["modes"].items():
        assert entry["train"]["episodes"] == 4 and entry["test"]["episodes"] == 8
        assert entry["gap"] == pytest.approx(entry["test"]["return"] - entry["train"]["return"])
    ind = res["modes"]["individual"]
    assert len(ind["train"]["per_agent"]) == N
    assert ind["train"]["return"] == pytest.approx(np.mean(ind["train"]["per_agent"]))
    # mode 1 on the train env is exactly the trainer's final evaluation (same seed and episodes)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert res["modes"]["average"]["train"]["return"] == last["eval_reward"]


def test_equal_rows_make_local_equal_average(equal_rows_run):
    res = evaluate_run(equal_rows_run, MODES)
    m = res["modes"]
    for split in ("train", "test"):
        assert m["local"][split]["return"] == m["average"][split]["return"]
        assert m["individual"][split]["return_std"] == pytest.approx(0.0, abs=1e-9)
        assert m["individual"][split]["return"] == pytest.approx(m["average"][split]["return"])


def test_cli_writes_eval_json_and_multiprocess_matches(run_dir, capsys):
    evalmodes.main([str(run_dir), "--out", "one.json"])
    one = json.loads((run_dir / "one.json").read_text())
    assert set(one["modes"]) == set(MODES)
    for entry in one["modes"].values():
        assert {"train", "test", "gap"} <= set(entry)
    assert "average_stochastic" in capsys.readouterr().out
    evalmodes.main([str(run_dir), "--nproc", "2", "--out", "two.json"])  # 3 agents over 2 processes
    two = json.loads((run_dir / "two.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    _close(one["modes"], two["modes"])


def test_launch_failure_message_names_the_tool(run_dir, tmp_path, capsys):
    """A failing decnode-eval worker is reported under its own name, without training's iteration/--resume
    hints (run_dir holds a finished training run with metrics and a checkpoint)."""
    from decnode.job.launch import launch
    payload = (str(tmp_path / "nope"), ["average"], 1, 1, str(tmp_path / "x.json"), 30.0)
    assert launch(1, evalmodes.eval_worker, payload, run_dir, prog="decnode-eval") == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("decnode-eval: error: rank 0 failed"), err
    assert "--resume" not in err and "iteration" not in err


def test_directions_filter_normalised_and_orthogonal(run_dir):
    models = load_models(run_dir)
    layout = landscape.filter_slices(models["obs_dim"], models["n_actions"], models["config"]["train"]["hidden"])
    theta = models["actor_mean"].double()
    assert layout[-1][1] + int(np.prod(layout[-1][2])) == theta.numel()
    d1, d2, info = landscape.make_directions(theta, layout, seed=0)
    assert float(d1 @ d2) == pytest.approx(0.0, abs=1e-8 * float(d1.norm() * d2.norm()))
    assert info["norm_d1"] == pytest.approx(float(theta.norm()))
    name, off, shape = next(x for x in layout if x[0] == "fc2.weight")
    size = int(np.prod(shape))
    col_norms = lambda v: v[off: off + size].view(shape).norm(dim=0)  # noqa: E731
    assert torch.allclose(col_norms(d1), col_norms(theta), rtol=1e-6)


def test_loss_batch_advantage_sources(run_dir):
    models = load_models(run_dir)
    batch = landscape.collect_batch(models)
    assert batch.advantage_source == "gae_central_critic"
    assert batch.adv.shape == batch.actions.shape == (N, 25, 8)
    assert torch.allclose(batch.adv.mean(dim=(1, 2)), torch.zeros(N), atol=1e-5)  # normalised per agent
    models["critic"] = None
    assert landscape.collect_batch(models).advantage_source == "discounted_returns"


def test_landscape(run_dir, tmp_path, saved_figures):
    landscape.main([str(run_dir), "--grid", "3", "--episodes", "2", "--nproc", "2"])
    data = np.load(run_dir / "landscape.npz")
    assert data["reward"].shape == (3, 3) and data["loss"].shape == (3, 3)
    assert np.isfinite(data["reward"]).all() and np.isfinite(data["loss"]).all()
    assert list(data["alphas"]) == [-1.0, 0.0, 1.0]
    models = load_models(run_dir)
    # Rank 0's worker process drew the figures; drawn again here from the saved grid they are the same files
    # (Agg renders deterministically), so the figures inspected below are the ones the run wrote.
    landscape.save(tmp_path, dict(data), models)
    for key, name in (("reward", "average episode reward"), ("loss", "policy loss")):
        for png in (f"landscape_{key}.png", f"landscape_{key}_hist.png"):
            assert (tmp_path / png).read_bytes() == (run_dir / png).read_bytes(), png
        values, label = data[key], "DecPG k=1, iteration 2"
        surface = saved_figures[f"landscape_{key}.png"].axes[0]
        assert (surface.get_xlabel(), surface.get_ylabel(), surface.get_zlabel()) == (r"$\alpha$", r"$\beta$", name)
        assert surface.get_title() == f"{name} landscape\n{label}"
        assert list(surface.xy_dataLim.intervalx) == [-1.0, 1.0] and list(surface.xy_dataLim.intervaly) == [-1.0, 1.0]
        assert list(surface.zz_dataLim.intervalx) == [values.min(), values.max()]  # the surface spans the grid's values
        hist = saved_figures[f"landscape_{key}_hist.png"].axes[0]
        assert (hist.get_xlabel(), hist.get_ylabel()) == (name, "grid points")
        assert hist.get_title() == f"{name} histogram\n{label}"
        counts, edges = np.histogram(values.ravel(), bins=5)  # 9 points: max(5, 9 // 3) bins
        assert [p.get_height() for p in hist.patches] == list(counts)
        assert [p.get_x() for p in hist.patches] == pytest.approx(edges[:-1], rel=1e-12, abs=1e-12)
        [centre] = hist.get_lines()  # θ̄'s value, marked on the histogram
        assert list(centre.get_xdata()) == [values[1, 1]] * 2 and centre.get_label() == r"$\bar\theta$ (centre)"
    cfg = models["config"]
    direct = Evaluator(Collectives(), evalmodes.env_factory(cfg, N), n_agents=N, episodes=2,
                       obs_dim=models["obs_dim"], n_actions=models["n_actions"], hidden=cfg["train"]["hidden"])
    theta_bar = models["actor_mean"].expand(N, -1)
    assert data["reward"][1, 1] == direct.run(theta_bar, evalmodes.eval_seeds(cfg)[0])["return"]
    assert abs(data["loss"][1, 1]) < 1e-5  # ratio 1 and normalised advantages: ≈ −mean(adv) = 0


def test_plots_two_seeds(run_dir, tmp_path, saved_figures):
    from decnode.timing import GROUPS

    other = tmp_path / "s2"
    _train(other, seed=2)
    evalmodes.main([str(other), "--mode", "average"])
    groups = plots.group_runs([plots.load_run(run_dir), plots.load_run(other)])
    assert [(label, len(runs)) for label, runs in groups] == [("DecPG k=1", 2)]
    out = tmp_path / "plots"
    plots.main([str(run_dir), str(other), "--out", str(out)])
    runs, label = [run_dir, other], "DecPG k=1 (2 seeds)"
    for name in ("reward", "entropy", "noise", "consensus", "timing", "generalisation"):
        assert (out / f"{name}.png").is_file(), name
    for name, key, ylabel, title, log in (
            ("reward", "eval_reward", "average episode reward (θ̄, deterministic)", "training curves", False),
            ("entropy", "entropy", "policy entropy", "policy entropy", False),
            ("consensus", "consensus_distance", r"$\frac{1}{n}\sum_i\|\theta_i-\bar\theta\|^2$ (log scale)",
             "consensus distance", True)):
        [ax] = saved_figures[f"{name}.png"].axes
        assert (ax.get_ylabel(), ax.get_title()) == (ylabel, title), name
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [label]
        assert_curve(ax, label, runs, key, log)
    noise = saved_figures["noise.png"].axes
    assert [ax.get_ylabel() for ax in noise] == ["grad disagreement (log scale)", "update variance (log scale)"]
    assert [ax.get_title() for ax in noise] == [r"inter-agent gradient disagreement $\mathcal{D}_m$",
                                                r"inter-agent update variance $\mathcal{V}_m$"]
    for ax, key in zip(noise, ("grad_disagreement", "update_variance")):
        assert_curve(ax, label, runs, key, log=True)

    # timing: one stacked bar per run; a category's segment is its sections' seconds summed over the run's ranks
    # (timing.json), 'other' the rest of the ranks' summed wall-clock
    [ax] = saved_figures["timing.png"].axes
    assert ax.get_title() == "where the time goes" and ax.get_xlabel().startswith("seconds, summed over ranks")
    assert [t.get_text().split(" · ")[-1] for t in ax.get_yticklabels()] == ["s1", "s2"]
    widths = {c.get_label(): [b.get_width() for b in c] for c in ax.containers}
    assert list(widths)[-1] == "other (untimed)"
    for i, run in enumerate(runs):
        ranks = json.loads((run / "timing.json").read_text())["ranks"]
        expected: dict[str, float] = {}
        for snap in ranks:
            for section, tally in snap.items():
                if section != "wall":
                    cat = plots.CATEGORY_NAMES[GROUPS.get(section, section)]
                    expected[cat] = expected.get(cat, 0.0) + tally["seconds"]
        wall = sum(snap["wall"]["seconds"] for snap in ranks)
        expected["other (untimed)"] = max(wall - sum(expected.values()), 0.0)
        assert {cat for cat, seconds in expected.items() if seconds > 0} <= widths.keys()
        for cat, w in widths.items():
            assert w[i] == pytest.approx(expected.get(cat, 0.0), rel=1e-9, abs=1e-12), (run.name, cat)

    # generalisation: the median over seeds of eval.json's average-model returns, and their std as error bars
    evals = [json.loads((run / "eval.json").read_text())["modes"]["average"] for run in runs]
    table = np.array([[e["train"]["return"], e["test"]["return"], e["gap"]] for e in evals])
    left, right = saved_figures["generalisation.png"].axes
    assert [c.get_label() for c in bar_series(left)] == ["train", "test"] and len(bar_series(right)) == 1
    assert [t.get_text() for t in left.get_xticklabels()] == ["DecPG k=1\n(2 seeds)"]
    assert (left.get_title(), right.get_title()) == ("average episode reward (θ̄, deterministic)",
                                                     "generalisation gap (test − train)")
    series = bar_series(left) + bar_series(right)
    for j, container in enumerate(series):  # train, test, gap
        heights, errors = bars(container)
        assert heights == pytest.approx([np.median(table[:, j])], rel=1e-12), j
        assert errors == pytest.approx([table[:, j].std()], rel=1e-9, abs=1e-12), j


def test_median_band():
    """The band's ends against the exact bootstrap distribution of a median. Seeds x₁ < … < xₙ resampled with
    replacement: for n = 2 the median is x₁ with probability 1/4 (both draws x₁), and for n = 3 with 7/27 (at
    least two of three draws), so the 2.5% and 97.5% points are x₁ and xₙ; for n = 7 it is x₁ with probability
    P(Bin(7, 1/7) ≥ 4) = 1.0% and at most x₂ with P(Bin(7, 2/7) ≥ 4) = 10.8%, so the ends are x₂ and x₆. Of
    2000 resamples that is ~20 and ~216 against the 2.5% point's ~50: far from the edge for a fixed generator."""
    x = np.array([-3.0, 0.5, 1.0, 4.0, 4.5, 7.0, 30.0])
    for n, (low, high) in ((2, (0, 1)), (3, (0, 2)), (7, (1, 5))):
        # columns: the seeds in order, reversed, and other values in another order (all resampled alike)
        values = np.stack([x[:n], x[:n][::-1], 10 * x[:n] ** 2], axis=1)
        median, lo, hi = plots.median_band(values)
        assert list(median) == [np.median(values[:, j]) for j in range(3)]
        for j in range(3):
            ordered = np.sort(values[:, j])
            assert (lo[j], hi[j]) == (ordered[low], ordered[high]), (n, j)
    # equal seeds: a zero-width band at their value
    median, lo, hi = plots.median_band(np.full((5, 2), 2.5))
    assert list(median) == list(lo) == list(hi) == [2.5, 2.5]
    # equivariant under y → a·y + b (a < 0 swaps the ends): the band is a property of the values, not their units
    values = np.random.default_rng(1).normal(size=(6, 4))
    median, lo, hi = plots.median_band(values)
    m2, lo2, hi2 = plots.median_band(-3.0 * values + 7.0)
    assert m2 == pytest.approx(-3.0 * median + 7.0) and lo2 == pytest.approx(-3.0 * hi + 7.0)
    assert hi2 == pytest.approx(-3.0 * lo + 7.0)
    assert plots.median_band(values[:1])[1] is None  # one seed: no band


@pytest.mark.parametrize("cli", ["eval", "landscape", "plot"])
@pytest.mark.parametrize("case", ["missing_dir", "no_models", "bad_mode"])
def test_bad_input_one_line_exit_2(cli, case, tmp_path, capsys):
    mains = {"eval": evalmodes.main, "landscape": landscape.main, "plot": plots.main}
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {"missing_dir": [str(tmp_path / "nope")], "no_models": [str(empty)],
            "bad_mode": [str(empty), "--mode", "bogus"] if cli == "eval" else [str(empty), "--grid", "x"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        mains[cli](argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"decnode-{cli}: error:"), err
