"""decnode-eval (four modes, train/test/gap, nproc invariance), decnode-landscape and decnode-plot on tiny runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from decnode import analysis, landscape, plots
from decnode.analysis import MODES, evaluate_run, load_models
from decnode.checkpoint import atomic_save
from decnode.collectives import Collectives
from decnode.evaluate import Evaluator

N = 3


def _train(out, seed: int) -> None:
    from decnode.run import main
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
    analysis.main([str(run_dir), "--out", "one.json"])
    one = json.loads((run_dir / "one.json").read_text())
    assert set(one["modes"]) == set(MODES)
    for entry in one["modes"].values():
        assert {"train", "test", "gap"} <= set(entry)
    assert "average_stochastic" in capsys.readouterr().out
    analysis.main([str(run_dir), "--nproc", "2", "--out", "two.json"])  # 3 agents over 2 processes
    two = json.loads((run_dir / "two.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    _close(one["modes"], two["modes"])


def test_launch_failure_message_names_the_tool(run_dir, tmp_path, capsys):
    """A failing decnode-eval worker is reported under its own name, without training's iteration/--resume
    hints (run_dir holds a finished training run with metrics and a checkpoint)."""
    from decnode.launch import launch
    payload = (str(tmp_path / "nope"), ["average"], 1, 1, str(tmp_path / "x.json"), 30.0)
    assert launch(1, analysis.eval_worker, payload, run_dir, prog="decnode-eval") == 1
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


def test_landscape(run_dir):
    landscape.main([str(run_dir), "--grid", "3", "--episodes", "2", "--nproc", "2"])
    data = np.load(run_dir / "landscape.npz")
    assert data["reward"].shape == (3, 3) and data["loss"].shape == (3, 3)
    assert np.isfinite(data["reward"]).all() and np.isfinite(data["loss"]).all()
    assert list(data["alphas"]) == [-1.0, 0.0, 1.0]
    for name in ("reward", "reward_hist", "loss", "loss_hist"):
        assert (run_dir / f"landscape_{name}.png").stat().st_size > 1000
    models = load_models(run_dir)
    cfg = models["config"]
    direct = Evaluator(Collectives(), analysis.env_factory(cfg, N), n_agents=N, episodes=2,
                       obs_dim=models["obs_dim"], n_actions=models["n_actions"], hidden=cfg["train"]["hidden"])
    theta_bar = models["actor_mean"].expand(N, -1)
    assert data["reward"][1, 1] == direct.run(theta_bar, analysis.eval_seeds(cfg)[0])["return"]
    assert abs(data["loss"][1, 1]) < 1e-5  # ratio 1 and normalised advantages: ≈ −mean(adv) = 0


def test_plots_two_seeds(run_dir, tmp_path):
    other = tmp_path / "s2"
    _train(other, seed=2)
    analysis.main([str(other), "--mode", "average"])
    groups = plots.group_runs([plots.load_run(run_dir), plots.load_run(other)])
    assert [(label, len(runs)) for label, runs in groups] == [("DecPG k=1", 2)]
    out = tmp_path / "plots"
    plots.main([str(run_dir), str(other), "--out", str(out)])
    for name in ("reward", "entropy", "noise", "consensus", "timing", "generalisation"):
        assert (out / f"{name}.png").stat().st_size > 1000, name


def test_median_band():
    values = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 9.0]])
    median, lo, hi = plots.median_band(values)
    assert list(median) == [1.0, 2.0]
    assert (lo <= median).all() and (median <= hi).all() and lo[0] >= 0.0 and hi[1] <= 9.0
    assert plots.median_band(values[:1])[1] is None


@pytest.mark.parametrize("cli", ["eval", "landscape", "plot"])
@pytest.mark.parametrize("case", ["missing_dir", "no_models", "bad_mode"])
def test_bad_input_one_line_exit_2(cli, case, tmp_path, capsys):
    mains = {"eval": analysis.main, "landscape": landscape.main, "plot": plots.main}
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = {"missing_dir": [str(tmp_path / "nope")], "no_models": [str(empty)],
            "bad_mode": [str(empty), "--mode", "bogus"] if cli == "eval" else [str(empty), "--grid", "x"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        mains[cli](argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"decnode-{cli}: error:"), err
