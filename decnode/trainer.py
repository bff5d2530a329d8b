"""The training loop every process runs: act, advantages, PPO epochs combined by the algorithm, evaluate, log.

PS and DecPG share every line here; they differ only in the Combiner (algos.py). One process holding all
agents and many processes holding one each differ only in the Fabric (comm.py).
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import socket
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .actor import ActorBlock
from .algos import LocalSGD, make_combiner
from .comm import Fabric
from .config import Config
from .critic import Critic
from .envs import env_factory, make_env
from .envs.perturb import test_env_wrapper
from .evaluate import EVAL_SEED_OFFSET, TEST_SEED_OFFSET, Evaluator
from .mappo import linear_lr
from .metrics import agent_variance_and_sums
from .rollout import Rollout
from .timing import Section, delta_seconds


class StopRequested:
    """SIGINT/SIGTERM only set a flag; the ranks agree on it at the next iteration boundary and stop together."""

    def __init__(self):
        self.flag, self.signum = False, None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame):
        self.flag, self.signum = True, signum


class Trainer:
    def __init__(self, cfg: Config, fabric: Fabric, run_dir: Path, resume: dict | None = None):
        self.cfg, self.fabric, self.run_dir = cfg, fabric, Path(run_dir)
        self.rec, self.coordinator = fabric.recorder, fabric.rank == 0
        env_cfg, tr = cfg.env, cfg.train
        n, a = fabric.n_agents, fabric.per_process
        self.n, self.T, self.B = n, env_cfg.episode_length, env_cfg.n_envs
        self.env_kwargs = dict(backend=env_cfg.backend, local_ratio=env_cfg.local_ratio,
                               max_cycles=env_cfg.episode_length, reward=env_cfg.reward)
        env = make_env(env_cfg.name, n, self.B, **self.env_kwargs) if self.coordinator else None
        dims = torch.tensor([env.obs_dim, env.state_dim, env.n_actions] if env else [0, 0, 0])
        self.obs_dim, state_dim, self.n_actions = (int(x) for x in fabric.broadcast(dims))
        # MAPPO's agent-specific state: only a per-agent (local) critic can take an agent id as input.
        self.id_dim = n if env_cfg.state_agent_id else 0
        self.state_dim = state_dim + self.id_dim
        self.chunk = tr.chunk_length or self.T

        self.actor = ActorBlock(fabric.agents, self.obs_dim, self.n_actions, tr.hidden, tr.seed)
        self.actor_combiner = make_combiner(cfg.algo.name, fabric, "gossip" if cfg.algo.name == "decpg" else "allreduce")
        if cfg.algo.critic == "central":
            self.critic = Critic(1, self.state_dim, n, tr.hidden, tr.seed, per_row_norm=False) if self.coordinator else None
            self.critic_combiner = LocalSGD(fabric, "critic_sgd")
        else:
            self.critic = Critic(a, self.state_dim, 1, tr.hidden, tr.seed, per_row_norm=True)
            self.critic_combiner = make_combiner(cfg.algo.name, fabric, "gossip_critic" if cfg.algo.name == "decpg"
                                                 else "allreduce_critic")
        self.rollout = Rollout(fabric, self.actor, env, T=self.T, B=self.B, obs_dim=self.obs_dim,
                               state_dim=state_dim, n_actions=self.n_actions, hidden=tr.hidden)
        self.evaluator = Evaluator(fabric, env_factory(env_cfg.name, n, **self.env_kwargs), n_agents=n,
                                   episodes=cfg.eval.episodes, obs_dim=self.obs_dim, n_actions=self.n_actions,
                                   hidden=tr.hidden)
        self.iteration, self.env_steps, self.last_eval = 0, 0, float("nan")
        self.rollout.start(tr.seed)
        if self.critic is not None:
            self.critic.start(self.B)
        if resume is not None:
            self._restore(resume)
        self.stop = StopRequested()

    # ---- one iteration -----------------------------------------------------------------------------------------
    def _states_for_critic(self, coord_states: torch.Tensor | None) -> torch.Tensor | None:
        """[rows, T+1, B, S] input of this rank's critic: the global state (local critics: + one-hot agent id)."""
        if self.critic is None:
            return None
        states = coord_states
        if self.cfg.algo.critic == "local":  # every agent's critic needs the state: one broadcast per iteration
            buf = states if self.coordinator else torch.empty(self.T + 1, self.B, self.state_dim - self.id_dim)
            states = self.fabric.broadcast(buf, name="state_broadcast")
        x = states.unsqueeze(0).expand(self.critic.rows, *states.shape)
        if self.id_dim:
            ids = torch.eye(self.n)[list(self.fabric.agents)]
            x = torch.cat([x, ids[:, None, None, :].expand(self.critic.rows, *states.shape[:2], self.n)], dim=-1)
        return x

    def iterate(self) -> dict:
        cfg, tr, fabric, rec = self.cfg, self.cfg.train, self.fabric, self.rec
        it = self.iteration
        fabric.context = f"iteration {it}"
        lr = linear_lr(it, tr.iterations, tr.lr, tr.min_lr)
        theta_start = self.actor.params.clone()
        batch, coord = self.rollout.collect()

        # Advantages: the central critic (rank 0) sends each agent its own; local critics compute their own.
        with rec.section("critic"):
            states = self._states_for_critic(coord.states if coord is not None else None)
        if cfg.algo.critic == "central":
            if self.coordinator:
                with rec.section("critic"):
                    values, h_before = self.critic.values(states, coord.reset)
                    rewards = coord.rewards.unsqueeze(0)  # [1, T, B, n]: one row, a head per agent
                    adv, returns = self.critic.advantages(values, rewards, coord.dones, tr.gamma, tr.gae_lambda)
                    adv_by_agent = adv[0].permute(2, 0, 1).contiguous()  # [n, T, B]
                critic_reset = coord.reset
            local_adv = torch.empty(self.fabric.per_process, self.T, self.B)
            advantages = fabric.to_agents(adv_by_agent if self.coordinator else None, local_adv,
                                          name=Section.REWARD_SCATTER)
        else:
            rewards = fabric.to_agents(coord.rewards.permute(2, 0, 1).contiguous() if coord is not None else None,
                                       torch.empty(self.fabric.per_process, self.T, self.B),
                                       name=Section.REWARD_SCATTER)
            flags = torch.zeros(2, self.T + 1, self.B)  # dones (T of them) and episode starts (T+1)
            if coord is not None:
                flags[0, : self.T], flags[1] = coord.dones, coord.reset
            flags = fabric.broadcast(flags, name=Section.REWARD_SCATTER)
            dones, reset = flags[0, : self.T] > 0.5, flags[1] > 0.5
            with rec.section("critic"):
                values, h_before = self.critic.values(states, reset)
                adv, returns = self.critic.advantages(values, rewards.unsqueeze(-1), dones, tr.gamma, tr.gae_lambda)
                advantages = adv[..., 0]
            critic_reset = reset

        # PPO epochs. The critic's epoch runs while the actor's gossip/all-reduce is in flight.
        epochs = tr.ppo_epochs
        mix_epochs = set(range(epochs)) if cfg.algo.mix_every == "step" else {epochs - 1}
        critic_losses = []

        def critic_epoch(epoch: int) -> None:
            if self.critic is None:
                return
            with rec.section("critic"):
                critic_losses.append(self.critic.update(
                    states, h_before, critic_reset, values, returns, self.critic_combiner, lr=lr, clip=tr.clip,
                    huber_delta=tr.huber_delta, value_coef=tr.value_coef, max_grad_norm=tr.max_grad_norm,
                    chunk=self.chunk, epoch=epoch, mix=epoch in mix_epochs))

        with rec.section("actor_update"):
            stats = self.actor.update(batch, advantages, self.actor_combiner, lr=lr, epochs=epochs, clip=tr.clip,
                                      entropy_coef=tr.entropy_coef, max_grad_norm=tr.max_grad_norm,
                                      chunk=self.chunk, mix_epochs=mix_epochs, during_comm=critic_epoch)
        self.iteration += 1
        self.env_steps += self.T * self.B
        return self._iteration_stats(stats, theta_start, critic_losses, coord, lr)

    def _iteration_stats(self, stats, theta_start, critic_losses, coord, lr) -> dict:
        """One all-reduce per iteration carries the losses, the noise metrics (paper A.5) and the stop flag.
        Dₘ uses the first epoch's gradient (taken at θₘ); Vₘ the whole iteration's update θₘ₊₁ − θₘ."""
        local_critic = critic_losses[0].sum().item() if (critic_losses and self.cfg.algo.critic == "local") else 0.0
        spread, sums = agent_variance_and_sums(
            self.fabric, {"grad_disagreement": stats["grad"], "update_variance": self.actor.params - theta_start,
                          "consensus_distance": theta_start},
            [stats["policy_loss"].sum().item(), stats["entropy"].sum().item(), stats["grad_norm"].sum().item(),
             local_critic, float(self.stop.flag)])
        n = self.n
        out = {"iteration": self.iteration, "env_steps": self.env_steps, "lr": lr, "policy_loss": sums[0] / n,
               "entropy": sums[1] / n, "grad_norm": sums[2] / n, **spread}
        if self.cfg.algo.critic == "local":
            out["value_loss"] = sums[3] / n
        elif self.coordinator and critic_losses:
            out["value_loss"] = critic_losses[0].mean().item()
        if self.coordinator:
            rets = coord.episode_returns
            out["train_reward"] = float(np.mean(rets)) if rets else None
            if coord.episode_wins:
                out["train_win_rate"] = float(np.mean(coord.episode_wins))
        out["stop"] = sums[4] > 0
        return out

    # ---- evaluation and models ----------------------------------------------------------------------------------
    def average_actor(self) -> torch.Tensor:
        """θ̄ = mean θᵢ over all agents (PS: the shared θ), as rows for every agent [n, D]."""
        mean = self.fabric.allreduce_mean(self.actor.params, name="eval")
        return mean.unsqueeze(0).expand(self.n, -1)

    def evaluate(self) -> dict:
        with self.rec.section("eval"):
            result = self.evaluator.run(self.average_actor(), seed=self.cfg.train.seed + EVAL_SEED_OFFSET)
        self.last_eval = result["return"]
        return result

    def evaluate_train_and_test(self) -> dict:
        """Mode 1 of the paper's A.6 on the train env and on the perturbed test env (obs noise c·std, ε actions)."""
        cfg = self.cfg
        obs_std = torch.zeros(self.obs_dim, dtype=torch.float64)
        if self.coordinator:
            obs_std.copy_(torch.from_numpy(self.rollout.obs_stats.std))
        obs_std = self.fabric.broadcast(obs_std, name="eval")
        seed = cfg.train.seed
        test = Evaluator(self.fabric, env_factory(cfg.env.name, self.n, **self.env_kwargs), n_agents=self.n,
                         episodes=cfg.eval.test_episodes, obs_dim=self.obs_dim, n_actions=self.n_actions,
                         hidden=cfg.train.hidden,
                         wrap=test_env_wrapper(cfg.to_dict(), obs_std.numpy(), seed + TEST_SEED_OFFSET))
        rows = self.average_actor()
        train_result = self.evaluator.run(rows, seed=seed + EVAL_SEED_OFFSET)
        test_result = test.run(rows, seed=seed + TEST_SEED_OFFSET)
        return {"train": train_result, "test": test_result, "gap": test_result["return"] - train_result["return"]}

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def _agent_state(self) -> dict:
        st = {"actor": self.actor.params.clone(), "h": self.rollout.h.clone(),
              "samplers": [g.get_state() for g in self.actor.samplers]}
        if self.cfg.algo.critic == "local":
            st.update(critic=self.critic.params.clone(), critic_h=self.critic.h.clone(),
                      value_norm=self.critic.value_norm.state_dict())
        return st

    def save_checkpoint(self) -> None:
        with self.rec.section("checkpoint"):
            per_rank = self.fabric.gather_objects(self._agent_state())
            if not self.coordinator:
                return
            agents = {key: torch.cat([r[key] for r in per_rank]) for key in ("actor", "h")}
            agents["samplers"] = [s for r in per_rank for s in r["samplers"]]
            if self.cfg.algo.critic == "local":
                norms = [r["value_norm"] for r in per_rank]  # per-agent rows; every row saw the same updates
                agents.update(critic=torch.cat([r["critic"] for r in per_rank]),
                              critic_h=torch.cat([r["critic_h"] for r in per_rank]),
                              value_norm={"running_mean": torch.cat([v["running_mean"] for v in norms]),
                                          "running_mean_sq": torch.cat([v["running_mean_sq"] for v in norms]),
                                          "debiasing_term": norms[0]["debiasing_term"]})
            ro = self.rollout
            state = {"iteration": self.iteration, "env_steps": self.env_steps, "config": self.cfg.to_dict(),
                     "agents": agents, "env": ro.env.get_state(), "step_data": ro.step_data,
                     "next_reset": ro.next_reset.copy(), "last_eval": self.last_eval,
                     "obs_stats": ro.obs_stats.state_dict()}
            if self.cfg.algo.critic == "central":
                state["critic"] = {"params": self.critic.params.clone(), "h": self.critic.h.clone(),
                                   "value_norm": self.critic.value_norm.state_dict()}
            ckpt.atomic_save(state, self.run_dir / ckpt.CHECKPOINT)

    def _restore(self, state: dict) -> None:
        rows = slice(self.fabric.agents.start, self.fabric.agents.stop)
        ag = state["agents"]
        self.actor.params.copy_(ag["actor"][rows])
        self.rollout.h.copy_(ag["h"][rows])
        for gen, s in zip(self.actor.samplers, ag["samplers"][rows]):
            gen.set_state(s)
        if self.cfg.algo.critic == "local":
            self.critic.params.copy_(ag["critic"][rows])
            self.critic.h = ag["critic_h"][rows].clone()
            vn = ag["value_norm"]
            self.critic.value_norm.load_state_dict({"running_mean": vn["running_mean"][rows],
                                                    "running_mean_sq": vn["running_mean_sq"][rows],
                                                    "debiasing_term": vn["debiasing_term"]})
        if self.coordinator:
            ro = self.rollout
            ro.env.set_state(state["env"])
            ro.step_data, ro.next_reset = state["step_data"], state["next_reset"].copy()
            ro.obs_stats.load_state_dict(state["obs_stats"])
            if self.cfg.algo.critic == "central":
                self.critic.params.copy_(state["critic"]["params"])
                self.critic.h = state["critic"]["h"].clone()
                self.critic.value_norm.load_state_dict(state["critic"]["value_norm"])
        self.iteration, self.env_steps = state["iteration"], state["env_steps"]
        self.last_eval = state.get("last_eval", float("nan"))

    def save_models(self) -> None:
        """models.pt: every agent's actor, the averaged actor θ̄, the central critic, the obs std for the test env."""
        rows = self.fabric.gather_rows(self.actor.params)
        central = self.cfg.algo.critic == "central"
        critic_rows = None if central else self.fabric.gather_rows(self.critic.params)
        critic_norms = None
        if not central:  # local critics: per-agent return statistics, gathered like their parameters
            vn = self.critic.value_norm.state_dict()
            stats = self.fabric.gather_rows(torch.stack([vn["running_mean"], vn["running_mean_sq"]], dim=1))
            if self.coordinator:
                critic_norms = {"running_mean": stats[:, 0], "running_mean_sq": stats[:, 1],
                                "debiasing_term": vn["debiasing_term"]}
        if self.coordinator:
            torch.save({"actor_rows": rows, "actor_mean": rows.mean(0), "config": self.cfg.to_dict(),
                        "obs_dim": self.obs_dim, "state_dim": self.state_dim, "n_actions": self.n_actions,
                        "obs_std": self.rollout.obs_stats.std, "iteration": self.iteration,
                        "critic": self.critic.params.clone() if central else critic_rows,
                        "value_norm": self.critic.value_norm.state_dict() if central else critic_norms},
                       self.run_dir / "models.pt")

    def is_eval_iteration(self) -> bool:
        ev = self.cfg.eval.interval
        return self.iteration == self.cfg.train.iterations or (ev > 0 and self.iteration % ev == 0)

    def metrics_line(self, stats: dict, timing: dict) -> str:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in stats.items() if k != "stop"}
        clean["timing"] = timing
        return json.dumps(clean)


