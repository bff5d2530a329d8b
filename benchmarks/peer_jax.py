"""JAX peer for decnode's speed claim: a jitted MAPPO-RNN on JaxMARL's Simple Spread, one iteration per call.

    python benchmarks/peer_jax.py                          # N=10, per-agent actor weights, 10 timed iterations
    python benchmarks/peer_jax.py --n 10 --weights shared --iterations 6 --json
    python benchmarks/peer_jax.py --weights shared --lr 0.5 --min-lr 0.05 --iterations 200 --curve c.jsonl  # learning

With --curve FILE it trains from θ₀ instead of timing (no warmup): every iteration appends one JSON line
{iteration, lr, train_reward, entropy, seconds}, with decnode's definitions (metrics.jsonl): train_reward is the
rollout's episode return sum_t mean_i r_t^i averaged over the B envs, entropy the policy's mean entropy at the
rollout's parameters (the first PPO epoch), lr falls linearly from --lr to --min-lr as decnode's linear_lr.

benchmarks/iteration.py runs this in a subprocess (so JAX and torch never share a process) and divides decnode's
seconds per iteration by `seconds_per_iteration`; with --json the LAST stdout line is the result as one JSON object.

One call of the jitted `update(runner, lr) -> (runner, metrics)` does the same work as one decnode iteration of
configs/simple_spread.yaml (decpg, central critic):
  * rollout: B=32 envs of jaxmarl "MPE_simple_spread_v3" (N agents, N landmarks, local_ratio 0.5), reset at the
    start of the rollout and run for T=25 steps (one whole episode), discrete actions (5) sampled from the actor;
    the GRU hidden is zeroed at episode starts from the carried done flags (as JaxMARL's MAPPO-RNN baseline).
  * actor: obs (6N) -> 3 x [Linear(64) ReLU] -> GRU(64) -> Linear(64) ReLU -> Linear(5), orthogonal init (gain
    sqrt 2 hidden, 0.01 out, 1 for the GRU), torch nn.GRU equations; logits masked with the avail actions (all ones
    in spread: MPE has no get_avail_actions). `per-agent`: N stacked parameter sets, jax.vmap over the agent axis
    (decnode's bmm); `shared`: one set, agents folded into the batch (parameter sharing).
  * central critic: the global state = all N observations concatenated (6N*N) through the same body -> Linear(N),
    one value per agent; run over the T+1 stored states after the rollout (as decnode does).
  * GAE (0.99, 0.95), per-agent advantage normalisation, then 10 PPO epochs, each ONE full-batch step on the
    B=32 sequences of T=25 from their stored start hiddens: clip 0.2, entropy coef 0 (entropy still computed),
    clipped Huber (delta 10) value loss, plain SGD lr 1e-2, grad-norm clip 10. Actor and critic step once per epoch.
  * value normalisation as on-policy/decnode's ValueNorm (pooled, beta 0.99999), kept in float32 here.
Differences from decnode: a constant lr unless --min-lr is given; episode-end is the T-step cut
(jaxmarl's own done fires one step late, at step max_steps+1, so we never use it); grad clipping is per agent
in `per-agent` mode (each agent clips its own gradient, as decnode's clip_rows_) and global in `shared` mode;
no gossip / communication (the peer is a single process); float32 value statistics (decnode: float64).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def _stdout_to_stderr():
    """fd-level redirect: jaxmarl prints "Importing submoduled environments..." on import, and a module it imports
    rebinds sys.stdout, so contextlib.redirect_stdout does not catch it. Keeps our stdout for the result lines."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


with _stdout_to_stderr():
    import jaxmarl

MASKED_LOGIT = -1e10
# configs/simple_spread.yaml and decnode's defaults (value_coef 1, huber_delta 10, ValueNorm beta)
GAMMA, LAM, CLIP, HUBER_DELTA, MAX_GRAD_NORM = 0.99, 0.95, 0.2, 10.0, 10.0
ENTROPY_COEF, VALUE_COEF, VN_BETA = 0.0, 1.0, 0.99999


# ---------------------------------------------------------------- networks: pure functions on dict parameters
def _dense(key, n_in: int, n_out: int, gain: float) -> dict:
    return {"w": jax.nn.initializers.orthogonal(gain)(key, (n_in, n_out), jnp.float32), "b": jnp.zeros(n_out)}


