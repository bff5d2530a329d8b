"""Reward and policy-loss landscapes around the averaged actor θ̄ (paper 5.4, A.4; Li et al. 2018).

    decnode-landscape RUN_DIR [--grid 21] [--span 1.0] [--episodes 8] [--nproc P] [--seed 0]

Directions. r₁, r₂ ~ N(0, I) over the flat actor vector (torch generator seeded by --seed, in that order).
Each is filter-normalised against θ̄: the flat vector is cut at the tensor boundaries of an A=1 RecurrentNet;
in a weight matrix (stored [in, out], so a filter is one output neuron's column = a row of PyTorch's [out, in]
matrix, GRU gates included) each filter is rescaled to the norm of θ̄'s same filter; a bias vector is rescaled
as one tensor. Filters/biases of θ̄ that are exactly zero get a zero direction. Then Gram–Schmidt on the flat
vectors: u₁ = d₁/‖d₁‖, u₂ = (d₂ − (d₂·u₁)u₁)/‖…‖, and each is rescaled back to its filter-normalised length:
d₁ ← ‖d₁‖u₁ (= d₁, still exactly filter-normalised), d₂ ← ‖d₂‖u₂. Both then have length ‖θ̄‖ (the filter norms
add up to it) and are exactly orthogonal; d₂ moves from filter normalisation only by its tiny overlap with d₁
(cosine ~ 1/√D, stored in the npz).

Grid. θ(α, β) = θ̄ + α d₁ + β d₂ for α, β on `grid` evenly spaced points of [−span, span] (the centre, for an odd
grid, is exactly θ̄). At every point, all agents use θ(α, β):
  reward  mean return of `--episodes` deterministic episodes on the train env, with the trainer's evaluation
          seed (so the centre equals the run's own evaluation of θ̄ on those episodes);
  loss    ppo_policy_loss (no entropy term) on ONE fixed batch the size of a training iteration's (B = env.n_envs
          environments × T = env.episode_length steps), played by θ̄ with sampled actions (seed train.seed +
          BATCH_SEED_OFFSET); old log-probs are θ̄'s, recomputed by the same full-sequence forward pass, so
          the ratio is exactly 1 at the centre. Advantages: GAE with the
          run's saved critic (central, or the per-agent local critics) when models.pt holds it together with
          its value normaliser and its input size matches; otherwise discounted returns Σ γ^s r_{t+s} within the
          episode, no bootstrap (npz: advantage_source). Either is normalised per agent as in training
          (normalize_advantages). The loss is the mean over agents.
Grid points are dealt round-robin to the processes and gathered on rank 0, which writes into RUN_DIR
landscape.npz (alphas, betas, reward [i, j] and loss [i, j] at (alphas[i], betas[j]), direction_seed, span,
episodes, eval_seed, batch_seed, advantage_source, cosine_before, norm_d1, norm_d2, norm_theta) and
landscape_reward.png, landscape_loss.png (3-D surfaces), landscape_{reward,loss}_hist.png (histograms), all five
put in place together once written; an existing one is replaced only if decnode wrote it (outputs.py).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..marl.acting import SamplePerAgent, acting_loop
from ..marl.actor import sampler_seed
from .evalmodes import env_factory, eval_seeds, load_models
from ..cli import AnalysisError, OneLineParser, fail, finite
from .outputs import Writer, check_files
from ..comm.transport import Collectives
from ..marl.critic import critic_from_models
from ..marl.evaluate import Evaluator
from ..nn.losses import normalize_advantages, ppo_policy_loss
from ..nn.models import RecurrentNet, flatten_parameters, log_prob, masked_logits

BATCH_SEED_OFFSET = 3_000_017  # the fixed loss batch: disjoint from training and evaluation seeds
BIASES = ("bias", "b_ih", "b_hh")


# ---- directions ----------------------------------------------------------------------------------------------
def filter_slices(obs_dim: int, n_actions: int, hidden: int) -> list[tuple[str, int, tuple[int, ...]]]:
    """(name, offset, per-agent shape) of every actor tensor inside the flat vector, in flatten order."""
    net = RecurrentNet(1, obs_dim, n_actions, hidden)
    out, off = [], 0
    for name, p in net.named_parameters():
        shape = tuple(p.shape[1:])
        out.append((name, off, shape))
        off += math.prod(shape)
    return out


def filter_normalise(direction: torch.Tensor, theta: torch.Tensor, layout) -> torch.Tensor:
    """Li et al.'s filter normalisation of a flat direction against the flat parameters theta."""
    d = direction.clone()
    for name, off, shape in layout:
        size = math.prod(shape)
        dv, tv = d[off: off + size].view(shape), theta[off: off + size].view(shape)
        if name.split(".")[-1] in BIASES:  # a bias is one "filter"
            dv.mul_(tv.norm() / (dv.norm() + 1e-12))
        else:  # [in, out]: column j is output neuron j's filter
            dv.mul_(tv.norm(dim=0, keepdim=True) / (dv.norm(dim=0, keepdim=True) + 1e-12))
    return d


