"""The training loop every process runs: act, advantages, PPO epochs combined by the algorithm, evaluate, log.

PS and DecPG share every line here; they differ only in the Combiner (marl/combiners.py). One process holding all
agents and many processes holding one each differ only in the Fabric (comm/fabric.py).
"""

from __future__ import annotations

import gc
import json
import math
import signal
import threading
from pathlib import Path

import torch

from . import checkpoint as ckpt
from ..nn import native
from . import metricsfile, records, report_end
from .rundir import writing
from ..marl.actor import ActorBlock, row_pool
from ..marl.combiners import make_combiner
from ..extensions import combiner, env_groups
from ..comm.api import Fabric
from ..comm.arrival import RealArrival
from ..comm.stale import Staleness
from ..config import Config
from ..marl.critic import make_critic
from ..marl.teams import make_teams
from ..envs import env_factory, make_env
from ..envs.base import agent_spaces
from ..envs.perturb import test_env_wrapper
from ..marl.evaluate import EVAL_SEED_OFFSET, TEST_SEED_OFFSET, Evaluator
from ..nn.losses import linear_lr
from ..net.profile import clock_delta
from ..marl.rollout import Rollout
from ..timing import Section, delta_seconds
from .stats import NonFiniteError, iteration_stats  # noqa: F401 - run.py, launch_xla.py import NonFiniteError here


class StopRequested:
    """SIGINT/SIGTERM only set a flag; the ranks agree on it at the next iteration boundary and stop together."""

    def __init__(self):
        self.flag, self.signum = False, None
        if threading.current_thread() is not threading.main_thread():
            return  # an XLA device thread: only the main thread may handle signals (torch_xla's launcher's)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame):
        self.flag, self.signum = True, signum


