"""Value functions on the global state, in the two placements the paper and our design card use.

CentralCritic: rank 0 holds ONE critic whose head has a value per agent, so its cost does not grow n-fold; it
               trains with local SGD and rank 0 sends each agent its advantages.
LocalCritics:  every agent holds its own critic (rows of a block) on the global state, combined after each
               step exactly like the actor (the paper's form).

`make_critic` is the one place that chooses (by the placement's entry in CRITICS, decnode/extensions.py). The
trainer and the landscape see only the interface:
    prepare(coord) -> CriticBatch    this rank's advantages [a, T, B] and what the epochs train on
    epoch(batch, lr, mix)            one PPO epoch of the value loss (per-row losses kept in the batch)
    state_dict() / load_state_dict() the critic's part of a checkpoint: `rows` per agent, `coordinator` on rank 0
    offline_advantages(...)          all n agents' advantages in one process, from saved parameters
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .combiners import Combiner, LocalSGD, make_combiner
from ..extensions import critic as critic_entry
from ..registry import load_plugins
from ..nn.losses import ValueNorm, gae, value_loss
from ..timing import Section
from ..nn.models import RecurrentNet, chunk_resets, chunk_sequences, chunk_start_states, flatten_parameters


class ValueNet:
    """A RecurrentNet with `rows` agent rows and `heads` values per state, its flat parameters and its return
    statistics (per row for local critics; pooled for the central one)."""

    def __init__(self, rows: int, state_dim: int, heads: int, hidden: int, seed: int, per_row_norm: bool,
                 fabric=None):
        self.rows, self.heads = rows, heads
        # On an XLA device (local critics with run.device: xla) the parameters, the hidden state and the epochs
        # live on the device; the values come back to the host for GAE and the return statistics.
        self.fabric = fabric
        self.device = fabric.device if fabric is not None else torch.device("cpu")
        self.net = RecurrentNet(rows, state_dim, heads, hidden, out_gain=1.0,
                                generator=torch.Generator().manual_seed(seed + 1)).to(self.device)
        self.params, self.grads = flatten_parameters(self.net, rows)
        self.value_norm = ValueNorm((rows,) if per_row_norm else ())
        self.h = self.net.initial_state(0)

    def start(self, n_envs: int) -> None:
        self.h = self.net.initial_state(n_envs).to(self.device)

    @torch.no_grad()
    def values(self, states: torch.Tensor, reset: torch.Tensor):
        """states [rows, T+1, B, S], reset [T+1, B] -> normalised values [rows, T+1, B, heads] and the hidden
        state entering each of the first T steps (for chunked training). Carries its hidden state on."""
        T = states.shape[1] - 1
        states, reset = states.to(self.device), reset.to(self.device)
        v, hs = self.net(states[:, :T], self.h, reset[:T], return_hiddens=True)
        h_before = torch.cat([self.h.unsqueeze(1), hs[:, :-1]], dim=1)
        self.h = hs[:, -1].clone()
        v_last, _ = self.net.step(states[:, T], self.h, reset[T])
        values = torch.cat([v, v_last.unsqueeze(1)], dim=1)
        if self.device.type == "cpu":
            return values, h_before
        return self.fabric.to_host(values), h_before.cpu()  # (to_host ran the graph: a plain copy)

    def advantages(self, values_norm: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                   gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE in the time-major layout gae() wants; values/rewards are [rows, T(+1), B, heads]."""
        values = self.value_norm.denormalize(values_norm)
        to_time = lambda x: x.permute(1, 2, 0, 3)  # noqa: E731  [rows, T, B, h] -> [T, B, rows, h]
        adv, ret = gae(to_time(rewards), to_time(values), dones, gamma, lam)
        back = lambda x: x.permute(2, 0, 1, 3)  # noqa: E731
        return back(adv), back(ret)

    def state_dict(self) -> dict:
        return {"params": self.params.cpu().clone(), "h": self.h.cpu().clone(),
                "value_norm": self.value_norm.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.params.copy_(state["params"])
        self.h = state["h"].clone().to(self.device)
        self.value_norm.load_state_dict(state["value_norm"])


@dataclass
class CriticBatch:
    """One iteration's critic data. `advantages` [a, T, B] are this rank's agents'; the rest is what the value
    epochs train on (None on ranks without a critic). `losses` collects each epoch's per-row value loss."""

    advantages: torch.Tensor
    chunks: tuple | None = None  # states, start hiddens, resets, old values, normalised returns, all chunked
    explained_variance: torch.Tensor | None = None  # per critic row, of the values before this iteration's update
    losses: list = field(default_factory=list)


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Per row: 1 − Var(returns − values) / Var(returns) (1: perfect, 0: no better than a constant)."""
    dims = tuple(range(1, values.dim()))
    var = returns.var(dim=dims, correction=0)
    return 1 - (returns - values).var(dim=dims, correction=0) / var.clamp(min=1e-12)


class _Placement:
    """What both placements share: the value net, its combiner, turning values into a CriticBatch, the epoch."""

    net: ValueNet | None  # None on ranks that hold no critic
    combiner: Combiner
    total_rows: int  # critic rows in the whole job: the denominator of logged per-row averages
    per_agent: bool  # a row per agent (so a row names an agent)
    input_dim: int  # what the value net reads: the global state (+ agent id)

    def __init__(self, fabric, *, T: int, B: int, hidden: int, chunk: int, gamma: float, lam: float, clip: float,
                 huber_delta: float, value_coef: float, max_grad_norm: float):
        self.fabric, self.T, self.B, self.hidden, self.chunk = fabric, T, B, hidden, chunk
        self.gamma, self.lam, self.clip, self.huber_delta = gamma, lam, clip, huber_delta
        self.value_coef, self.max_grad_norm = value_coef, max_grad_norm

    def _batch(self, advantages, x, reset, dones, rewards) -> CriticBatch:
        """Values, GAE and the chunked training data of one iteration from [rows, T+1, B, S] states."""
        net, c = self.net, self.chunk
        values, h_before = net.values(x, reset)
        adv, returns = net.advantages(values, rewards, dones, self.gamma, self.lam)
        ev = explained_variance(net.value_norm.denormalize(values)[:, :-1], returns)
        net.value_norm.update(returns)  # once per iteration: the batch is the same in every epoch
        chunks = (chunk_sequences(x[:, :-1], c), chunk_start_states(h_before, c), chunk_resets(reset[:-1], c),
                  chunk_sequences(values[:, :-1], c), chunk_sequences(net.value_norm.normalize(returns), c))
        return CriticBatch(advantages(adv), chunks, ev)

    def epoch(self, batch: CriticBatch, lr: float, mix: bool) -> None:
        """One PPO epoch of the value loss on the first T steps; a no-op on ranks without a critic."""
        if self.net is None:
            return
        net, combiner = self.net, self.combiner
        if batch.chunks[0].device != net.device:  # once per iteration: the epochs' data onto the device
            batch.chunks = tuple(x.to(net.device) for x in batch.chunks)
        x, h0, reset, old_v, target = batch.chunks
        combiner.before_backward(net.params, mix)
        net.grads.zero_()
        v, _ = net.net(x, h0, reset)
        loss = value_loss(v, old_v, target, self.clip, self.huber_delta)
        (self.value_coef * loss).sum().backward()
        combiner.after_backward(net.grads)
        combiner.step(net.params, net.grads, lr, self.max_grad_norm)
        batch.losses.append(loss.detach())

    def finish(self) -> None:
        """After the iteration's last epoch: the combiner adds what is still in flight (bounded staleness)."""
        if self.net is not None:
            self.combiner.finish(self.net.params)

    def offline_advantages(self, states, reset, rewards, dones) -> torch.Tensor:
        raise NotImplementedError


class CentralCritic(_Placement):
    total_rows, per_agent = 1, False

    def __init__(self, fabric, state_dim: int, seed: int, algo: str | None = None, agent_id: bool = False, **kw):
        super().__init__(fabric, **kw)  # one critic trained by local SGD, whatever the algorithm; no agent id
        self.input_dim = state_dim
        n = fabric.n_agents
        self.net = ValueNet(1, state_dim, n, self.hidden, seed, per_row_norm=False) if fabric.rank == 0 else None
        self.combiner = LocalSGD(fabric, Section.CRITIC_SGD)
        if self.net is not None:
            self.net.start(self.B)

    def prepare(self, coord) -> CriticBatch:
        """Rank 0 computes every agent's advantages and sends each rank its agents' rows."""
        batch = None
        if self.net is not None:
            with self.fabric.recorder.section(Section.CRITIC):
                batch = self._batch(lambda adv: adv[0].permute(2, 0, 1).contiguous(),  # [n, T, B]
                                    coord.states.unsqueeze(0), coord.reset, coord.dones, coord.rewards.unsqueeze(0))
        local = torch.empty(self.fabric.per_process, self.T, self.B)
        advantages = self.fabric.to_agents(batch.advantages if batch else None, local,
                                           name=Section.REWARD_SCATTER)
        if batch is None:
            return CriticBatch(advantages)
        batch.advantages = advantages
        return batch

    def offline_advantages(self, states, reset, rewards, dones) -> torch.Tensor:
        """states [T+1, B, S], rewards [T, B, n] -> [n, T, B], everything in this process."""
        self.net.start(states.shape[1])
        return self._batch(lambda adv: adv[0].permute(2, 0, 1).contiguous(), states.unsqueeze(0), reset, dones,
                           rewards.unsqueeze(0)).advantages

    def state_dict(self) -> dict:
        return {"rows": {}, "coordinator": self.net.state_dict() if self.net is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        if self.net is not None:
            self.net.load_state_dict(state["coordinator"])

    def saved_params(self):
        """What models.pt stores for this critic (rank 0): its parameters and value normaliser."""
        return (self.net.params.clone(), self.net.value_norm.state_dict()) if self.net is not None else (None, None)


class LocalCritics(_Placement):
    per_agent = True

    def __init__(self, fabric, state_dim: int, seed: int, algo: str, agent_id: bool, **kw):
        super().__init__(fabric, **kw)
        self.n, self.rows = fabric.n_agents, fabric.agents
        self.total_rows = self.n
        # MAPPO's agent-specific state: a per-agent critic may also see a one-hot agent id.
        self.id_dim = self.n if agent_id else 0
        self.input_dim = state_dim + self.id_dim
        self.net = ValueNet(fabric.per_process, self.input_dim, 1, self.hidden, seed, per_row_norm=True, fabric=fabric)
        self.net.start(self.B)
        self.combiner = make_combiner(algo, fabric, critic=True)
        self.state_dim = state_dim

    def _inputs(self, states: torch.Tensor, rows: range) -> torch.Tensor:
        """[rows, T+1, B, S(+n)]: the global state for every row, plus its one-hot agent id."""
        x = states.unsqueeze(0).expand(len(rows), *states.shape)
        if self.id_dim:
            ids = torch.eye(self.n)[list(rows)]
            x = torch.cat([x, ids[:, None, None, :].expand(len(rows), *states.shape[:2], self.n)], dim=-1)
        return x

    def prepare(self, coord) -> CriticBatch:
        """Every agent's critic needs the state (one broadcast per iteration), its own rewards and the flags."""
        fabric, T, B = self.fabric, self.T, self.B
        with fabric.recorder.section(Section.CRITIC):
            buf = coord.states if coord is not None else torch.empty(T + 1, B, self.state_dim)
            states = fabric.broadcast(buf, name=Section.STATE_BROADCAST)
            x = self._inputs(states, self.rows)
        rewards = fabric.to_agents(coord.rewards.permute(2, 0, 1).contiguous() if coord is not None else None,
                                   torch.empty(fabric.per_process, T, B), name=Section.REWARD_SCATTER)
        flags = torch.zeros(2, T + 1, B)  # dones (T of them) and episode starts (T+1)
        if coord is not None:
            flags[0, :T], flags[1] = coord.dones, coord.reset
        flags = fabric.broadcast(flags, name=Section.REWARD_SCATTER)
        dones, reset = flags[0, :T] > 0.5, flags[1] > 0.5
        with fabric.recorder.section(Section.CRITIC):
            return self._batch(lambda adv: adv[..., 0], x, reset, dones, rewards.unsqueeze(-1))

    def offline_advantages(self, states, reset, rewards, dones) -> torch.Tensor:
        """states [T+1, B, S], rewards [T, B, n] -> [n, T, B], every agent's critic in this process."""
        self.net.start(states.shape[1])
        return self._batch(lambda adv: adv[..., 0], self._inputs(states, range(self.n)), reset, dones,
                           rewards.permute(2, 0, 1).unsqueeze(-1)).advantages.contiguous()

    def state_dict(self) -> dict:
        rows, combining = self.net.state_dict(), self.combiner.state_dict()  # push-sum's x and w of the critics
        return {"rows": {**rows, "combiner": combining} if combining else rows, "coordinator": {}}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["rows"])
        self.combiner.load_state_dict(state["rows"].get("combiner", {}))

    def saved_params(self):
        """models.pt: every agent's critic and per-agent return statistics, gathered on rank 0."""
        params = self.fabric.gather_rows(self.net.params)
        vn = self.net.value_norm.state_dict()
        stats = self.fabric.gather_rows(torch.stack([vn["running_mean"], vn["running_mean_sq"]], dim=1))
        if stats is None:
            return None, None
        return params, {"running_mean": stats[:, 0], "running_mean_sq": stats[:, 1],
                        "debiasing_term": vn["debiasing_term"]}


def make_critic(placement: str, fabric, *, algo: str, state_dim: int, agent_id: bool, seed: int, **kw):
    """The one place a critic placement is built (config algo.critic, its entry in CRITICS); an unknown one is a
    ConfigError naming the known ones."""
    cls = critic_entry(placement).load()
    return cls(fabric, state_dim=state_dim, seed=seed, algo=algo, agent_id=agent_id, **kw)


def critic_from_models(models: dict, state_dim: int):
    """The critic(s) saved in a models.pt, as their placement in one process holding every agent; None when the
    file holds no critic or one that reads a different state (state_dim: the environment's global state)."""
    from ..comm.fabric import Fabric

    params, value_norm, cfg = models.get("critic"), models.get("value_norm"), models["config"]
    if params is None or value_norm is None:
        return None
    load_plugins(cfg.get("run", {}).get("plugins"))  # a plugin's algorithm or placement, as in training
    tr, n = cfg["train"], cfg["env"]["n_agents"]
    critic = make_critic(cfg["algo"]["critic"], Fabric(n, 0), algo=cfg["algo"]["name"], state_dim=state_dim,
                         agent_id=cfg["env"].get("state_agent_id", False), seed=tr["seed"], T=cfg["env"]["episode_length"],
                         B=cfg["env"]["n_envs"], hidden=tr["hidden"], chunk=cfg["env"]["episode_length"],
                         gamma=tr["gamma"], lam=tr["gae_lambda"], clip=tr["clip"], huber_delta=tr["huber_delta"],
                         value_coef=tr["value_coef"], max_grad_norm=tr["max_grad_norm"])
    if critic.input_dim != models.get("state_dim") or critic.net.params.shape != params.shape:
        return None
    critic.net.params.copy_(params)
    critic.net.value_norm.load_state_dict(value_norm)
    return critic
