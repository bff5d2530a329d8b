"""Value functions on the global state, in the two placements the paper and our design card use.

central: rank 0 holds ONE critic whose head has a value per agent, so its cost does not grow n-fold; it trains
         with local SGD and rank 0 sends each agent its advantages.
local:   every agent holds its own critic (rows of a block), combined after each step exactly like the actor.
Both share this class: the net is a RecurrentNet with `rows` agent rows and `heads` outputs per state.
"""

from __future__ import annotations

import torch

from .algos import Combiner
from .mappo import ValueNorm, gae, value_loss
from .models import RecurrentNet, chunk_resets, chunk_sequences, chunk_start_states, flatten_parameters


class Critic:
    def __init__(self, rows: int, state_dim: int, heads: int, hidden: int, seed: int, per_row_norm: bool):
        self.rows, self.heads = rows, heads
        self.net = RecurrentNet(rows, state_dim, heads, hidden, out_gain=1.0,
                                generator=torch.Generator().manual_seed(seed + 1))
        self.params, self.grads = flatten_parameters(self.net, rows)
        # Local critics keep their own return statistics per agent; the central one pools all agents.
        self.value_norm = ValueNorm((rows,) if per_row_norm else ())
        self.h = self.net.initial_state(0)

    def start(self, n_envs: int) -> None:
        self.h = self.net.initial_state(n_envs)

    @torch.no_grad()
    def values(self, states: torch.Tensor, reset: torch.Tensor):
        """states [rows, T+1, B, S], reset [T+1, B] -> normalised values [rows, T+1, B, heads] and the hidden
        state entering each of the first T steps (for chunked training). Carries its hidden state on."""
        T = states.shape[1] - 1
        v, hs = self.net(states[:, :T], self.h, reset[:T], return_hiddens=True)
        h_before = torch.cat([self.h.unsqueeze(1), hs[:, :-1]], dim=1)
        self.h = hs[:, -1].clone()
        v_last, _ = self.net.step(states[:, T], self.h, reset[T])
        return torch.cat([v, v_last.unsqueeze(1)], dim=1), h_before

    def advantages(self, values_norm: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE in the time-major layout gae() wants; values/rewards are [rows, T(+1), B, heads]."""
        values = self.value_norm.denormalize(values_norm)
        to_time = lambda x: x.permute(1, 2, 0, 3)  # noqa: E731  [rows, T, B, h] -> [T, B, rows, h]
        adv, ret = gae(to_time(rewards), to_time(values), dones, gamma, lam)
        back = lambda x: x.permute(2, 0, 1, 3)  # noqa: E731
        return back(adv), back(ret)

    def update(self, states: torch.Tensor, h_before: torch.Tensor, reset: torch.Tensor, old_values: torch.Tensor,
               returns: torch.Tensor, combiner: Combiner, *, lr: float, clip: float, huber_delta: float,
               value_coef: float, max_grad_norm: float, chunk: int, epoch: int, mix: bool) -> torch.Tensor:
        """One PPO epoch of the value loss on the first T steps; returns the per-row loss [rows]."""
        if epoch == 0:  # one statistics update per iteration (the batch is the same in every epoch)
            self.value_norm.update(returns)
            self._batch = (chunk_sequences(states[:, :-1], chunk), chunk_start_states(h_before, chunk),
                           chunk_resets(reset[:-1], chunk), chunk_sequences(old_values[:, :-1], chunk),
                           chunk_sequences(self.value_norm.normalize(returns), chunk))
        x, h0, r, old_v, target = self._batch
        combiner.before_backward(self.params, mix)
        self.grads.zero_()
        v, _ = self.net(x, h0, r)
        loss = value_loss(v, old_v, target, clip, huber_delta)
        (value_coef * loss).sum().backward()
        combiner.after_backward(self.grads)
        combiner.step(self.params, self.grads, lr, max_grad_norm)
        return loss.detach()
