"""Training over real processes equals the single-process reference; PS replicas stay identical."""

import json

import pytest
import torch

from decnode.config import load, resolve
from decnode.job.run import DEFAULT_CONFIG
from multiproc import run_ranks

N = 3
CASES = [("decpg", "central"), ("decpg", "local"), ("ps", "central"), ("ps", "local")]


def small_config(algo: str, critic: str, n_procs: int, out: str, iterations: int = 2):
    cfg = load(DEFAULT_CONFIG, [f"algo.name={algo}", "algo.k=1", f"algo.critic={critic}",
                                f"train.iterations={iterations}", "env.n_envs=8", "eval.interval=0",
                                "eval.episodes=4", "run.tensorboard=false", "run.checkpoint_interval=0",
                                f"run.out={out}", f"env.n_agents={N}"])
    return resolve(cfg, n_procs)


def _train_cases(root: str, n_procs: int, threads: int = 1):
    """Every case in one process group (spawning is the slow part); rank 0 returns each case's models.pt.
    threads = 2 in one process: the actors' backward runs as two row blocks in two threads (actor.py)."""
    from pathlib import Path

    from decnode.comm.fabric import Fabric, open_fabric
    from decnode.job.trainer import train

    results = {}
    with open_fabric(N, 1, timeout_s=120) as fabric:
        for algo, critic in CASES:
            torch.set_num_threads(threads)  # (the trainer lowers it to one per row thread)
            cfg = small_config(algo, critic, n_procs, f"{root}/{algo}-{critic}-{n_procs}-{threads}")
            run_dir = Path(cfg.run.out)
            run_dir.mkdir(parents=True, exist_ok=True)
            case_fabric = Fabric(N, 1, fabric.rank, fabric.world, 120)  # fresh buffers and timings
            train(cfg, case_fabric, run_dir)
            if fabric.rank == 0:  # rank 0 times every kind of section (it also steps the environments)
                results[(algo, critic)] = torch.load(run_dir / "models.pt", weights_only=False)
                results[(algo, critic)]["sections"] = set(case_fabric.recorder.tallies)
                processes = json.loads((run_dir / "processes.json").read_text())
                results[(algo, critic)]["row_threads"] = processes[0]["row_threads"]
    return results


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("equiv"))
    distributed = run_ranks(_train_cases, N, root, N, timeout=400)[0]
    single = _train_cases(root, 1)
    rows = _train_cases(root, 1, threads=2)
    return distributed, single, rows


