"""decnode-netmodel: the α–β fit, the prediction against the simulated clock of a real tiny job, the CLI's errors."""

import numpy as np
import pytest

from decnode.net.profile import PRESETS, NetProfile
from decnode.net.model import predict_iteration_comm
from decnode.tools.netmodel import SIZES, calibrate, compare, fit_alpha_beta, job_config, main

pytestmark = pytest.mark.serial  # it compares times with the host's: make test runs it alone


def test_the_fit_recovers_a_known_latency_and_bandwidth_from_noisy_timings():
    alpha, beta = 40e-6, 5e9
    rng = np.random.default_rng(0)
    sizes = np.array(SIZES, dtype=float)
    seconds = (alpha + 8 * sizes / beta) * rng.uniform(0.97, 1.03, sizes.size)  # ±3% timing noise
    fit = fit_alpha_beta(sizes, seconds)
    assert fit["latency_s"] == pytest.approx(alpha, rel=0.1)
    assert fit["bandwidth_bit_s"] == pytest.approx(beta, rel=0.05)
    assert fit["r2"] > 0.99 and fit["max_rel_residual"] < 0.06


def test_calibration_pings_two_real_gloo_processes_and_fits_their_transport():
    # 16 MiB takes ms on loopback, above the ms a loaded 2-core host adds to a small message (with 256 KiB and 2
    # reps, 2 of 4 runs on a loaded host timed 4 B no faster than 256 KiB: β = inf); the median of 5 reps damps the rest
    sizes = [4, 4096, 1 << 24]
    result = calibrate(reps=5, sizes=sizes, timeout_s=60)
    assert result["sizes"] == sizes and all(t > 0 for t in result["seconds"])
    # a failed fit (no growth with size) reports β = inf: the bandwidth must be a number, and loopback moves far
    # more than 100 Mbit/s
    assert np.isfinite(result["bandwidth_bit_s"]) and result["bandwidth_bit_s"] > 1e8
    assert np.isfinite(result["latency_s"]) and np.isfinite(result["r2"]) and result["r2"] <= 1
    # the α, β, R² and residual reported are the fit of the one-way times reported beside them
    assert {k: result[k] for k in ("latency_s", "bandwidth_bit_s", "r2", "max_rel_residual")} == \
        fit_alpha_beta(result["sizes"], result["seconds"])


def test_the_prediction_counts_each_call_the_trainer_makes():
    cfg = job_config(4, "decpg", 2, None, None, ["env.episode_length=5", "train.ppo_epochs=3"])
    p = NetProfile("latency only", latency_s=0.01)  # infinite bandwidth: only α counts
    pred = predict_iteration_comm(cfg, p, 4)
    assert pred["step_exchange"] == pytest.approx(5 * 2 * 0.01)  # per step: observations out, actions back
    assert pred["reward_scatter"] == pytest.approx(0.01)
    assert pred["combine"] == pytest.approx(3 * 0.01)  # one gossip round per epoch
    assert pred["stats"] == pytest.approx(2 * 3 * 0.01)  # ring all-reduce: 2(W−1) steps
    ps = predict_iteration_comm(job_config(4, "ps", 0, None, None, ["train.ppo_epochs=3"]), p, 4)
    assert ps["combine"] == pytest.approx(3 * 2 * 3 * 0.01)
    assert predict_iteration_comm(cfg, PRESETS["loopback"], 4)["total"] == 0.0


def test_the_prediction_matches_the_simulated_clock_of_a_real_tiny_job(tmp_path, measured):
    # 3 processes on a slow network: 10 ms, 20 Mbit/s, no jitter; the job is small, so communication dominates
    profile = tmp_path / "slow.yaml"
    profile.write_text("preset: ethernet\nlatency_s: 0.01\nbandwidth_bit_s: 20000000\n")
    sets = ["env.episode_length=5", "env.n_envs=4", "train.ppo_epochs=2", "train.hidden=16"]
    cfg = job_config(3, "decpg", 2, None, None, sets)
    args = ["--algo", "decpg", "--k", "2", *(x for s in sets for x in ("--set", s))]
    result = compare(cfg, str(profile), 3, 3, args)
    measured(f"simulated/predicted communication {result['ratio']:.3f} (predicted {result['predicted']['total']:.4f} s, "
             f"simulated {result['simulated_comm']:.4f} s per iteration)")
    assert result["predicted"]["total"] > 0.15
    assert result["ratio"] == pytest.approx(1.0, abs=0.15), result


@pytest.mark.parametrize("argv, words", [
    (["predict", "--nproc", "0"], "--nproc must be ≥ 1"),
    (["predict", "--net", "nowhere"], "neither a preset"),
    (["predict", "--nproc", "3", "--k", "7"], "algo.k must be in"),
    (["compare", "--iterations", "1"], "--iterations must be ≥ 2"),
    (["sweep", "--compute-s", "-1"], "must be ≥ 0"),
    (["fly"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("decnode-netmodel: error: ") and err.count("\n") == 1 and words in err, err
