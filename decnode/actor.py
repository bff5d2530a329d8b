"""A process's block of actors: acting with per-agent randomness, and the PPO update of their own parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .algos import Combiner
from .mappo import normalize_advantages, ppo_policy_loss
from .models import (RecurrentNet, categorical_sample, chunk_resets, chunk_sequences, chunk_start_states,
                     entropy, flatten_parameters, log_prob, masked_logits)


def sampler_seed(seed: int, agent: int) -> int:
    # Each agent's action noise comes from its own stream, so it does not depend on which process holds it.
    return (seed * 1_000_003 + 7919 * (agent + 1)) % (2**63 - 1)


@dataclass
class ActorBatch:
    """One rollout as the agents of a block saw it: [a, T, B, ...] plus the resets [T, B]."""

    obs: torch.Tensor
    avail: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    h_before: torch.Tensor  # hidden state entering each step (chunk starts are read from here)
    reset: torch.Tensor


class ActorBlock:
    def __init__(self, agents: range, obs_dim: int, n_actions: int, hidden: int, seed: int):
        self.agents, self.a = agents, len(agents)
        self.n_actions = n_actions
        # Same θ₀ for every agent, whatever the block size: the init draws from one seeded generator.
        self.net = RecurrentNet(self.a, obs_dim, n_actions, hidden, out_gain=0.01,
                                generator=torch.Generator().manual_seed(seed))
        self.params, self.grads = flatten_parameters(self.net, self.a)
        self.samplers = [torch.Generator().manual_seed(sampler_seed(seed, i)) for i in agents]
        self._uniforms = torch.empty(self.a, 0, n_actions)

    def uniforms(self, batch: int) -> torch.Tensor:
        if self._uniforms.shape[1] != batch:
            self._uniforms = torch.empty(self.a, batch, self.n_actions)
        for row, gen in enumerate(self.samplers):
            self._uniforms[row].uniform_(generator=gen)
        return self._uniforms

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail: torch.Tensor, reset: torch.Tensor, h: torch.Tensor):
        """obs [a, B, od], avail [a, B, K] bool, reset [B] -> actions [a, B], log-probs [a, B], next h."""
        logits, h = self.net.step(obs, h, reset)
        logits = masked_logits(logits, avail)
        actions = categorical_sample(logits, self.uniforms(obs.shape[1]))
        return actions, log_prob(logits, actions), h

    def update(self, batch: ActorBatch, advantages: torch.Tensor, combiner: Combiner, *, lr: float, epochs: int,
               clip: float, entropy_coef: float, max_grad_norm: float, chunk: int, mix_epochs: set[int],
               during_comm=None) -> dict[str, torch.Tensor]:
        """PPO epochs on the full batch; each epoch is one SGD step combined by `combiner`.

        `during_comm(epoch)` runs between backward and the combine, while the gossip is in flight.
        Returns per-row statistics, including the first epoch's gradient (for the noise metrics).
        """
        obs = chunk_sequences(batch.obs, chunk)
        avail = chunk_sequences(batch.avail, chunk)
        actions = chunk_sequences(batch.actions, chunk)
        old_logp = chunk_sequences(batch.logp, chunk)
        adv = chunk_sequences(normalize_advantages(advantages), chunk)
        h0 = chunk_start_states(batch.h_before, chunk)
        reset = chunk_resets(batch.reset, chunk)
        stats = {}
        for epoch in range(epochs):
            combiner.before_backward(self.params, epoch in mix_epochs)
            self.grads.zero_()
            logits, _ = self.net(obs, h0, reset)
            logits = masked_logits(logits, avail)
            policy_loss = ppo_policy_loss(log_prob(logits, actions), old_logp, adv, clip)
            ent = entropy(logits, avail).mean(dim=(1, 2))
            (policy_loss - entropy_coef * ent).sum().backward()  # rows are independent: row i gets ∇Lᵢ
            if epoch == 0:
                stats = {"policy_loss": policy_loss.detach(), "entropy": ent.detach(),
                         "grad": self.grads.clone(), "grad_norm": self.grads.norm(dim=1)}
            combiner.after_backward(self.grads)
            if during_comm is not None:
                during_comm(epoch)
            combiner.step(self.params, self.grads, lr, max_grad_norm)
        return stats
