"""kNN ring topologies against their definition and the paper's spectral gaps."""

import subprocess
import sys

import numpy as np
import pytest

from decnode.topology import block_plan, check_topology, in_neighbours, mixing_matrix, out_neighbours, spectral_gap


@pytest.mark.parametrize("n", range(1, 17))
def test_doubly_stochastic_circulant_with_k_plus_one_weights(n):
    for k in range(n):
        P = mixing_matrix(n, k)
        assert np.allclose(P.sum(0), 1) and np.allclose(P.sum(1), 1)
        assert all(np.count_nonzero(row) == k + 1 for row in P)
        assert np.allclose(P[P > 0], 1 / (k + 1))
        assert np.allclose(P, np.roll(np.roll(P, 1, axis=0), 1, axis=1))  # circulant
        if k % 2 == 0:
            assert np.allclose(P, P.T)  # even k: every edge goes both ways


def test_odd_k_adds_one_one_way_edge():
    n, k = 10, 3
    P = mixing_matrix(n, k)
    for i in range(n):
        receives = {j for j, _ in in_neighbours(P, i)}
        assert receives == {(i + 1) % n, (i - 1) % n, (i + 2) % n}  # i±1 and the extra i+(k+1)/2
        sends = {r for r, _ in out_neighbours(P, i)}
        assert sends == {(i + 1) % n, (i - 1) % n, (i - 2) % n}
    assert not np.allclose(P, P.T)


def test_paper_spectral_gaps():
    gaps = {k: spectral_gap(mixing_matrix(10, k)) for k in (2, 4, 6, 8)}
    assert gaps == pytest.approx({2: 0.127, 4: 0.353, 6: 0.626, 8: 0.889}, abs=1e-3)
    assert spectral_gap(mixing_matrix(10, 0)) == pytest.approx(0.0)  # independent learners
    assert spectral_gap(mixing_matrix(10, 9)) == pytest.approx(1.0)  # fully connected: P = J/n
    eleven = [spectral_gap(mixing_matrix(11, k)) for k in range(1, 10)]
    assert eleven[0] < 0.05 and eleven[-1] > 0.85 and all(np.diff(eleven) > 0)  # the paper's Figure 6


@pytest.mark.parametrize("n,k", [(0, 0), (5, 5), (5, -1), (4, 1.5), (3, True)])
def test_impossible_topologies_are_named(n, k):
    with pytest.raises(ValueError, match=r"must be"):
        check_topology(n, k)


@pytest.mark.parametrize("n,procs", [(6, 3), (8, 2), (9, 3), (10, 5)])
def test_block_plan_reassembles_P(n, procs):
    for k in range(n):
        P = mixing_matrix(n, k)
        theta = np.random.default_rng(n * 100 + k).normal(size=(n, 4))
        plans = [block_plan(P, procs, r) for r in range(procs)]
        for plan in plans:
            received = [theta[plan.recv[q]] for q in sorted(plan.recv)]
            buf = np.concatenate([theta[plan.agents.start: plan.agents.stop], *received])
            assert np.allclose(plan.weights @ buf, (P @ theta)[plan.agents.start: plan.agents.stop])
            for q, rows in plan.send.items():  # what r sends q is exactly what q expects from r
                assert [plan.agents.start + i for i in rows] == plans[q].recv[plan.rank]


def test_cli_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "decnode.topology", "--n", "10"], capture_output=True, text=True,
                         check=True).stdout
    assert "0.353" in out and "0.889" in out
    out = subprocess.run([sys.executable, "-m", "decnode.topology", "--n", "11"], capture_output=True, text=True,
                         check=True).stdout
    assert all(f"\n{k:>3} " in out for k in range(1, 10))


@pytest.mark.parametrize("n,devices", [(4, 4), (8, 4), (6, 3), (5, 5), (10, 2), (12, 4)])
def test_shift_plan_mixes_like_P_on_every_device(n, devices):
    """The XLA fabric's plan (one collective per device shift, the same program on every device) gives P @ Θ."""
    from decnode.topology import shift_plan
    theta = np.random.default_rng(n).normal(size=(n, 3))
    a = n // devices
    for k in range(n):
        P = mixing_matrix(n, k)
        plan = shift_plan(P, devices)
        for r in range(devices):
            block = lambda q: theta[(q % devices) * a: (q % devices + 1) * a]  # noqa: E731
            buf = np.concatenate([block(r)] + [block(r + s)[rows] for s, rows in zip(plan.shifts, plan.rows)])
            np.testing.assert_allclose(plan.weights @ buf, (P @ theta)[r * a: (r + 1) * a], atol=1e-12)