@pytest.mark.parametrize("algo,critic", CASES)
def test_three_processes_equal_one_process_holding_three_agents(trained, algo, critic):
    distributed, single, _ = trained
    dist_run, single_run = distributed[(algo, critic)], single[(algo, critic)]
    torch.testing.assert_close(dist_run["actor_rows"], single_run["actor_rows"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dist_run["critic"], single_run["critic"], atol=1e-5, rtol=0)
    # the run really moved the parameters (otherwise equality would prove nothing)
    from decnode.marl.actor import ActorBlock
    start = ActorBlock(range(N), dist_run["obs_dim"], dist_run["n_actions"], 64, seed=1).params
    assert (dist_run["actor_rows"] - start).abs().max() > 1e-4


@pytest.mark.parametrize("algo,critic", CASES)
def test_one_process_with_two_row_threads_equals_three_processes(trained, algo, critic):
    """Two threads share the critic's epoch and the actor's rows, one row per block: every row as the processes
    computed it."""
    distributed, single, rows = trained
    assert rows[(algo, critic)]["row_threads"] == 2 and single[(algo, critic)]["row_threads"] == 1
    torch.testing.assert_close(rows[(algo, critic)]["actor_rows"], distributed[(algo, critic)]["actor_rows"],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(rows[(algo, critic)]["critic"], distributed[(algo, critic)]["critic"], atol=1e-5, rtol=0)
    if algo == "ps":
        assert all(torch.equal(rows[(algo, critic)]["actor_rows"][0], r) for r in rows[(algo, critic)]["actor_rows"])


def test_row_threads_compute_the_same_gradients(measured):
    """The same rollout through one block and through row blocks in threads: equal gradients and statistics.

    Every block runs each row's ops on that row's own shapes, so a row's arithmetic does not depend on its block;
    only the math library may block a batched GEMM differently for another row count. What is guaranteed is
    therefore equality to float32 rounding; bit-identity holds where the library rounds every shape alike (the
    measured line says which it was here)."""
    from decnode.marl.actor import ActorBlock, PPOBatch, row_pool

    a, T, M, obs, K = 5, 6, 4, 7, 3
    g = torch.Generator().manual_seed(5)
    batch = PPOBatch(obs=torch.randn(a, T, M, obs, generator=g), avail=torch.rand(a, T, M, K, generator=g) > 0.2,
                     actions=torch.randint(0, K, (a, T, M), generator=g), old_logp=-torch.rand(a, T, M, generator=g),
                     adv=torch.randn(a, T, M, generator=g), h0=torch.randn(a, M, 64, generator=g),
                     reset=torch.rand(T, M, generator=g) < 0.2)
    batch.avail[..., 0] = True
    batch.actions[~batch.avail.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)] = 0
    results = []
    pool = row_pool(2, 1)  # as the trainer runs row threads: one intra-op thread each
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for blocks in (1, 2, 3):
        actor = ActorBlock(range(a), obs, K, 64, seed=3, blocks=blocks)
        assert len(actor.parts) == blocks
        with torch.no_grad():  # rows that differ, as after some DecPG steps
            actor.params.add_(0.05 * torch.randn(actor.params.shape, generator=torch.Generator().manual_seed(9)))
        stats = actor.backward(batch, clip=0.2, entropy_coef=0.01, health=True, pool=pool)
        results.append((actor.grads.clone(), stats))
    torch.set_num_threads(threads)
    ref_grads, ref_stats = results[0]
    assert ref_grads.abs().sum() > 0
    for grads, stats in results[1:]:
        # a lost, doubled or misplaced row differs by the gradient's own size; rounding by ~1e-7 of it
        torch.testing.assert_close(grads, ref_grads, rtol=1e-5, atol=1e-6 * ref_grads.abs().max().item())
        for k in stats:
            torch.testing.assert_close(stats[k], ref_stats[k], rtol=1e-5, atol=1e-6)
    bitwise = all(torch.equal(g, ref_grads) and all(torch.equal(st[k], ref_stats[k]) for k in st)
                  for g, st in results[1:])
    measured(f"1, 2 and 3 row blocks: gradients {'bit-identical' if bitwise else 'equal to float32 rounding'}")


@pytest.mark.parametrize("critic", ["central", "local"])
def test_ps_replicas_bit_identical_decpg_replicas_differ(trained, critic):
    distributed, single, _ = trained
    ps = distributed[("ps", critic)]["actor_rows"]
    assert all(torch.equal(ps[0], row) for row in ps), "PS replicas drifted apart"
    dec = distributed[("decpg", critic)]["actor_rows"]
    assert (dec[0] - dec[1]).abs().max() > 1e-6, "DecPG replicas should differ (k=1 mixes partially)"
    torch.testing.assert_close(dec.mean(0), single[("decpg", critic)]["actor_rows"].mean(0), atol=1e-5, rtol=0)


def _train_until_nonfinite(root: str):
    """A run whose lr schedule blows up after its first iterations (lr 1e-2 -> 1e30 over 4 iterations; min_lr is
    set after validation, which rightly refuses such a schedule). Returns (error message, checkpoint iteration)."""
    from pathlib import Path

    from decnode.job import checkpoint as ckpt
    from decnode.comm.fabric import Fabric, open_fabric
    from decnode.job.trainer import NonFiniteError, train

    torch.set_num_threads(1)
    cfg = small_config("decpg", "local", N, f"{root}/nan", iterations=4)
    cfg.train.min_lr, cfg.run.checkpoint_interval = 1e30, 1
    run_dir = Path(cfg.run.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open_fabric(N, 1, timeout_s=60) as fabric:
        try:
            train(cfg, Fabric(N, 1, fabric.rank, fabric.world, 60), run_dir)
            message = None
        except NonFiniteError as err:
            message = str(err)
    return message, ckpt.load(run_dir)["iteration"]


def test_a_nonfinite_update_stops_every_rank_and_keeps_the_last_good_checkpoint(tmp_path):
    results = run_ranks(_train_until_nonfinite, N, str(tmp_path), timeout=200)
    messages = {message for message, _ in results}
    assert len(messages) == 1 and None not in messages, messages  # every rank stopped, with the same words
    message = messages.pop()
    assert message.startswith("rank ") and "iteration 2" in message and "NaN or inf" in message, message
    assert "agent" in message and ("parameters" in message or "loss" in message), message
    # iteration 1 was finite and checkpointed; the poisoned iteration 2 was not written over it
    assert {iteration for _, iteration in results} == {1}
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)
    assert torch.isfinite(state["agents"]["actor"]["params"]).all()


def test_every_timed_section_is_grouped(trained):
    """Sections are named by timing.Section constants, each folded into a column of the timing table."""
    from decnode.timing import GROUPS
    distributed, single, _ = trained
    for run in (*distributed.values(), *single.values()):
        assert run["sections"] <= set(GROUPS), run["sections"] - set(GROUPS)
