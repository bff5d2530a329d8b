"""MAPPO's losses and bookkeeping as pure tensor functions (no distributed code).

Shapes keep a leading agent axis A where losses are concerned: every loss returns one value per agent
row [A], because under DecPG each agent owns its parameters and its own loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _row_dims(x: Tensor, lead: int = 1) -> tuple[int, ...]:
    """All dims except the first `lead` (the ones a per-agent reduction averages over)."""
    return tuple(range(lead, x.dim()))


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation.

    rewards [T, B, ...], values [T+1, B, ...] (de-normalised), dones [T, B] bool: dones[t] means the
    episode ended with step t, so step t does not bootstrap from values[t+1] (the next episode's start).
    Returns (advantages [T, B, ...], returns = advantages + values[:T]).
    """
    T = rewards.shape[0]
    # broadcast dones over any trailing (e.g. agent) dims of rewards
    nonterminal = (~dones.bool()).to(rewards.dtype).reshape(dones.shape + (1,) * (rewards.dim() - dones.dim()))
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * values[t + 1] * nonterminal[t] - values[t]
        last = delta + gamma * lam * nonterminal[t] * last
        adv[t] = last
    return adv, adv + values[:T]


class ValueNorm:
    """Running value normaliser as in on-policy's utils/valuenorm.py (debiased EMA of mean and mean²).

    `shape` is the leading part of the inputs that keeps separate statistics: ValueNorm(shape=(A,))
    keeps one (mean, var) per agent row of x [A, ...]; ValueNorm(shape=()) pools everything.
    Statistics are kept in float64 so mean² - mean² cancellation stays harmless.
    """

    def __init__(self, shape: Sequence[int] = (), beta: float = 0.99999, epsilon: float = 1e-5) -> None:
        self.shape = tuple(shape)
        self.beta = beta
        self.epsilon = epsilon
        self.running_mean = torch.zeros(self.shape, dtype=torch.float64)
        self.running_mean_sq = torch.zeros(self.shape, dtype=torch.float64)
        self.debiasing_term = torch.zeros((), dtype=torch.float64)

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[: len(self.shape)]) != self.shape:
            raise ValueError(f"input of shape {tuple(x.shape)} does not start with {self.shape}")

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        self._check(x)
        x = x.detach().to(torch.float64)
        dims = _row_dims(x, len(self.shape))
        batch_mean = x.mean(dim=dims) if dims else x
        batch_sq_mean = (x**2).mean(dim=dims) if dims else x**2
        w = self.beta
        self.running_mean.mul_(w).add_(batch_mean * (1.0 - w))
        self.running_mean_sq.mul_(w).add_(batch_sq_mean * (1.0 - w))
        self.debiasing_term.mul_(w).add_(1.0 - w)

    def mean_var(self) -> tuple[Tensor, Tensor]:
        """Debiased (mean, var) of shape `shape`; var floored at 1e-2 as on-policy does."""
        d = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / d
        var = (self.running_mean_sq / d - mean**2).clamp(min=1e-2)
        return mean, var

    def _broadcast(self, stat: Tensor, x: Tensor) -> Tensor:
        return stat.reshape(self.shape + (1,) * (x.dim() - len(self.shape))).to(x.dtype)

    def normalize(self, x: Tensor) -> Tensor:
        self._check(x)
        mean, var = self.mean_var()
        return (x - self._broadcast(mean, x)) / self._broadcast(var.sqrt(), x)

    def denormalize(self, x: Tensor) -> Tensor:
        self._check(x)
        mean, var = self.mean_var()
        return x * self._broadcast(var.sqrt(), x) + self._broadcast(mean, x)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "running_mean": self.running_mean.clone(),
            "running_mean_sq": self.running_mean_sq.clone(),
            "debiasing_term": self.debiasing_term.clone(),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for k in ("running_mean", "running_mean_sq", "debiasing_term"):
            getattr(self, k).copy_(torch.as_tensor(state[k], dtype=torch.float64))


def ppo_policy_loss(new_logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> Tensor:
    """Clipped PPO surrogate, mean over everything but the agent axis -> [A]."""
    ratio = torch.exp(new_logp - old_logp)
    surr1 = ratio * adv
    surr2 = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    loss = -torch.min(surr1, surr2)
    return loss.mean(dim=_row_dims(loss))


def huber(e: Tensor, delta: float) -> Tensor:
    """Standard Huber loss. (on-policy's huber_loss tests `e > d` instead of `|e| > d`, which zeroes the
    loss for e < -d; we use the symmetric, intended form.)"""
    a = e.abs()
    return torch.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta))


def value_loss(
    values: Tensor, old_values: Tensor, returns_normalized: Tensor, clip: float, huber_delta: float = 10.0
) -> Tensor:
    """MAPPO's clipped value loss in normalised space: max(huber(R - V_clipped), huber(R - V)) -> [A]."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.max(huber(returns_normalized - clipped, huber_delta), huber(returns_normalized - values, huber_delta))
    return loss.mean(dim=_row_dims(loss))


def linear_lr(iteration: int, total_iterations: int, lr: float, min_lr: float) -> float:
    """lr at iteration 0, falling linearly to min_lr at iteration total_iterations - 1."""
    if total_iterations <= 1:
        return lr
    frac = min(max(iteration, 0), total_iterations - 1) / (total_iterations - 1)
    return lr + (min_lr - lr) * frac


def normalize_advantages(adv: Tensor, eps: float = 1e-5) -> Tensor:
    """Per agent row: (adv - mean) / (std + eps) over the whole batch (population std, as np.nanstd)."""
    dims = _row_dims(adv)
    mean = adv.mean(dim=dims, keepdim=True)
    std = adv.std(dim=dims, keepdim=True, correction=0)
    return (adv - mean) / (std + eps)
