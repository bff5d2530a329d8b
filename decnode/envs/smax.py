"""SMAX (JaxMARL's JAX re-implementation of SMAC) as a `BatchedEnv`: B environments stepped at once.

Only this module (and only inside `SmaxEnv`) imports jax; `smac_reward` works on numpy arrays without it.

Maps and episode limits
    SMAC_EPISODE_LIMITS = {"5m_vs_6m": 70, "10m_vs_11m": 150, "27m_vs_30m": 180, "6h_vs_8z": 150, "2s3z": 120,
    "3s5z": 150, "3s5z_vs_3s6z": 170} (SMAC's own per-map limits, or `episode_limit=` to override). SMAX's
    single max_steps=100 is switched off (max_steps=2**31-1) and the episode is ended here when SMAX's step
    counter reaches the limit, so an episode lasts at most episode_limit steps (the limit is a traced argument:
    changing it never recompiles).
    Any other map -> ValueError.
    The enemy is JaxMARL's `HeuristicEnemySMAX` (not SC2's built-in AI); units, ranges and physics are SMAX's.

Agent groups
    `SmaxEnv.agent_groups[i]` is ally i's unit type (decnode/smac_maps.py UNIT_GROUPS), e.g. 3s5z: 3 x "stalker"
    then 5 x "zealot"; a homogeneous map has one group. Checked against the SMAX scenario when an env is built.
    Every ally has the same observation size and action count whatever its type (SMAX encodes the type as
    one-hot bits in a fixed-size feature vector; also checked when built), so groups differ in behaviour, not in
    shapes.

Action layout (SMAX's, not SMAC's)
    0..3 move, 4 stop, 5.. 5+n_enemies-1 attack enemy j.  n_actions = 5 + n_enemies.
    Action 4 doubles as the no-op (`SmaxEnv.noop_action`): an alive unit may always stop, and a dead ally has
    ONLY action 4 available (SMAX already masks a dead unit's moves/attacks; we enforce it again from
    `unit_alive`, so avail always has >= 1 True per agent). A dead ally's observation is all zeros (SMAX).

Observations / state
    obs[b, i]  = SMAX "unit_list" observation of ally i: 7+6 features for each other ally and each enemy
                 (health frac, relative x/y, last move x/y, last attack, cooldown, unit type bits) + 10 own
                 features (health frac, x, y, cooldown, type bits).   obs_dim = 13*(N-1) + 13*E + 10.
    state[b]   = SMAX `get_world_state`: 10 features per unit (health frac, x, y, cooldown, 6 type bits;
                 zeros for dead units), then the team and type id of every unit.  state_dim = 12*(N+E).

Reward "smac" (default): SMAC's shaped battle reward with reward_only_positive=True and reward_scale=True,
computed from SMAX unit healths (SMAX health points; a zealot's 150 = SMAC's 100 health + 50 shield). Per step,
with h_prev / h the enemies' health before / after the step, alive_prev = h_prev > 0, died = alive_prev & h <= 0:

    delta_enemy  = sum_j [alive_prev_j] * (h_prev_j - max(h_j, 0))      # damage; a dying enemy counts its
                                                                         # whole remaining health h_prev_j
    delta_deaths = reward_death_value * sum_j died_j                     # reward_death_value = 10
    raw          = |delta_enemy + delta_deaths| + reward_win * won       # reward_win = 200
    max_reward   = n_enemies * reward_death_value + reward_win + sum_j max_health_j
    reward       = raw / (max_reward / reward_scale_rate)                # reward_scale_rate = 20

    won = all enemies dead and at least one ally alive (both teams wiped out is a draw, no bonus). Killing
    every enemy and winning therefore returns exactly 20 over an episode; any episode returns <= 20.
    The same team reward goes to every ally, dead or alive: reward[b, :] = reward.
Reward "native": SMAX's own team reward, sum_j (h_prev_j - h_j) / max_health_j / n_enemies + 1.0 * won
    (an episode returns at most 2).

Episodes end (done[b]) on a win, a loss (all allies dead), a draw, or when the step count reaches
episode_limit; the env then resets itself (see base.py): the returned obs/state/avail of env b are the first of
its next episode, info["episode_return"][b] is the finished episode's return (sum over steps of the mean over
agents of the reward), info["episode_length"][b] its length, info["won"][b] whether it was won.
info["alive"] [B, N] bool marks the allies alive in the returned observation (MAPPO's active masks).

Seeding: reset(seed, first_env) gives env b the key fold_in(PRNGKey(seed), first_env + b). Every step splits
that env's own key into (next key, step key, reset key); the reset key starts its next episode if this step ends
one. Nothing else is random, so a run is reproducible from the seed, and get_state()/set_state() (numpy snapshot
of keys, SMAX states, heuristic-enemy states and running returns) resume it exactly.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import numpy as np

from decnode.envs.base import Step
from decnode.envs.jaxcache import persistent_compile_cache
from decnode.smac_maps import EPISODE_LIMITS, agent_groups

SMAC_EPISODE_LIMITS: dict[str, int] = dict(EPISODE_LIMITS)  # the map list lives in decnode/smac_maps.py
SUPPORTED_MAPS = tuple(SMAC_EPISODE_LIMITS)
REWARD_TYPES = ("smac", "native")

REWARD_DEATH_VALUE = 10.0
REWARD_WIN = 200.0
REWARD_SCALE_RATE = 20.0

_SNAPSHOT_VERSION = 1
_NO_LIMIT = 2**31 - 1


def _array_namespace(*arrays):
    """jax.numpy if any argument is a jax array or tracer (jax already imported), else numpy."""
    if "jax" in sys.modules:
        import jax

        if any(isinstance(a, jax.Array) for a in arrays):
            import jax.numpy as jnp

            return jnp
    return np


def smac_reward(
    prev_enemy_health,
    enemy_health,
    enemy_max_health,
    won,
    *,
    reward_death_value: float = REWARD_DEATH_VALUE,
    reward_win: float = REWARD_WIN,
    reward_scale_rate: float = REWARD_SCALE_RATE,
):
    """SMAC's scaled battle reward (reward_only_positive=True) of one step; see the module docstring.

    prev_enemy_health, enemy_health, enemy_max_health: [..., E] enemy health before / after the step and at
    full health (same units, e.g. SMAX's). won: [...] bool, the step ended the battle with a win.
    Returns [...] (numpy or jax, following the inputs). Enemies already dead before the step contribute nothing.
    """
    xp = _array_namespace(prev_enemy_health, enemy_health, enemy_max_health, won)
    prev = xp.asarray(prev_enemy_health)
    cur = xp.asarray(enemy_health)
    max_health = xp.asarray(enemy_max_health)
    alive_prev = prev > 0
    died = alive_prev & (cur <= 0)
    delta_enemy = xp.sum(xp.where(alive_prev, prev - xp.maximum(cur, 0), 0), axis=-1)
    delta_deaths = reward_death_value * xp.sum(died, axis=-1)
    raw = xp.abs(delta_enemy + delta_deaths) + xp.where(xp.asarray(won), reward_win, 0.0)
    n_enemies = prev.shape[-1]
    max_reward = n_enemies * reward_death_value + reward_win + xp.sum(max_health, axis=-1)
    return raw / (max_reward / reward_scale_rate)


@functools.lru_cache(maxsize=None)
def _build(map_name: str, reward: str):
    """Construct the SMAX env and its jitted, vmapped reset/step once per (map, reward), shared by instances:
    another SmaxEnv with the same map and reward does not compile again (the episode limit is a traced
    argument; only a new B retraces, for the new shapes)."""
    # One XLA thread: the coordinator shares the cores with every agent process, and single-threaded
    # reductions keep runs bit-reproducible. Must be set before jax is first imported.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    persistent_compile_cache(jax)
    # SMAX's own time limit is disabled (it is a static attribute and would force one compile per limit);
    # the SMAC limit is enforced below from SMAX's step counter.
    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), max_steps=_NO_LIMIT)
    n_allies, n_enemies = env.num_allies, env.num_enemies
    n_actions = env.num_ally_actions
    noop = env.num_movement_actions - 1  # SMAX's "stop", the only action SMAX leaves to a dead unit
    noop_row = jnp.zeros((n_actions,), dtype=jnp.bool_).at[noop].set(True)
    agents = list(env.agents)
    # One obs_dim and n_actions describe every ally, whatever its unit type: SMAX sizes observations by unit
    # counts (the type is one-hot bits in every unit's features) and actions by 5 + n_enemies. Verified here
    # so that a future SMAX with per-type spaces fails loudly instead of being truncated.
    space_sizes = {(env.observation_spaces[a].shape, env.action_spaces[a].n) for a in agents}
    if space_sizes != {((env.obs_size,), n_actions)}:
        raise RuntimeError(f"SMAX {map_name}: allies' observation/action sizes differ by unit type: {space_sizes}")
    # The allies' unit types, by SMAX's own names (its scenario holds type ids: allies first, then enemies).
    ally_unit_types = tuple(env.unit_type_names[int(t)] for t in np.asarray(env.scenario)[:n_allies])
    trace_count = [0]

    def strong(tree):
        # Drop weak types so that carries restored from numpy hit the same jit cache entry.
        return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)

    def observe(st):
        inner = st.state
        obs_all = env.get_obs(st)
        obs = jnp.stack([obs_all[a] for a in agents]).astype(jnp.float32)
        world = env.get_world_state(st).astype(jnp.float32)
        avail_all = env.get_avail_actions(st)
        avail = jnp.stack([avail_all[a] for a in agents]).astype(jnp.bool_)
        alive = inner.unit_alive[:n_allies]
        avail = jnp.where(alive[:, None], avail, noop_row[None, :])
        return obs, world, avail, alive

    def reset_one(key):
        key, reset_key = jax.random.split(key)
        _, st = env.reset(reset_key)
        carry = strong((key, st, jnp.zeros((), jnp.float32)))
        return carry, observe(st)

    def step_one(carry, actions, episode_limit):
        key, st, ep_ret = carry
        key, step_key, reset_key = jax.random.split(key, 3)
        acts = {a: actions[i] for i, a in enumerate(agents)}
        _, st_next, native_rewards, _, _ = env.step_env(step_key, st, acts)
        inner = st_next.state
        ally_alive = jnp.any(inner.unit_alive[:n_allies])
        enemy_alive = jnp.any(inner.unit_alive[n_allies:])
        won = ~enemy_alive & ally_alive
        ep_len = inner.step
        done = ~ally_alive | ~enemy_alive | (ep_len >= episode_limit) | inner.done
        if reward == "smac":
            team_reward = smac_reward(
                st.state.unit_health[n_allies:],
                inner.unit_health[n_allies:],
                env.unit_type_health[inner.unit_types[n_allies:]],
                won,
            )
            rew = jnp.broadcast_to(team_reward, (n_allies,))
        else:
            rew = jnp.stack([native_rewards[a] for a in agents])
        rew = rew.astype(jnp.float32)
        ep_ret = ep_ret + jnp.mean(rew)
        _, st_reset = env.reset(reset_key)
        st_out = jax.tree.map(lambda r, s: jnp.where(done, r, s), st_reset, st_next)
        new_carry = strong((key, st_out, jnp.where(done, 0.0, ep_ret).astype(jnp.float32)))
        return new_carry, (observe(st_out), rew, done, ep_ret, won, ep_len.astype(jnp.int32))

    def reset_batch(keys):
        trace_count[0] += 1
        return jax.vmap(reset_one)(keys)

    def step_batch(carry, actions, episode_limit):
        trace_count[0] += 1
        return jax.vmap(step_one, in_axes=(0, 0, None))(carry, actions, episode_limit)

    return dict(
        env=env,
        reset=jax.jit(reset_batch),
        step=jax.jit(step_batch),
        n_allies=n_allies,
        n_enemies=n_enemies,
        n_actions=n_actions,
        obs_dim=int(env.obs_size),
        state_dim=int(env.state_size),
        noop=noop,
        ally_unit_types=ally_unit_types,
        trace_count=trace_count,
    )


class SmaxEnv:
    """B SMAX environments (heuristic enemy) stepped together with jax.jit(jax.vmap(...)); see module doc."""

    splittable = False  # each process would compile its own jitted step: evaluated on rank 0 only
    has_win = True

    def __init__(
        self,
        map_name: str,
        n_envs: int,
        reward: str = "smac",
        episode_limit: int | None = None,
        check_actions: bool = True,
    ):
        if map_name not in SMAC_EPISODE_LIMITS:
            raise ValueError(
                f"unknown SMAX map {map_name!r}; supported maps: {', '.join(SUPPORTED_MAPS)}"
            )
        if reward not in REWARD_TYPES:
            raise ValueError(f"unknown reward {reward!r}; expected one of {REWARD_TYPES}")
        if int(n_envs) < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        limit = SMAC_EPISODE_LIMITS[map_name] if episode_limit is None else int(episode_limit)
        if limit < 1:
            raise ValueError(f"episode_limit must be >= 1, got {episode_limit}")
        self.map_name = map_name
        self.n_envs = int(n_envs)
        self.reward_type = reward
        self.episode_limit = limit
        self.check_actions = check_actions
        self._fns = _build(map_name, reward)
        self._limit_arg = np.int32(limit)
        self.n_agents = self._fns["n_allies"]
        self.n_enemies = self._fns["n_enemies"]
        self.obs_dim = self._fns["obs_dim"]
        self.state_dim = self._fns["state_dim"]
        self.n_actions = self._fns["n_actions"]
        self.noop_action = self._fns["noop"]
        self.agent_groups = agent_groups(map_name)  # ally i's unit type, e.g. "stalker"
        if self.agent_groups != self._fns["ally_unit_types"]:
            raise RuntimeError(
                f"decnode/smac_maps.py UNIT_GROUPS[{map_name!r}] gives {self.agent_groups}, but SMAX's scenario "
                f"has allies {self._fns['ally_unit_types']}: fix the table"
            )
        self._carry = None
        self._avail: np.ndarray | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def n_traces(self) -> int:
        """How many times the jitted reset/step of this configuration were traced (i.e. compiled)."""
        return self._fns["trace_count"][0]

    @property
    def _config(self) -> tuple:
        return (self.map_name, self.n_envs, self.episode_limit, self.reward_type)

    @staticmethod
    def _layout(carry) -> tuple:
        """(treedef, [(per-env shape, dtype)]) of a batched carry; independent of B."""
        import jax

        leaves, treedef = jax.tree_util.tree_flatten(carry)
        return treedef, [(tuple(x.shape[1:]), np.dtype(x.dtype)) for x in leaves]

    @staticmethod
    def _np(x) -> np.ndarray:
        return np.array(x)  # a writable host copy

    def _make_step(self, observed, extra=None) -> Step:
        obs, world, avail, alive = observed
        avail = self._np(avail)
        self._avail = avail
        step = Step(obs=self._np(obs), state=self._np(world), avail=avail)
        step.info["alive"] = self._np(alive)
        if extra is not None:
            rew, done, ep_ret, won, ep_len = extra
            step.reward = self._np(rew)
            step.done = self._np(done)
            step.info["episode_return"] = self._np(ep_ret)
            step.info["won"] = self._np(won)
            step.info["episode_length"] = self._np(ep_len)
        return step

    # ------------------------------------------------------------------ BatchedEnv
    def reset(self, seed: int, first_env: int = 0) -> Step:
        import jax

        base = jax.random.PRNGKey(int(seed))
        envs = np.arange(first_env, first_env + self.n_envs, dtype=np.uint32)
        keys = jax.vmap(lambda b: jax.random.fold_in(base, b))(envs)
        self._carry, observed = self._fns["reset"](keys)
        if "carry_layout" not in self._fns:
            self._fns["carry_layout"] = self._layout(self._carry)
        return self._make_step(jax.device_get(observed))

    def step(self, actions: np.ndarray) -> Step:
        import jax

        if self._carry is None:
            raise RuntimeError("call reset(seed) (or set_state) before step()")
        acts = np.asarray(actions)
        if acts.shape != (self.n_envs, self.n_agents):
            raise ValueError(f"actions must have shape {(self.n_envs, self.n_agents)}, got {acts.shape}")
        acts = acts.astype(np.int32)
        if self.check_actions:
            if acts.min() < 0 or acts.max() >= self.n_actions:
                raise ValueError(f"actions must lie in [0, {self.n_actions}), got {acts.min()}..{acts.max()}")
            ok = np.take_along_axis(self._avail, acts[..., None], axis=-1)[..., 0]
            if not ok.all():
                b, i = np.argwhere(~ok)[0]
                raise ValueError(f"env {b} agent {i}: action {acts[b, i]} is not available")
        self._carry, out = self._fns["step"](self._carry, acts, self._limit_arg)
        observed, *extra = jax.device_get(out)
        return self._make_step(observed, extra)

    def get_state(self) -> dict[str, Any]:
        import jax

        if self._carry is None:
            raise RuntimeError("nothing to snapshot: call reset(seed) first")
        leaves = [np.array(x) for x in jax.tree_util.tree_leaves(jax.device_get(self._carry))]
        return {
            "version": _SNAPSHOT_VERSION,
            "config": self._config,
            "leaves": leaves,
            "avail": self._avail.copy(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        import jax

        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported SmaxEnv snapshot version {state.get('version')!r}")
        if tuple(state["config"]) != self._config:
            raise ValueError(f"snapshot of {tuple(state['config'])} cannot restore env {self._config}")
        layout = self._fns.get("carry_layout")
        if layout is None:
            # The carry's pytree structure depends only on the configuration: learn it from an abstract reset.
            carry_shape, _ = jax.eval_shape(self._fns["reset"], jax.ShapeDtypeStruct((1, 2), np.uint32))
            layout = self._fns["carry_layout"] = self._layout(carry_shape)
        treedef, specs = layout
        leaves = state["leaves"]
        if len(leaves) != len(specs):
            raise ValueError("snapshot does not match this env's state layout")
        restored = []
        for x, (shape, dtype) in zip(leaves, specs):
            x = np.asarray(x)
            if x.shape != (self.n_envs, *shape) or x.dtype != dtype:
                raise ValueError(f"snapshot leaf {x.shape}/{x.dtype} does not match {(self.n_envs, *shape)}/{dtype}")
            restored.append(jax.numpy.asarray(x.copy()))
        self._carry = jax.tree_util.tree_unflatten(treedef, restored)
        self._avail = np.array(state["avail"], dtype=bool)
