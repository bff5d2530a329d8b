"""The fabric over real processes (gloo on 127.0.0.1) against closed forms computed in the test process."""

import pytest
import torch

from decnode.comm.transport import CommError

from decnode.comm.fabric import Fabric, open_fabric
from decnode.topology import mixing_matrix
from multiproc import run_ranks

DIM = 37  # odd on purpose: nothing may assume aligned sizes


def theta(n: int) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(n), dtype=torch.float64)


def _gossip_worker(per_process: int, rounds: int):
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    n = per_process * world
    out = {}
    with open_fabric(n, 0, timeout_s=60) as base:
        for k in range(n):
            fabric = Fabric(n, k, rank, world, timeout_s=60)
            rows = theta(n)[fabric.agents.start: fabric.agents.stop]
            one = fabric.gossip(rows).clone()
            handle = fabric.gossip_start(rows)
            rows_after = rows + 1.0  # the caller may reuse its tensor while the round is in flight
            nonblocking = handle.wait().clone()
            x = rows.clone()
            for _ in range(rounds):
                x.copy_(fabric.gossip(x))
            out[k] = (one, nonblocking, x, rows_after)
        mean = base.allreduce_mean(theta(n)[base.agents.start: base.agents.stop]).clone()
    return out, mean


# n ∈ {2, 3, 4, 5} with one agent per process, and blocks of 2 agents (n = 4, 6) on 2 and 3 processes.
@pytest.mark.parametrize("world,per_process", [(2, 1), (3, 1), (4, 1), (5, 1), (2, 2), (3, 2)])
def test_gossip_matches_P_theta_and_reaches_consensus(world, per_process):
    n = world * per_process
    results = run_ranks(_gossip_worker, world, per_process, 200, timeout=180)
    full = theta(n)
    for k in range(n):
        expected = torch.as_tensor(mixing_matrix(n, k)) @ full
        one = torch.cat([r[0][k][0] for r in results])
        nonblocking = torch.cat([r[0][k][1] for r in results])
        after = torch.cat([r[0][k][2] for r in results])
        torch.testing.assert_close(one, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(nonblocking, one, atol=0, rtol=0)
        if k >= 1:
            torch.testing.assert_close(after, full.mean(0).expand(n, DIM), atol=1e-3, rtol=0)
        else:
            torch.testing.assert_close(after, full, atol=0, rtol=0)  # k = 0: independent learners
    for _, mean in results:
        torch.testing.assert_close(mean, full.mean(0), atol=1e-9, rtol=0)


def _two_streams_worker(per_process: int):
    from decnode.comm.transport import world_from_env
    from decnode.timing import Section
    rank, world = world_from_env()
    n = per_process * world
    with open_fabric(n, 1, timeout_s=60) as fabric:
        rows = fabric.agents.start, fabric.agents.stop
        actor, critic = theta(n)[slice(*rows)], (theta(n) * -3.0 + 1.0)[slice(*rows)]  # the same size
        out = []
        for _ in range(3):  # the persistent buffers are reused round after round
            # Ranks post (and wait on) the two streams in opposite orders: only the tags keep them apart.
            order = [(Section.GOSSIP, actor), (Section.GOSSIP_CRITIC, critic)][:: 1 if rank % 2 else -1]
            handles = {name: fabric.gossip_start(x, name) for name, x in order}
            out.append({name: handles[name].wait().clone() for name, _ in reversed(order)})
    return out


@pytest.mark.parametrize("world,per_process", [(3, 1), (2, 2)])
def test_two_gossip_streams_of_the_same_size_in_flight_mix_independently(world, per_process):
    from decnode.timing import Section
    n = world * per_process
    results = run_ranks(_two_streams_worker, world, per_process, timeout=120)
    P = torch.as_tensor(mixing_matrix(n, 1))
    for round_ in range(3):
        for name, full in ((Section.GOSSIP, theta(n)), (Section.GOSSIP_CRITIC, theta(n) * -3.0 + 1.0)):
            mixed = torch.cat([r[round_][name] for r in results])
            torch.testing.assert_close(mixed, P @ full, atol=1e-9, rtol=0)


def test_streams_are_named_and_sized_once():
    fabric = Fabric(4, 1)
    with pytest.raises(ValueError, match="not a point-to-point stream"):
        fabric.gossip(theta(4), "critic gossip")
    handle = fabric.gossip_start(theta(4))
    with pytest.raises(RuntimeError, match="posted again"):
        fabric.gossip_start(theta(4))
    handle.wait()
    with pytest.raises(ValueError, match="its own stream"):
        fabric.gossip(theta(4)[:, :5])


def test_single_process_fabric_needs_no_process_group():
    n = 6
    for k in range(n):
        fabric = Fabric(n, k)  # world = 1: all agents here, torch.distributed untouched
        full = theta(n)
        torch.testing.assert_close(fabric.gossip(full), torch.as_tensor(mixing_matrix(n, k)) @ full)
        torch.testing.assert_close(fabric.allreduce_mean(full), full.mean(0))
    assert not torch.distributed.is_initialized()


def _exchange_worker(per_process: int, exchange: str):
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    n = per_process * world
    with open_fabric(n, 1, timeout_s=60, exchange=exchange) as fabric:
        got = []
        for step in range(5):
            full = torch.arange(n * 3, dtype=torch.float32).view(n, 3) + step if rank == 0 else None
            local = fabric.to_agents(full, torch.empty(per_process, 3)).clone()
            actions = (local[:, :1] * 2).long()
            back = fabric.to_coordinator(actions, torch.empty(n, 1, dtype=torch.long) if rank == 0 else None)
            got.append((local, None if back is None else back.clone()))
        gathered = fabric.gather_rows(torch.full((per_process, 2), float(rank)))
    return got, gathered


@pytest.mark.parametrize("exchange", ["p2p", "collective"])
@pytest.mark.parametrize("world,per_process", [(3, 1), (2, 2)])
def test_coordinator_exchange_round_trip(world, per_process, exchange):
    n = world * per_process
    results = run_ranks(_exchange_worker, world, per_process, exchange, timeout=120)
    for step in range(5):
        full = torch.arange(n * 3, dtype=torch.float32).view(n, 3) + step
        for rank, (got, _) in enumerate(results):
            torch.testing.assert_close(got[step][0], full[rank * per_process:(rank + 1) * per_process])
        torch.testing.assert_close(results[0][0][step][1], (full[:, :1] * 2).long())
    expected = torch.arange(world).repeat_interleave(per_process).float()[:, None].expand(n, 2)
    torch.testing.assert_close(results[0][1], expected)


def _silent_peer_worker():
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    import torch.distributed as dist
    from datetime import timedelta
    dist.init_process_group("gloo", timeout=timedelta(seconds=20))
    fabric = Fabric(2, 1, rank, world, timeout_s=2)
    fabric.context = "iteration 7"
    try:
        if rank == 0:
            try:
                fabric.gossip(torch.zeros(1, 4))
            except CommError as err:
                return str(err)
            return "no error"
        return "silent"
    finally:
        dist.destroy_process_group()


def test_silent_peer_becomes_a_named_error_not_a_hang():
    message, _ = run_ranks(_silent_peer_worker, 2, timeout=60)
    assert "rank 0" in message and "iteration 7" in message, message


_PROBE = "import sys, decnode.comm.xla as c; print(c.available(), 'torch_xla' in sys.modules)"


def test_xla_fabric_module_imports_without_torch_xla(tmp_path):
    """decnode.comm.xla imports torch_xla only inside: the main venv (torch 2.13, no torch_xla) imports it, and
    available() says whether torch_xla is importable without importing it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import decnode.comm.xla as comm_xla
    assert comm_xla.available() is False  # pyproject.toml does not install torch_xla into the main venv

    # A fake torch_xla on the path: available() must find it, and neither it nor importing comm_xla may import
    # it (the fake imports cleanly, so an import, even one inside a try, leaves it in sys.modules).
    (tmp_path / "torch_xla").mkdir()
    (tmp_path / "torch_xla" / "__init__.py").write_text('"""A fake: decnode must not import it."""\n')
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(root)])))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "False"], res.stdout


def test_both_fabrics_implement_the_fabric_protocol_with_its_signatures():
    import inspect

    from decnode.comm import api, xla

    calls = [name for name, member in vars(api.Fabric).items() if inspect.isfunction(member) and name[0] != "_"]
    assert "allreduce_mean_start" in calls and "to_coordinator" in calls
    for cls in (Fabric, xla.XlaFabric):
        for name in calls:
            ours, theirs = inspect.signature(getattr(api.Fabric, name)), inspect.signature(getattr(cls, name))
            assert list(ours.parameters) == list(theirs.parameters), (cls.__name__, name, theirs)
        # rows_of and the mean over agents are written once, in the base both share
        assert cls.rows_of is api.AgentBlocks.rows_of and cls.allreduce_mean_start is api.AgentBlocks.allreduce_mean_start
    fabric = Fabric(4, 1)
    assert [a for a in api.Fabric.__annotations__ if not hasattr(fabric, a)] == []  # rank, world, link, ...


def _foreign_job_worker():
    from decnode.comm.transport import CommError, world_from_env
    rank, world = world_from_env()
    with open_fabric(2, 1, timeout_s=30) as fabric:
        ours = fabric.job_id
        ids = fabric.gather_objects(ours)
        if rank == 1:
            fabric.job_id = ours ^ 0x5A5A  # this rank now speaks for another job on the same ports
        x = torch.ones(1, 3)
        try:
            fabric.gossip(x)
            error = None
        except CommError as err:
            error = str(err)
        fabric.job_id = ours
        return ours, ids, error


def test_a_frame_from_another_job_is_refused_in_one_line_naming_both_jobs():
    (job0, ids, error0), (job1, _, error1) = run_ranks(_foreign_job_worker, 2, timeout=120)
    assert job0 == job1 == ids[0] == ids[1] and job0 != 0  # one id per job, drawn by rank 0
    other = job1 ^ 0x5A5A
    # rank 0 received rank 1's forged frame; rank 1 received a genuine one (its own id was the forged one)
    assert error0 is not None and "\n" not in error0, error0
    assert "rank 0: gossip from rank 1 belongs to another job" in error0
    assert f"{other:016x}" in error0 and f"{job0:016x}" in error0
    assert error1 is not None and f"{job0:016x}" in error1  # …and to rank 1 the genuine frame looks foreign


def test_two_jobs_draw_different_ids():
    a, b = run_ranks(_foreign_job_worker, 2, timeout=120)[0][0], run_ranks(_foreign_job_worker, 2, timeout=120)[0][0]
    assert a != b
