"""A process's block of actors: acting with per-agent randomness, and the PPO loss of their own parameters.

The epoch loop (backward, combine, step) is the trainer's; this block only computes losses and gradients.
Rows are independent, so a block may compute them as several row blocks on a thread pool (see ActorBlock)."""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, fields

import torch

from ..nn.grouped import GroupShape, actor_net
from ..nn.losses import normalize_advantages, ppo_policy_loss
from ..nn.models import (RecurrentNet, chunk_resets, chunk_sequences, chunk_start_states,
                     entropy, flatten_parameters, log_prob, masked_logits, share_rows)


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


@dataclass
class PPOBatch:
    """The same rollout cut into training chunks [a, chunks·…]; advantages normalised per agent."""

    obs: torch.Tensor
    avail: torch.Tensor
    actions: torch.Tensor
    old_logp: torch.Tensor
    adv: torch.Tensor
    h0: torch.Tensor
    reset: torch.Tensor  # [chunk, sequences]: shared by all rows

    def rows(self, part: slice) -> PPOBatch:
        return PPOBatch(**{f.name: getattr(self, f.name) if f.name == "reset" else getattr(self, f.name)[part]
                           for f in fields(self)})


def row_blocks(a: int, blocks: int) -> list[slice]:
    """a rows in min(blocks, a) contiguous blocks whose sizes differ by at most one."""
    parts = max(1, min(blocks, a))
    bounds = [round(i * a / parts) for i in range(parts + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def row_pool(threads: int, intra_op: int) -> ThreadPoolExecutor:
    """The threads that run row blocks, each with `intra_op` intra-op threads of its own: OpenMP keeps that count
    per thread and a new thread starts from the process default (every core), whose parallel reductions split by
    the team OpenMP grants at that moment, so under load the same run's last bits changed from run to run (3 of 8
    runs of one command differed by ~1e-10 before each thread set its own)."""
    return ThreadPoolExecutor(threads, "decnode-work", initializer=torch.set_num_threads, initargs=(intra_op,))


class ActorBlock:
    """`blocks` > 1 (CPU only): the PPO backward may run as that many row blocks on a thread pool (the trainer's,
    one intra-op thread per pool thread). A process's cores are then busy through the small ops between the GEMMs
    too, which one block on several intra-op threads leaves to one core; each row's ops run on the same shapes
    either way, so the gradients agree to float32 rounding (bit for bit where the math library blocks a batched
    GEMM alike for every row count)."""

    def __init__(self, agents: range, obs_dim: int, n_actions: int, hidden: int, seed: int,
                 device: torch.device | str = "cpu", blocks: int = 1, shapes: list[GroupShape] | None = None,
                 width: int | None = None):
        """shapes, width: agent groups (nn/grouped.py) — the groups this block meets and the job's row width D;
        None: one group, one RecurrentNet."""
        self.agents, self.a = agents, len(agents)
        self.n_actions = n_actions
        self.device = torch.device(device)
        if shapes is not None:  # groups: one net per group in this block; its row blocks are the groups' own
            self.net, self.params, self.grads = actor_net(shapes, self.a, obs_dim, n_actions, hidden, width,
                                                          seed=seed)
            self.blocks, self.parts = [slice(0, self.a)], [self.net]
            self.samplers = [torch.Generator().manual_seed(sampler_seed(seed, i)) for i in agents]
            return
        # Same θ₀ for every agent, whatever the block size: the init draws from one seeded generator (on the host,
        # then moved: the same θ₀ on an XLA device).
        make = lambda rows: RecurrentNet(rows, obs_dim, n_actions, hidden, out_gain=0.01,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed)).to(device)
        self.net = make(self.a)  # all rows: acting, and the backward when there is one block
        self.params, self.grads = flatten_parameters(self.net, self.a)
        self.blocks = row_blocks(self.a, blocks if self.device.type == "cpu" else 1)
        self.parts = [self.net] if len(self.blocks) == 1 else [make(b.stop - b.start) for b in self.blocks]
        if len(self.parts) > 1:
            for part, rows in zip(self.parts, self.blocks):
                share_rows(part, self.net, rows)
        self.samplers = [torch.Generator().manual_seed(sampler_seed(seed, i)) for i in agents]

    def ppo_batch(self, batch: ActorBatch, advantages: torch.Tensor, chunk: int) -> PPOBatch:
        """The rollout as the PPO epochs consume it: chunked sequences and normalised advantages, on the
        parameters' device (one copy per iteration; a no-op on the CPU)."""
        d = self.device
        return PPOBatch(obs=chunk_sequences(batch.obs, chunk).to(d), avail=chunk_sequences(batch.avail, chunk).to(d),
                        actions=chunk_sequences(batch.actions, chunk).to(d),
                        old_logp=chunk_sequences(batch.logp, chunk).to(d),
                        adv=chunk_sequences(normalize_advantages(advantages), chunk).to(d),
                        h0=chunk_start_states(batch.h_before, chunk).to(d), reset=chunk_resets(batch.reset, chunk).to(d))

    def backward(self, b: PPOBatch, *, clip: float, entropy_coef: float, health: bool = False,
                 pool: Executor | None = None) -> dict:
        """The PPO loss of every row on the full batch; leaves ∇Lᵢ(θᵢ) in `grads` (rows are independent).

        Returns per-row statistics [a]; with `health` also PPO's health metrics, approx-KL (k3 estimator) and
        the clipped fraction, which only say something after the policy moved (the trainer asks on the last epoch).
        With several row blocks and a `pool`, the blocks are its tasks (queued behind whatever it already holds).
        """
        self.grads.zero_()
        if len(self.parts) == 1:
            return self._backward(self.net, b, clip, entropy_coef, health)
        args = [(net, b.rows(rows), clip, entropy_coef, health) for net, rows in zip(self.parts, self.blocks)]
        stats = ([f.result() for f in [pool.submit(self._backward, *a) for a in args]] if pool is not None
                 else [self._backward(*a) for a in args])
        return {key: torch.cat([s[key] for s in stats]) for key in stats[0]}

    @staticmethod
    def _backward(net: RecurrentNet, b: PPOBatch, clip: float, entropy_coef: float, health: bool) -> dict:
        logits, _ = net(b.obs, b.h0, b.reset)
        logits = masked_logits(logits, b.avail)
        new_logp = log_prob(logits, b.actions)
        policy_loss = ppo_policy_loss(new_logp, b.old_logp, b.adv, clip)
        ent = entropy(logits, b.avail).mean(dim=(1, 2))
        (policy_loss - entropy_coef * ent).sum().backward()
        stats = {"policy_loss": policy_loss.detach(), "entropy": ent.detach()}
        if health:
            with torch.no_grad():
                log_ratio = new_logp - b.old_logp
                stats["approx_kl"] = (log_ratio.exp() - 1 - log_ratio).mean(dim=(1, 2))
                stats["clip_fraction"] = ((log_ratio.exp() - 1).abs() > clip).float().mean(dim=(1, 2))
        return stats

    def state_dict(self) -> dict:
        """Per-agent rows: parameters and each agent's action sampler."""
        return {"params": self.params.cpu().clone(), "samplers": [g.get_state() for g in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        self.params.copy_(state["params"])
        for gen, s in zip(self.samplers, state["samplers"]):
            gen.set_state(s)