def init_net(key, n_in: int, n_out: int, hidden: int, out_gain: float) -> dict:
    k = jax.random.split(key, 7)
    g = math.sqrt(2.0)
    orth = jax.nn.initializers.orthogonal(1.0)
    return {"fc1": _dense(k[0], n_in, hidden, g), "fc2": _dense(k[1], hidden, hidden, g),
            "fc3": _dense(k[2], hidden, hidden, g),
            "gru": {"w_ih": orth(k[3], (hidden, 3 * hidden)), "w_hh": orth(k[4], (hidden, 3 * hidden)),
                    "b_ih": jnp.zeros(3 * hidden), "b_hh": jnp.zeros(3 * hidden)},
            "fc4": _dense(k[5], hidden, hidden, g), "out": _dense(k[6], hidden, n_out, out_gain)}


def net_seq(p: dict, x, h0, reset):
    """x [T, *M, in], h0 [*M, H], reset [T, *M'] (broadcastable to *M) -> (out [T, *M, out], hiddens [T, *M, H])."""
    lin = lambda name, y: y @ p[name]["w"] + p[name]["b"]  # noqa: E731
    y = jax.nn.relu(lin("fc3", jax.nn.relu(lin("fc2", jax.nn.relu(lin("fc1", x))))))
    g = p["gru"]
    gi = y @ g["w_ih"] + g["b_ih"]  # input projections do not depend on h: one matmul for all T steps

    def cell(h, inp):
        gi_t, reset_t = inp
        h = jnp.where(reset_t[..., None], 0.0, h)  # an episode starts at this step
        gh = h @ g["w_hh"] + g["b_hh"]
        i_r, i_z, i_n = jnp.split(gi_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r, z = jax.nn.sigmoid(i_r + h_r), jax.nn.sigmoid(i_z + h_z)
        h = (1.0 - z) * jnp.tanh(i_n + r * h_n) + z * h  # b_hn inside the reset product, as nn.GRU
        return h, h

    _, hs = jax.lax.scan(cell, h0, (gi, reset))
    return lin("out", jax.nn.relu(lin("fc4", hs))), hs


def actor_apply(params: dict, obs, h0, reset, per_agent: bool):
    """obs [T, N, B, in], h0 [N, B, H], reset [T, B] -> (logits [T, N, B, K], hiddens [T, N, B, H])."""
    if per_agent:  # each agent its own parameters: vmap over the stacked leading axis = batched matmuls
        return jax.vmap(net_seq, in_axes=(0, 1, 0, None), out_axes=1)(params, obs, h0, reset)
    return net_seq(params, obs, h0, reset[:, None, :])  # shared: agents are just more batch


# ---------------------------------------------------------------- losses and helpers
def huber(e, delta: float):
    a = jnp.abs(e)
    return jnp.where(a <= delta, 0.5 * e**2, delta * (a - 0.5 * delta))


def vn_stats(vn):
    """Debiased (mean, std) of the pooled value normaliser state [mean, mean_sq, debias]."""
    d = jnp.maximum(vn[2], 1e-5)
    mean = vn[0] / d
    return mean, jnp.sqrt(jnp.maximum(vn[1] / d - mean**2, 1e-2))


def clip_sgd(params: dict, grads: dict, lr: float, lead: int):
    """Clip grad norm to MAX_GRAD_NORM (per agent row if lead=1, whole tree if lead=0) then p <- p - lr g."""
    leaves = jax.tree_util.tree_leaves(grads)
    norm = jnp.sqrt(sum(jnp.sum(g**2, axis=tuple(range(lead, g.ndim))) for g in leaves))
    scale = jnp.minimum(1.0, MAX_GRAD_NORM / (norm + 1e-6))
    step = lambda p, g: p - lr * g * scale.reshape(scale.shape + (1,) * (g.ndim - scale.ndim))  # noqa: E731
    return jax.tree_util.tree_map(step, params, grads), norm


class Runner(NamedTuple):
    actor: dict
    critic: dict
    vn: jax.Array  # value normaliser: running mean, mean of squares, debiasing term
    h_actor: jax.Array  # [N, B, H] carried between rollouts (zeroed where last_done)
    h_critic: jax.Array  # [B, H]
    last_done: jax.Array  # [B] bool
    key: jax.Array


def make_env(n: int, episode_length: int):
    return jaxmarl.make("MPE_simple_spread_v3", num_agents=n, num_landmarks=n, local_ratio=0.5,
                        max_steps=episode_length)


def linear_lr(iteration: int, total_iterations: int, lr: float, min_lr: float) -> float:
    """decnode's schedule (decnode/nn/losses.py): lr at iteration 0, min_lr at iteration total_iterations - 1."""
    if total_iterations <= 1:
        return lr
    return lr + (min_lr - lr) * min(max(iteration, 0), total_iterations - 1) / (total_iterations - 1)


def build(env, n_envs: int, episode_length: int, ppo_epochs: int, hidden: int, weights: str, seed: int):
    """(update, initial Runner) for one configuration; update(runner, lr) is pure and ready for jax.jit (lr is an
    argument, so a schedule does not recompile)."""
    if weights not in ("shared", "per-agent"):
        raise ValueError(f"weights must be shared or per-agent, got {weights!r}")
    per_agent = weights == "per-agent"
    N, B, T, agents = env.num_agents, n_envs, episode_length, env.agents
    obs_dim = env.observation_space(agents[0]).shape[0]
    K = env.action_space(agents[0]).n
    avail = jnp.ones((N, B, K), bool)  # MPE spread: every action is always available

    key, k_actor, k_critic = jax.random.split(jax.random.PRNGKey(seed), 3)
    actor = init_net(k_actor, obs_dim, K, hidden, 0.01)
    if per_agent:  # same theta_0 for every agent, as decnode (rows copied from agent 0's init)
        actor = jax.tree_util.tree_map(lambda x: jnp.array(jnp.broadcast_to(x, (N,) + x.shape)), actor)
    critic = init_net(k_critic, N * obs_dim, N, hidden, 1.0)
    runner = Runner(actor, critic, jnp.zeros(3), jnp.zeros((N, B, hidden)), jnp.zeros((B, hidden)),
                    jnp.ones(B, bool), key)

    stack = lambda d: jnp.stack([d[a] for a in agents])  # noqa: E731  dict of [B, ...] -> [N, B, ...]
    masked = lambda logits: jnp.where(avail, logits, MASKED_LOGIT)  # noqa: E731

    def update(r: Runner, lr):
        key, k_reset, k_roll = jax.random.split(r.key, 3)
        obs_d, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, B))

        def env_step(carry, t):
            env_state, obs, h, reset, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            logits, hs = actor_apply(r.actor, obs[None], h, reset[None], per_agent)
            logits = masked(logits[0])
            action = jax.random.categorical(k_act, logits)  # [N, B]
            logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], -1)[..., 0]
            obs_d, env_state, rew_d, done_d, _ = jax.vmap(env.step_env)(
                jax.random.split(k_env, B), env_state, {a: action[i] for i, a in enumerate(agents)})
            done = done_d["__all__"] | (t == T - 1)  # the episode is the T-step rollout (see docstring)
            out = (obs, reset, action, logp, stack(rew_d).T, done)
            return (env_state, stack(obs_d), hs[0], done, key), out

        h0_actor = r.h_actor
        carry0 = (env_state, stack(obs_d), h0_actor, r.last_done, k_roll)
        (_, obs_last, h_actor, last_done, _), traj = jax.lax.scan(env_step, carry0, jnp.arange(T))
        obs, reset, action, old_logp, rew, done = traj  # [T,N,B,in] [T,B] [T,N,B] [T,N,B] [T,B,N] [T,B]

        # critic on the T+1 global states (concatenated observations), then GAE on de-normalised values
        all_obs = jnp.concatenate([obs, obs_last[None]])
        states = all_obs.transpose(0, 2, 1, 3).reshape(T + 1, B, N * obs_dim)
        c_reset = jnp.concatenate([reset, done[-1:]])
        v_norm, c_hs = net_seq(r.critic, states, r.h_critic, c_reset)  # [T+1, B, N]
        mean, std = vn_stats(r.vn)
        values = v_norm * std + mean

        def gae_step(last, inp):
            rw, v, v_next, d = inp
            nonterminal = 1.0 - d[:, None].astype(jnp.float32)
            delta = rw + GAMMA * v_next * nonterminal - v
            last = delta + GAMMA * LAM * nonterminal * last
            return last, last

        _, adv = jax.lax.scan(gae_step, jnp.zeros((B, N)), (rew, values[:-1], values[1:], done), reverse=True)
        returns = adv + values[:-1]
        w = VN_BETA  # value normaliser update, once per iteration (the batch is the same in every epoch)
        vn = jnp.stack([r.vn[0] * w + returns.mean() * (1 - w), r.vn[1] * w + (returns**2).mean() * (1 - w),
                        r.vn[2] * w + (1 - w)])
        mean, std = vn_stats(vn)
        targets = (returns - mean) / std
        old_v = v_norm[:-1]
        adv = (adv - adv.mean((0, 1))) / (adv.std((0, 1)) + 1e-5)  # per agent, population std
        adv = adv.transpose(0, 2, 1)  # [T, N, B] like the actor's outputs

        def actor_loss(params):
            logits, _ = actor_apply(params, obs, h0_actor, reset, per_agent)
            logp_all = jax.nn.log_softmax(masked(logits))
            new_logp = jnp.take_along_axis(logp_all, action[..., None], -1)[..., 0]
            log_ratio = new_logp - old_logp
            ratio = jnp.exp(log_ratio)
            per = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - CLIP, 1 + CLIP) * adv)
            policy_loss = per.mean((0, 2))  # [N]: each agent's own PPO loss
            ent = -(jnp.exp(logp_all) * logp_all).sum(-1).mean((0, 2))
            loss = policy_loss - ENTROPY_COEF * ent
            # per-agent: grad of the sum = each agent's own gradient; shared: mean of agents' losses (decnode PS)
            total = loss.sum() if per_agent else loss.mean()
            kl = (ratio - 1 - log_ratio).mean()
            return total, (policy_loss.mean(), ent.mean(), kl)

        def critic_loss(params):
            v, _ = net_seq(params, states[:-1], r.h_critic, c_reset[:-1])
            clipped = old_v + jnp.clip(v - old_v, -CLIP, CLIP)
            loss = jnp.maximum(huber(targets - clipped, HUBER_DELTA), huber(targets - v, HUBER_DELTA))
            return VALUE_COEF * loss.mean()

        def epoch(carry, _):
            a, c = carry
            (_, (pl, ent, kl)), ga = jax.value_and_grad(actor_loss, has_aux=True)(a)
            vl, gc = jax.value_and_grad(critic_loss)(c)
            a, a_norm = clip_sgd(a, ga, lr, 1 if per_agent else 0)
            c, c_norm = clip_sgd(c, gc, lr, 0)
            return (a, c), {"policy_loss": pl, "value_loss": vl, "entropy": ent, "approx_kl": kl,
                            "actor_grad_norm": a_norm.mean(), "critic_grad_norm": c_norm}

        (actor_new, critic_new), per_epoch = jax.lax.scan(epoch, (r.actor, r.critic), None, length=ppo_epochs)
        metrics = {k: v[-1] for k, v in per_epoch.items()}
        metrics["entropy_first"] = per_epoch["entropy"][0]  # at the rollout's θ, as decnode logs `entropy`
        metrics["mean_return"] = rew.mean(2).sum(0).mean()  # episode return: sum_t mean_i r, mean over envs
        new = Runner(actor_new, critic_new, vn, h_actor, c_hs[T - 1], last_done, key)
        return new, metrics

    return update, runner