def make_directions(theta: torch.Tensor, layout, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Two orthogonal, filter-normalised directions (float64) and how they were made (see the module doc)."""
    gen = torch.Generator().manual_seed(seed)
    theta = theta.double()
    d1 = filter_normalise(torch.randn(theta.numel(), generator=gen, dtype=torch.float64), theta, layout)
    d2 = filter_normalise(torch.randn(theta.numel(), generator=gen, dtype=torch.float64), theta, layout)
    n1, n2 = d1.norm(), d2.norm()
    u1 = d1 / n1
    cosine = float(d2 @ u1 / n2)
    u2 = d2 - (d2 @ u1) * u1
    u2 = u2 / u2.norm()
    return n1 * u1, n2 * u2, {"cosine_before": cosine, "norm_d1": float(n1), "norm_d2": float(n2),
                              "norm_theta": float(theta.norm())}


def grid_axis(grid: int, span: float) -> np.ndarray:
    half = (grid - 1) / 2
    return span * (np.arange(grid) - half) / half if grid > 1 else np.zeros(1)


# ---- the fixed batch and its loss ----------------------------------------------------------------------------
@dataclass
class LossBatch:
    obs: torch.Tensor  # [n, T, B, od]
    avail: torch.Tensor  # [n, T, B, K] bool
    actions: torch.Tensor  # [n, T, B]
    reset: torch.Tensor  # [T, B]
    adv: torch.Tensor  # [n, T, B] normalised
    old_logp: torch.Tensor  # [n, T, B], θ̄'s
    advantage_source: str


def _net(models: dict, n: int) -> tuple[RecurrentNet, torch.Tensor]:
    net = RecurrentNet(n, models["obs_dim"], models["n_actions"], models["config"]["train"]["hidden"])
    params, _ = flatten_parameters(net, n)
    net.requires_grad_(False)
    return net, params


@torch.no_grad()
def collect_batch(models: dict) -> LossBatch:
    """One rollout of B envs × T steps with θ̄ acting stochastically, plus its normalised advantages."""
    cfg, mean = models["config"], models["actor_mean"].float()
    n = models["actor_rows"].shape[0]
    T, B, tr = cfg["env"]["episode_length"], cfg["env"]["n_envs"], cfg["train"]
    seed = tr["seed"] + BATCH_SEED_OFFSET
    env = env_factory(cfg, n)(B)
    net, params = _net(models, n)
    params.copy_(mean.expand(n, -1))
    sample = SamplePerAgent([torch.Generator().manual_seed(sampler_seed(seed, i)) for i in range(n)])
    od, K = models["obs_dim"], models["n_actions"]
    obs, avail = torch.empty(n, T, B, od), torch.empty(n, T, B, K, dtype=torch.bool)
    actions, resets = torch.empty(n, T, B, dtype=torch.long), torch.empty(T + 1, B, dtype=torch.bool)
    states, rewards = torch.empty(T + 1, B, env.state_dim), torch.empty(T, B, n)
    dones = torch.empty(T, B, dtype=torch.bool)
    for a in acting_loop(net, sample, net.initial_state(B), T, env=env, step=env.reset(seed),
                         reset=torch.ones(B, dtype=torch.bool)):
        t = a.t
        obs[:, t], avail[:, t], actions[:, t] = a.obs, a.avail, a.actions
        states[t], resets[t] = torch.from_numpy(a.before.state), a.reset
        rewards[t], dones[t] = torch.from_numpy(a.after.reward), torch.from_numpy(a.after.done)
    states[T], resets[T] = torch.from_numpy(a.after.state), dones[T - 1]
    adv, source = _advantages(models, states, resets, rewards, dones)
    batch = LossBatch(obs, avail, actions, resets[:T], normalize_advantages(adv), torch.empty(0), source)
    batch.old_logp = _logp(net, params, mean, batch)
    return batch


def _advantages(models, states, resets, rewards, dones) -> tuple[torch.Tensor, str]:
    """[n, T, B] advantages: the saved critic(s) + GAE when models.pt has them with their value normaliser,
    else discounted returns (module doc)."""
    tr = models["config"]["train"]
    critic = critic_from_models(models, states.shape[-1])
    if critic is not None:
        adv = critic.offline_advantages(states, resets, rewards, dones)
        return adv, "gae_local_critics" if critic.per_agent else "gae_central_critic"
    ret, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + tr["gamma"] * running * (~dones[t]).float().unsqueeze(-1)
        ret[t] = running
    return ret.permute(2, 0, 1).contiguous(), "discounted_returns"


def _logp(net: RecurrentNet, params: torch.Tensor, theta: torch.Tensor, batch: LossBatch) -> torch.Tensor:
    n, B = batch.obs.shape[0], batch.obs.shape[2]
    params.copy_(theta.expand(n, -1))
    logits, _ = net(batch.obs, net.initial_state(B), batch.reset)
    return log_prob(masked_logits(logits, batch.avail), batch.actions)


@torch.no_grad()
def policy_loss(net, params, theta: torch.Tensor, batch: LossBatch, clip: float) -> float:
    return ppo_policy_loss(_logp(net, params, theta, batch), batch.old_logp, batch.adv, clip).mean().item()


# ---- the grid ------------------------------------------------------------------------------------------------
def directions_for(models: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    layout = filter_slices(models["obs_dim"], models["n_actions"], models["config"]["train"]["hidden"])
    return make_directions(models["actor_mean"].float(), layout, seed)


def landscape_points(models: dict, points: list[int], grid: int, span: float, episodes: int,
                     directions: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """{"points": [(point index, reward, loss)], "advantage_source"} for this rank's points; point p is
    (α index p // grid, β index p % grid)."""
    cfg = models["config"]
    n = models["actor_rows"].shape[0]
    mean = models["actor_mean"].float()
    d1, d2 = directions
    axis = grid_axis(grid, span)
    # Each rank plays its own grid points' episodes whole: the evaluator's group is this process alone.
    evaluator = Evaluator(Collectives(), env_factory(cfg, n), n_agents=n, episodes=episodes,
                          obs_dim=models["obs_dim"], n_actions=models["n_actions"], hidden=cfg["train"]["hidden"])
    batch = collect_batch(models)
    net, params = _net(models, n)
    eval_seed = eval_seeds(cfg)[0]
    out = []
    for p in points:
        theta = (mean.double() + axis[p // grid] * d1 + axis[p % grid] * d2).float()
        reward = evaluator.run(theta.expand(n, -1), eval_seed)["return"]
        out.append((p, reward, policy_loss(net, params, theta, batch, cfg["train"]["clip"])))
    return {"points": out, "advantage_source": batch.advantage_source}


def compute(run_dir: str, grid: int, span: float, episodes: int, seed: int,
            group: Collectives | None = None) -> dict | None:
    """Every rank of `group` (default: this process alone) calls this; rank 0 returns the assembled landscape
    (and writes it), others None."""
    group = group if group is not None else Collectives()
    models = load_models(run_dir)
    d1, d2, info = directions_for(models, seed)
    mine = list(range(group.rank, grid * grid, group.world))
    parts = group.gather_objects(landscape_points(models, mine, grid, span, episodes, (d1, d2)))
    if group.rank != 0:
        return None
    reward, loss = np.full(grid * grid, np.nan), np.full(grid * grid, np.nan)
    for part in parts:
        for p, r, lo in part["points"]:
            reward[p], loss[p] = r, lo
    cfg = models["config"]
    result = {"alphas": grid_axis(grid, span), "betas": grid_axis(grid, span),
              "reward": reward.reshape(grid, grid), "loss": loss.reshape(grid, grid), "direction_seed": seed,
              "span": span, "episodes": episodes, "eval_seed": eval_seeds(cfg)[0],
              "batch_seed": cfg["train"]["seed"] + BATCH_SEED_OFFSET,
              "advantage_source": parts[0]["advantage_source"], **info}
    save(Path(run_dir), result, models)
    return result


FILES = ("landscape.npz", "landscape_reward.png", "landscape_reward_hist.png", "landscape_loss.png",
         "landscape_loss_hist.png")


def save(run_dir: Path, result: dict, models: dict) -> None:
    """FILES into run_dir, put in place together once all are whole (main() checked they are new or decnode's)."""
    from .plots import plot_landscape, run_label
    label = f"{run_label(models['config'])}, iteration {models.get('iteration')}"
    with Writer(run_dir) as w:
        np.savez(w.path("landscape.npz"), **{k: np.asarray(v) for k, v in result.items()})
        for key, name in (("reward", "average episode reward"), ("loss", "policy loss")):
            plot_landscape(result["alphas"], result["betas"], result[key], name, label,
                           w.path(f"landscape_{key}.png"), w.path(f"landscape_{key}_hist.png"))


def landscape_worker(run_dir: str, grid: int, span: float, episodes: int, seed: int, timeout_s: float) -> None:
    from ..comm.transport import open_collectives

    torch.set_num_threads(1)
    with open_collectives(timeout_s) as group:
        compute(run_dir, grid, span, episodes, seed, group)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog="decnode-landscape", description="Reward and policy-loss landscapes around θ̄.")
    p.add_argument("run_dir", help="run directory holding models.pt")
    p.add_argument("--grid", type=int, default=21, help="points per axis (odd puts θ̄ at the centre; default 21)")
    p.add_argument("--span", type=finite(above=True), default=1.0, help="α, β range [-span, span] (default 1.0)")
    p.add_argument("--episodes", type=int, default=8, help="train-env episodes per grid point (default 8)")
    p.add_argument("--nproc", type=int, default=1, help="processes to share the grid points (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    args = p.parse_args(argv)
    try:
        for name in ("grid", "episodes", "nproc"):
            if getattr(args, name) < 1:
                raise AnalysisError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
        models = load_models(args.run_dir)
        if models.get("groups"):  # its directions are cut at one RecurrentNet's tensor boundaries (filter_slices)
            raise AnalysisError(f"{args.run_dir} was trained with agent groups "
                                f"({', '.join(g['name'] for g in models['groups'])}): decnode-landscape plots one "
                                "network's landscape; decnode-eval evaluates grouped runs")
        check_files([Path(args.run_dir) / name for name in FILES])  # before the work: new, or decnode's own
    except (AnalysisError, ValueError) as err:
        fail("decnode-landscape", str(err))
    run_dir = Path(args.run_dir)
    npz = run_dir / "landscape.npz"
    try:
        if args.nproc == 1:
            result = compute(str(run_dir), args.grid, args.span, args.episodes, args.seed)
        else:
            from ..job.launch import launch
            before = _stamp(npz)  # a previous result must not pass for this one (a new file replaces it)
            payload = (str(run_dir), args.grid, args.span, args.episodes, args.seed,
                       float(models["config"]["run"]["timeout_s"]))
            code = launch(args.nproc, landscape_worker, payload, run_dir, prog="decnode-landscape")
            if code or _stamp(npz) in (None, before):
                sys.exit(code or 1)
            result = dict(np.load(npz))
    except OSError as err:
        fail("decnode-landscape", f"could not write into {run_dir}: {err.strerror or err}")
    c = args.grid // 2
    print(f"reward: centre {result['reward'][c, c]:.3f}, min {np.nanmin(result['reward']):.3f}, "
          f"max {np.nanmax(result['reward']):.3f}; loss: centre {result['loss'][c, c]:.4f}, "
          f"min {np.nanmin(result['loss']):.4f}, max {np.nanmax(result['loss']):.4f}")
    print(f"wrote {run_dir / 'landscape.npz'} and landscape_{{reward,loss}}{{,_hist}}.png")


if __name__ == "__main__":
    main()