class Trainer:
    def __init__(self, cfg: Config, fabric: Fabric, run_dir: Path, resume: dict | None = None):
        self.cfg, self.fabric, self.run_dir = cfg, fabric, Path(run_dir)
        self.rec, self.coordinator = fabric.recorder, fabric.rank == 0
        env_cfg, tr = cfg.env, cfg.train
        n = fabric.n_agents
        self.n, self.T, self.B = n, env_cfg.episode_length, env_cfg.n_envs
        self.env_kwargs = dict(backend=env_cfg.backend, local_ratio=env_cfg.local_ratio,
                               max_cycles=env_cfg.episode_length, reward=env_cfg.reward, env_kwargs=env_cfg.kwargs)
        env = make_env(env_cfg.name, n, self.B, **self.env_kwargs) if self.coordinator else None
        # The env's sizes and every agent's (observation size, action count): only rank 0 has an env.
        dims = torch.zeros(3 + 2 * n, dtype=torch.int64)
        if env is not None:
            dims.copy_(torch.tensor([env.obs_dim, env.state_dim, env.n_actions,
                                     *(x for space in agent_spaces(env) for x in space)]))
        dims = [int(x) for x in fabric.broadcast(dims)]
        self.obs_dim, state_dim, self.n_actions = dims[:3]
        self.teams = make_teams(env_groups(cfg), list(zip(dims[3::2], dims[4::2])), tr.hidden)
        if self.teams.grouped:  # PS averages within each group (comm/api.py group_mean_start)
            fabric.groups = self.teams.groups
        self.chunk = tr.chunk_length or self.T
        self.mix_epochs = (range(tr.ppo_epochs) if cfg.algo.mix_every == "step"  # DecPG: which epochs gossip
                           else range(tr.ppo_epochs - 1, tr.ppo_epochs))

        self.actor_combiner = make_combiner(cfg.algo.name, fabric)
        # Push-sum on a simulated network: the clock decides which messages are mixed (comm/stale.py; τ = 0 waits
        # for all of them, the synchronous mix bit for bit), and metrics.jsonl says how stale they were. Without a
        # profile or in emulate mode, with τ > 0: what has really arrived is mixed (comm/arrival.py).
        if combiner(cfg.algo.name).staleness and fabric.link.clock is not None and fabric.link.emulator is None:
            fabric.stale = Staleness(cfg.algo.staleness, fabric.link.clock)
        elif cfg.algo.staleness and fabric.distributed:
            fabric.arrival = RealArrival(cfg.algo.staleness, emulated=fabric.link.emulator is not None)
        # Gossip rounds are counted per iteration, so a time-varying graph's round is the same on every rank and
        # after a resume; its matrices' gaps are what metrics.jsonl reports for the rounds each iteration ran.
        self.gossips = combiner(cfg.algo.name).gossips
        fabric.rounds_per_iteration = len(self.mix_epochs)
        self.graph_gaps = fabric.graph.gaps() if self.gossips else None
        self.period_gap = fabric.graph.period_gap() if self.gossips else None
        native.gru_ops()  # load (or build) the C++ GRU now: in the first rollout step it would delay iteration 1
        self.critic = make_critic(cfg.algo.critic, fabric, algo=cfg.algo.name, state_dim=state_dim,
                                  agent_id=env_cfg.state_agent_id, seed=tr.seed, T=self.T, B=self.B, hidden=tr.hidden,
                                  chunk=self.chunk, gamma=tr.gamma, lam=tr.gae_lambda, clip=tr.clip,
                                  huber_delta=tr.huber_delta, value_coef=tr.value_coef, max_grad_norm=tr.max_grad_norm)
        # Several agents and c ≥ 2 cores for this process: their PPO backward runs as row blocks on c threads of one
        # intra-op thread each, which keeps every core busy between the GEMMs too (README, "Speed"). A central critic
        # here (rank 0) sends no messages in its epoch: that epoch is one more task, queued first, and the actor gets
        # one block more than threads, so whichever thread takes the critic's epoch takes a smaller share of rows.
        cores, a = torch.get_num_threads(), len(fabric.agents)
        # (groups: each group's net is one row block; row threads split a block of one net)
        threads = min(cores, a) if fabric.device.type == "cpu" and a > 1 and not self.teams.grouped else 1
        self.overlap_critic = threads > 1 and self.critic.net is not None and not self.critic.per_agent
        self.actor = ActorBlock(fabric.agents, self.obs_dim, self.n_actions, tr.hidden, tr.seed, fabric.device,
                                blocks=threads + self.overlap_critic if threads > 1 else 1,
                                shapes=self.teams.shapes(fabric.agents), width=self.teams.width)
        self.row_threads = threads
        per_thread = max(1, cores // threads)
        self.pool = row_pool(threads, per_thread) if threads > 1 else None
        if self.pool is not None:
            torch.set_num_threads(per_thread)
        self.rollout = Rollout(fabric, self.actor, env, T=self.T, B=self.B, obs_dim=self.obs_dim,
                               state_dim=state_dim, n_actions=self.n_actions, hidden=tr.hidden)
        self.evaluator = Evaluator(fabric, env_factory(env_cfg.name, n, **self.env_kwargs), n_agents=n,
                                   episodes=cfg.eval.episodes, obs_dim=self.obs_dim, n_actions=self.n_actions,
                                   hidden=tr.hidden, shapes=self.teams.shapes(range(n)), width=self.teams.width)
        self.iteration, self.env_steps, self.last_eval = 0, 0, float("nan")
        self.saved = None  # the iteration of the last checkpoint on disk: what a failed write leaves intact
        self.last_line = None  # rank 0: the metrics line of the last iteration, kept in the checkpoint
        self.rollout.start(tr.seed)
        if resume is not None:
            self.load_state_dict(resume)
        fabric.sync()  # θ₀ (or the checkpoint's θ) on an XLA device: computed once, not again in iteration 1
        self.stop = StopRequested()

    # ---- one iteration -----------------------------------------------------------------------------------------
    def iterate(self) -> dict:
        tr, rec = self.cfg.train, self.rec
        self.fabric.begin_iteration(self.iteration + 1)  # counted from 1, as metrics.jsonl; fires faults.py
        lr = linear_lr(self.iteration, tr.iterations, tr.lr, tr.min_lr)
        theta_start = self.actor.params.cpu().clone()
        self.fabric.wire.window()  # the iteration's bytes start here: not the evaluation or checkpoint before it

        batch, coord = self.rollout.collect()
        critic_batch = self.critic.prepare(coord)  # this rank's advantages and the critic's training data
        ppo = self.actor.ppo_batch(batch, critic_batch.advantages, self.chunk)

        actor, combiner = self.actor, self.actor_combiner
        for epoch in range(tr.ppo_epochs):  # one full-batch SGD step each
            mix = epoch in self.mix_epochs
            with rec.section(Section.ACTOR_UPDATE):
                combiner.before_backward(actor.params, mix)  # DecPG posts the gossip of θ here...
                # (overlapped: the central critic's epoch inside this section, on the row threads' pool)
                critic = self.pool.submit(self.critic.epoch, critic_batch, lr, mix) if self.overlap_critic else None
                stats = actor.backward(ppo, clip=tr.clip, entropy_coef=tr.entropy_coef,
                                       health=epoch == tr.ppo_epochs - 1, pool=self.pool)
                if critic is not None:
                    critic.result()
                if epoch == 0:  # the noise metrics use the gradient at θₘ
                    first = {**stats, "grad": actor.grads.clone()}
                combiner.after_backward(actor.grads)  # ...and PS the all-reduce of ∇ here
            if critic is None:
                with rec.section(Section.CRITIC):
                    self.critic.epoch(critic_batch, lr, mix)  # while the actor's message is in flight
            with rec.section(Section.ACTOR_STEP):
                combiner.step(actor.params, actor.grads, lr, tr.max_grad_norm)
            self.fabric.sync()  # XLA: one graph per epoch, run by every device together (nothing on the CPU)
        with rec.section(Section.ACTOR_STEP):
            combiner.finish(actor.params)  # bounded staleness: the shares still in flight are waited for and added
            self.critic.finish()

        self.iteration += 1
        self.env_steps += self.T * self.B
        # Host copies of what the statistics read (on the CPU: the same tensors, no copy).
        first, stats = ({key: x.cpu() for key, x in d.items()} for d in (first, stats))
        if critic_batch.losses:  # (the statistics read the first epoch's value loss)
            critic_batch.losses[0] = critic_batch.losses[0].cpu()
        return iteration_stats(self, first, stats, critic_batch, theta_start, actor.params.cpu(), coord, lr)

    # ---- evaluation and models ----------------------------------------------------------------------------------
    def average_actor(self) -> torch.Tensor:
        """θ̄ = mean θᵢ over all agents (PS: the shared θ), as rows for every agent [n, D]; with agent groups, each
        group's mean for its agents."""
        if self.teams.grouped:
            means = self.fabric.group_sums_start(self.actor.params, name=Section.EVAL).wait()
            return means.index_select(0, torch.as_tensor(self.teams.groups.index()))
        mean = self.fabric.to_host(self.fabric.allreduce_mean(self.actor.params, name=Section.EVAL))
        return mean.unsqueeze(0).expand(self.n, -1)

    def evaluate(self) -> dict:
        with self.rec.section(Section.EVAL):
            result = self.evaluator.run(self.average_actor(), seed=self.cfg.train.seed + EVAL_SEED_OFFSET)
        self.last_eval = result["return"]
        return result

    def evaluate_train_and_test(self) -> dict:
        """Mode 1 of the paper's A.6 on the train env and on the perturbed test env (obs noise c·std, ε actions)."""
        cfg = self.cfg
        obs_std = torch.zeros(self.obs_dim, dtype=torch.float64)
        if self.coordinator:
            obs_std.copy_(torch.from_numpy(self.rollout.obs_stats.std))
        obs_std = self.fabric.broadcast(obs_std, name=Section.EVAL)
        seed = cfg.train.seed
        test = Evaluator(self.fabric, env_factory(cfg.env.name, self.n, **self.env_kwargs), n_agents=self.n,
                         episodes=cfg.eval.test_episodes, obs_dim=self.obs_dim, n_actions=self.n_actions,
                         hidden=cfg.train.hidden, shapes=self.teams.shapes(range(self.n)), width=self.teams.width,
                         wrap=test_env_wrapper(cfg.to_dict(), obs_std.numpy(), seed + TEST_SEED_OFFSET))
        rows = self.average_actor()
        train_result = self.evaluator.run(rows, seed=seed + EVAL_SEED_OFFSET)
        test_result = test.run(rows, seed=seed + TEST_SEED_OFFSET)
        return {"train": train_result, "test": test_result, "gap": test_result["return"] - train_result["return"]}

    # ---- checkpoints: the union of the components' state_dicts ----------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint (complete on rank 0): every agent's rows gathered by agent id, so a run may resume on
        another process count, plus rank 0's coordinator state and the counters."""
        rollout, critic = self.rollout.state_dict(), self.critic.state_dict()
        rows = {"actor": self.actor.state_dict(), "rollout": rollout["rows"], "critic": critic["rows"]}
        combining = self.actor_combiner.state_dict()  # push-sum's x and w; nothing for DecPG and PS
        if combining:
            rows["combiner"] = combining
        per_rank = self.fabric.gather_objects(rows)
        if not self.coordinator:
            return {}
        return {"iteration": self.iteration, "env_steps": self.env_steps, "config": self.cfg.to_dict(),
                "last_eval": self.last_eval, "agents": ckpt.cat_rows(per_rank), "metrics_line": self.last_line,
                "coordinator": {"rollout": rollout["coordinator"], "critic": critic["coordinator"]}}

    def load_state_dict(self, state: dict) -> None:
        rows = ckpt.take_rows(state["agents"], self.fabric.agents)
        self.actor.load_state_dict(rows["actor"])
        self.actor_combiner.load_state_dict(rows.get("combiner", {}))
        self.rollout.load_state_dict({"rows": rows["rollout"], "coordinator": state["coordinator"]["rollout"]})
        self.critic.load_state_dict({"rows": rows["critic"], "coordinator": state["coordinator"]["critic"]})
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.saved = state["iteration"]
        self.last_eval = state.get("last_eval", float("nan"))
        self.last_line = state.get("metrics_line")

    def save_checkpoint(self) -> None:
        with self.rec.section(Section.CHECKPOINT):
            state = self.state_dict()
            if self.coordinator:
                with self.writing(f"the checkpoint of iteration {self.iteration}"):
                    metricsfile.sync(self.run_dir)  # its lines on disk first: a checkpoint never outlives them
                    ckpt.atomic_save(state, self.run_dir / ckpt.CHECKPOINT)
                self.saved = self.iteration

    def writing(self, what: str):
        """Around rank 0's writes into the run directory: a full or read-only disk ends the run in one line."""
        return writing(self.run_dir, what, self.saved)

    def save_models(self) -> None:
        """models.pt: every agent's actor, the averaged actor θ̄, the critic(s) with their value normaliser, and
        the observation std for the test env."""
        rows = self.fabric.gather_rows(self.actor.params)
        critic, value_norm = self.critic.saved_params()
        if self.coordinator:
            with self.writing("models.pt"):
                # θ̄: [D]; with agent groups [n, D], each agent's group's mean
                mean = (rows.mean(0) if not self.teams.grouped
                        else self._group_rows(rows))
                ckpt.atomic_save({"actor_rows": rows, "actor_mean": mean, "config": self.cfg.to_dict(),
                                  "obs_dim": self.obs_dim, "state_dim": self.critic.input_dim,
                                  "n_actions": self.n_actions, "obs_std": self.rollout.obs_stats.std,
                                  "groups": self.teams.record() if self.teams.grouped else None,
                                  "width": self.teams.width,
                                  "iteration": self.iteration, "critic": critic, "value_norm": value_norm},
                                 self.run_dir / "models.pt")

    def _group_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every agent's row replaced by its group's mean [n, D]."""
        index = torch.as_tensor(self.teams.groups.index())
        sums = torch.zeros(int(index.max()) + 1, rows.shape[1], dtype=rows.dtype).index_add_(0, index, rows)
        return (sums / torch.bincount(index).to(rows.dtype).unsqueeze(1)).index_select(0, index)

    def is_eval_iteration(self) -> bool:
        ev = self.cfg.eval.interval
        return self.iteration == self.cfg.train.iterations or (ev > 0 and self.iteration % ev == 0)

    def metrics_line(self, stats: dict, timing: dict, extra: dict | None = None) -> str:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items() if k != "stop"}
        clean.update(extra or {})
        clean["timing"] = timing
        return json.dumps(clean)


def train(cfg: Config, fabric: Fabric, run_dir: Path, resume: dict | None = None,
          restarts: list[dict] | None = None) -> dict:
    """Run (or continue) a training job on this process; rank 0 logs. Returns a summary dict. `restarts`: records
    of restarts (restart.py) for rank 0 to put on the first metrics line it writes."""
    from .logger import RunLogger

    with fabric.recorder.section(Section.SETUP):
        trainer = Trainer(cfg, fabric, run_dir, resume)
    oversubscribed = records.processes(trainer, run_dir)
    if trainer.coordinator and trainer.gossips:
        records.topology(trainer, run_dir)
    logger = (RunLogger(run_dir, cfg.train.iterations, trainer.iteration, cfg.run.tensorboard, trainer.writing,
                        trainer.last_line) if trainer.coordinator else None)
    # The heap that setup built (torch, the envs, the nets: ~10^6 objects) is moved out of the collector's sight:
    # otherwise every full collection rescans it, a 60-120 ms pause on this CPU that a rank's simulated clock
    # charges as its compute and its peers then wait for (issue 22: 30 % of a 3-rank job's iteration 2).
    gc.collect()
    gc.freeze()
    start = trainer.iteration
    stopped, sim_total, trace = _loop(trainer, logger, restarts)
    trainer.save_checkpoint()
    trainer.save_models()
    return report_end.finish(trainer, logger, run_dir, start, stopped, sim_total, trace, oversubscribed)


def _loop(trainer: Trainer, logger, restarts: list[dict] | None) -> tuple[bool, dict, object]:
    """The iterations, until train.iterations, a planned stop or a signal: (stopped, this rank's simulated
    seconds by kind, its trace of the first iterations or None)."""
    cfg, fabric, rec = trainer.cfg, trainer.fabric, trainer.rec
    stopped, start = False, trainer.iteration
    clock, sim_total = fabric.link.clock, {}  # simulated seconds of this run's iterations, by kind
    trace = None
    if cfg.run.trace_iterations:  # a timeline of the first iterations (trace.py)
        rec.start_trace()
    while trainer.iteration < cfg.train.iterations:
        before, sim_before = rec.seconds(), clock.snapshot() if clock else None
        stats = trainer.iterate()
        if trainer.is_eval_iteration():
            result = trainer.evaluate()
            stats["eval_reward"] = result["return"]
            stats["eval_episodes"] = result["episodes"]
            if trainer.evaluator.has_win:
                stats["eval_win_rate"] = result["win_rate"]
        if clock is not None:  # the simulated cluster's iteration: every rank's clock joined in the stats all-reduce
            stats["sim"] = clock_delta(clock.snapshot(), sim_before)
            sim_total = {k: sim_total.get(k, 0.0) + v for k, v in stats["sim"].items()}
        if logger is not None:
            extra = {"restarts": restarts} if restarts else {}
            restarts = None  # said once, on the first line after the restart
            line = trainer.metrics_line(stats, delta_seconds(rec.seconds(), before), extra)
            logger.log(line, stats, trainer.last_eval)
            trainer.last_line = line
        if trainer.iteration == start + cfg.run.trace_iterations:
            trace = rec.stop_trace()
        planned = cfg.run.stop_after is not None and trainer.iteration >= cfg.run.stop_after
        if stats["stop"] or planned:  # every rank saw the same flag in the same all-reduce: all stop together
            stopped = True
            break
        if cfg.run.checkpoint_interval and trainer.iteration % cfg.run.checkpoint_interval == 0:
            trainer.save_checkpoint()
    return stopped, sim_total, trace or rec.stop_trace()  # or: a run shorter than the traced stretch