def measure(n: int = 10, n_envs: int = 32, episode_length: int = 25, ppo_epochs: int = 10, hidden: int = 64,
            weights: str = "per-agent", iterations: int = 10, warmup: int = 2, seed: int = 0, lr: float = 1e-2) -> dict:
    """Compile, run the compile call + `warmup` untimed iterations, then time `iterations` iterations."""
    env = make_env(n, episode_length)
    update, runner = build(env, n_envs, episode_length, ppo_epochs, hidden, weights, seed)
    lr_arg = jnp.float32(lr)
    t0 = time.perf_counter()
    step = jax.jit(update, donate_argnums=0).lower(runner, lr_arg).compile()
    compile_s = time.perf_counter() - t0
    runner, m = jax.block_until_ready(step(runner, lr_arg))  # first call: excluded from timing
    first = float(m["mean_return"])
    for _ in range(warmup):
        runner, m = jax.block_until_ready(step(runner, lr_arg))
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        runner, m = jax.block_until_ready(step(runner, lr_arg))
        times.append(time.perf_counter() - t0)
    last = {k: float(v) for k, v in m.items()}
    return {"seconds_per_iteration": statistics.median(times) if times else float("nan"),
            "compile_seconds": compile_s, "iterations": iterations, "warmup": warmup, "n": n, "n_envs": n_envs,
            "episode_length": episode_length, "ppo_epochs": ppo_epochs, "hidden": hidden, "weights": weights,
            "lr": lr, "seconds": times, "jax_version": jax.__version__, "devices": str(jax.devices()),
            "mean_return_first": first, "mean_return_last": last["mean_return"], "last_metrics": last}


