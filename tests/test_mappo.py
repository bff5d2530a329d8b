"""Hand-computed checks of the MAPPO pure functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from decnode.nn.losses import ValueNorm, gae, linear_lr, normalize_advantages, ppo_policy_loss, value_loss


def test_gae_with_done_in_the_middle() -> None:
    gamma, lam = 0.9, 0.8
    r = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1)
    v = torch.tensor([0.5, 1.5, -1.0, 2.0, 10.0]).view(5, 1)
    d = torch.tensor([False, True, False, False]).view(4, 1)  # episode ends with step 1
    adv, ret = gae(r, v, d, gamma, lam)
    # backwards by hand; step 1 neither bootstraps from v[2] nor carries step 2's advantage
    d3 = 4.0 + gamma * 10.0 - 2.0
    d2 = 3.0 + gamma * 2.0 - (-1.0)
    d1 = 2.0 - 1.5
    d0 = 1.0 + gamma * 1.5 - 0.5
    a3 = d3
    a2 = d2 + gamma * lam * a3
    a1 = d1
    a0 = d0 + gamma * lam * a1
    expected = torch.tensor([a0, a1, a2, a3]).view(4, 1)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + v[:4])


def test_gae_broadcasts_dones_over_agents() -> None:
    T, B, N = 5, 3, 2
    r, v = torch.randn(T, B, N), torch.randn(T + 1, B, N)
    d = torch.rand(T, B) < 0.3
    adv, _ = gae(r, v, d, 0.99, 0.95)
    for n in range(N):
        adv_n, _ = gae(r[..., n], v[..., n], d, 0.99, 0.95)
        torch.testing.assert_close(adv[..., n], adv_n)


def test_value_norm_roundtrip_and_stats() -> None:
    vn = ValueNorm(shape=())
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(10, 4)) for _ in range(5)]
    vn.update(torch.tensor(batches[0], dtype=torch.float32))
    mean, var = vn.mean_var()  # one update: debiasing makes it exactly the batch statistics
    np.testing.assert_allclose(mean.item(), batches[0].mean(), rtol=1e-6)
    np.testing.assert_allclose(var.item(), batches[0].var(), rtol=1e-5)
    for b in batches[1:]:
        vn.update(torch.tensor(b))
    allx = np.concatenate(batches)
    mean, var = vn.mean_var()  # beta -> 1 with equal batches: ~ plain mean/var of everything
    np.testing.assert_allclose(mean.item(), allx.mean(), rtol=1e-4)
    np.testing.assert_allclose(var.item(), allx.var(), rtol=1e-4)
    x = torch.randn(6, 3)
    torch.testing.assert_close(vn.denormalize(vn.normalize(x)), x)
    torch.testing.assert_close(vn.normalize(x), (x - mean.float()) / var.sqrt().float())

    clone = ValueNorm(shape=())
    clone.load_state_dict(vn.state_dict())
    torch.testing.assert_close(clone.normalize(x), vn.normalize(x))


def test_value_norm_per_agent_rows_are_separate() -> None:
    A = 3
    per_row = ValueNorm(shape=(A,))
    singles = [ValueNorm(shape=()) for _ in range(A)]
    for k in range(3):
        x = torch.randn(A, 8, 2) * torch.tensor([1.0, 5.0, 0.5]).view(A, 1, 1) + torch.tensor([0.0, 10.0, -3.0]).view(A, 1, 1)
        per_row.update(x)
        for a in range(A):
            singles[a].update(x[a])
    mean, var = per_row.mean_var()
    assert mean.shape == var.shape == (A,)
    x = torch.randn(A, 4)
    y = per_row.normalize(x)
    for a in range(A):
        m, v = singles[a].mean_var()
        torch.testing.assert_close(mean[a], m)
        torch.testing.assert_close(var[a], v)
        torch.testing.assert_close(y[a], singles[a].normalize(x[a]))
    torch.testing.assert_close(per_row.denormalize(y), x)
    with pytest.raises(ValueError):
        per_row.update(torch.randn(A + 1, 4))


def test_ppo_policy_loss_hand_built() -> None:
    clip = 0.2
    # agent 0: ratio 1.5; agent 1: ratio 0.5; each with one positive and one negative advantage
    new = torch.tensor([[math.log(1.5), math.log(1.5)], [math.log(0.5), math.log(0.5)]])
    old = torch.zeros(2, 2)
    adv = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    loss = ppo_policy_loss(new, old, adv, clip)
    # -min(r*A, clip(r)*A): a0: -1.2 and +1.5; a1: -0.5 and +0.8
    torch.testing.assert_close(loss, torch.tensor([(-1.2 + 1.5) / 2, (-0.5 + 0.8) / 2]))


def test_value_loss_hand_built() -> None:
    clip = 0.2
    values = torch.tensor([[1.0, 0.0, 0.0]])
    old = torch.zeros(1, 3)
    ret = torch.tensor([[0.5, 20.0, -20.0]])
    loss = value_loss(values, old, ret, clip, huber_delta=10.0)
    # elem 0: clipped V = 0.2 -> 0.5*0.3^2 = 0.045; unclipped -> 0.5*0.5^2 = 0.125; max = 0.125
    # elems 1, 2: |error| 20 > 10 -> 10 * (20 - 5) = 150 on both sides (symmetric Huber)
    torch.testing.assert_close(loss, torch.tensor([(0.125 + 150.0 + 150.0) / 3]))
    assert loss.shape == (1,)


def test_linear_lr_endpoints() -> None:
    assert linear_lr(0, 10, 1e-3, 1e-4) == pytest.approx(1e-3)
    assert linear_lr(9, 10, 1e-3, 1e-4) == pytest.approx(1e-4)
    assert linear_lr(3, 7, 1e-3, 1e-4) == pytest.approx(1e-3 - 0.5 * 9e-4)
    assert linear_lr(0, 1, 5e-4, 0.0) == 5e-4


def test_normalize_advantages_per_row() -> None:
    adv = torch.randn(3, 10, 4) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1) + 5.0
    out = normalize_advantages(adv)
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2), correction=0), torch.ones(3), atol=1e-3, rtol=0)