def train(cfg: Config, fabric: Fabric, run_dir: Path, resume: dict | None = None) -> dict:
    """Run (or continue) a training job on this process; rank 0 logs. Returns a summary dict."""
    from .logger import RunLogger

    rec, tr = fabric.recorder, cfg.train
    with rec.section("setup"):
        trainer = Trainer(cfg, fabric, run_dir, resume)
    logger = RunLogger(run_dir, tr.iterations, trainer.iteration, cfg.run.tensorboard) if trainer.coordinator else None
    # Which process is which rank: for whoever has to inspect or stop one of them.
    procs = fabric.gather_objects({"rank": fabric.rank, "host": socket.gethostname(), "pid": os.getpid()})
    if logger is not None:
        (Path(run_dir) / "processes.json").write_text(json.dumps(procs, indent=1))
    stopped = False
    while trainer.iteration < tr.iterations:
        before = rec.seconds()
        stats = trainer.iterate()
        if trainer.is_eval_iteration():
            result = trainer.evaluate()
            stats["eval_reward"] = result["return"]
            stats["eval_episodes"] = result["episodes"]
            if trainer.evaluator.has_win:
                stats["eval_win_rate"] = result["win_rate"]
        if logger is not None:
            logger.log(trainer.metrics_line(stats, delta_seconds(rec.seconds(), before)), stats, trainer.last_eval)
        planned = cfg.run.stop_after is not None and trainer.iteration >= cfg.run.stop_after
        if stats["stop"] or planned:  # every rank saw the same flag in the same all-reduce: all stop together
            stopped = True
            break
        if cfg.run.checkpoint_interval and trainer.iteration % cfg.run.checkpoint_interval == 0:
            trainer.save_checkpoint()
    trainer.save_checkpoint()
    trainer.save_models()
    summary = {"iterations": trainer.iteration, "env_steps": trainer.env_steps, "stopped": stopped,
               "signal": trainer.stop.signum,
               "final_eval_reward": trainer.last_eval, "n_agents": trainer.n, "processes": fabric.world}
    if not stopped:  # the paper's headline: the averaged model on the train and the perturbed test env
        with rec.section("eval"):
            summary["generalisation"] = trainer.evaluate_train_and_test()
        if trainer.coordinator:
            (Path(run_dir) / "eval.json").write_text(json.dumps(
                {"run_dir": str(run_dir), "iteration": trainer.iteration, "modes": {"average": summary["generalisation"]}},
                indent=1))
    # Peak resident memory of every process (ru_maxrss is in KiB on Linux): what a job of this size needs.
    reports = fabric.gather_objects((rec.snapshot(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    if logger is not None:
        timing, memory = [r[0] for r in reports], [round(r[1], 1) for r in reports]
        summary["peak_rss_mb"] = memory
        print(logger.finish(timing, summary), flush=True)
        print(f"peak memory per process: rank 0 {memory[0]:.0f} MB, others up to {max(memory[1:], default=0):.0f} MB;"
              f" sum over processes {sum(memory):.0f} MB (an upper bound on the job's peak)", flush=True)
        if "generalisation" in summary:
            g = summary["generalisation"]
            print(f"averaged model, deterministic: train {g['train']['return']:.3f} ({g['train']['episodes']} episodes)"
                  f"  test {g['test']['return']:.3f} ({g['test']['episodes']} episodes)  gap {g['gap']:.3f}", flush=True)
        if stopped:
            print(f"stopped at iteration {trainer.iteration}; continue with --resume {run_dir}", flush=True)
    return summary