def learn(curve_path: str, n: int = 10, n_envs: int = 32, episode_length: int = 25, ppo_epochs: int = 10,
          hidden: int = 64, weights: str = "shared", iterations: int = 200, seed: int = 0, lr: float = 0.5,
          min_lr: float | None = None) -> dict:
    """Train `iterations` iterations from θ₀ (the first one included), appending each one's line to curve_path."""
    min_lr = lr if min_lr is None else min_lr
    env = make_env(n, episode_length)
    update, runner = build(env, n_envs, episode_length, ppo_epochs, hidden, weights, seed)
    t0 = time.perf_counter()
    step = jax.jit(update, donate_argnums=0).lower(runner, jnp.float32(lr)).compile()
    compile_s, start = time.perf_counter() - t0, time.perf_counter()
    with open(curve_path, "w") as f:
        for it in range(iterations):
            lr_it = linear_lr(it, iterations, lr, min_lr)
            t0 = time.perf_counter()
            runner, m = jax.block_until_ready(step(runner, jnp.float32(lr_it)))
            line = {"iteration": it + 1, "lr": lr_it, "train_reward": float(m["mean_return"]),
                    "entropy": float(m["entropy_first"]), "seconds": time.perf_counter() - t0}
            f.write(json.dumps(line) + "\n")
            f.flush()
    return {"curve": curve_path, "iterations": iterations, "seconds": time.perf_counter() - start,
            "compile_seconds": compile_s, "final_train_reward": line["train_reward"], "final_entropy": line["entropy"],
            "n": n, "weights": weights, "lr": lr, "min_lr": min_lr, "seed": seed, "jax_version": jax.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="agents (and landmarks)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (after compile + warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--weights", choices=("per-agent", "shared"), default="per-agent")
    parser.add_argument("--n-envs", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2, help="SGD lr (the work does not depend on it)")
    parser.add_argument("--min-lr", type=float, default=None, help="with --curve: lr falls linearly to this")
    parser.add_argument("--curve", metavar="FILE", help="train from θ₀ and log every iteration here (no timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result dict as the last stdout line")
    args = parser.parse_args()
    if args.curve:
        r = learn(args.curve, n=args.n, n_envs=args.n_envs, weights=args.weights, iterations=args.iterations,
                  seed=args.seed, lr=args.lr, min_lr=args.min_lr)
        line = (f"JAX peer N={r['n']} {r['weights']} lr {r['lr']} -> {r['min_lr']}: {r['iterations']} iterations in "
                f"{r['seconds']:.1f} s, final return {r['final_train_reward']:.2f} entropy {r['final_entropy']:.3f}")
    else:
        r = measure(n=args.n, n_envs=args.n_envs, weights=args.weights, iterations=args.iterations,
                    warmup=args.warmup, seed=args.seed, lr=args.lr)
        line = (f"JAX peer N={r['n']} {r['weights']}: {r['seconds_per_iteration']:.3f} s/it (compile "
                f"{r['compile_seconds']:.1f} s)  return {r['mean_return_first']:.2f} -> {r['mean_return_last']:.2f}")
    print(line, flush=True)
    if args.json:
        print(json.dumps(r), flush=True)

if __name__ == "__main__":
    main()
