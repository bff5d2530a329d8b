"""The XLA fabric on 4 CPU devices against closed forms and against the gloo fabric on 4 real processes.

Each test runs its devices in a subprocess (xla_run) with a deadline; the gloo side runs in 4 processes of this
same venv (torch 2.9.0's gloo, tests/multiproc.py), not the single-process Fabric, so the comparison is
between two real transports.
"""

import pytest
import torch

from decnode.topology import mixing_matrix
from multiproc import run_ranks
from xla_run import run_on_devices

DEVICES = 4
DIM = 37  # odd on purpose: nothing may assume aligned sizes
ROUNDS = 20
CASES = [(4, [0, 1, 2, 3]), (8, [1, 2, 3, 4, 5, 7])]  # (n agents, k values): 1 and 2 agents per device, odd k


def theta(n: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(n), dtype=torch.float64).to(dtype)


# ---- workers: run in every device thread --------------------------------------------------------------------
def xla_gossip(n: int, ks: list, dtype: torch.dtype) -> dict:
    from decnode.comm.xla import XlaFabric
    out = {}
    for k in ks:
        fabric = XlaFabric(n, k, timeout_s=120)
        rows = theta(n, dtype)[fabric.agents.start: fabric.agents.stop].to(fabric.device)
        pending = fabric.gossip_start(rows)
        rows.add_(1.0)  # the caller may change its tensor while the round is in flight
        one = pending.wait()
        fabric.sync()
        x = theta(n, dtype)[fabric.agents.start: fabric.agents.stop].to(fabric.device)
        for _ in range(ROUNDS):  # one step graph, reused round after round with new data
            x = fabric.gossip(x)
            fabric.sync()
        out[k] = (one.cpu(), x.cpu())
    return out


def gloo_gossip(n: int, ks: list) -> dict:
    from decnode.comm.transport import world_from_env
    from decnode.comm.fabric import Fabric, open_fabric
    rank, world = world_from_env()
    out = {}
    with open_fabric(n, 0, timeout_s=60):
        for k in ks:
            fabric = Fabric(n, k, rank, world, timeout_s=60)
            out[k] = fabric.gossip(theta(n)[fabric.agents.start: fabric.agents.stop]).clone()
    return out


def xla_parameter_sharing(n: int, steps: int) -> tuple:
    """PS: every device holds the same replica θ; each agent's gradient pulls it towards its own target."""
    from decnode.comm.xla import XlaFabric
    fabric = XlaFabric(n, 0, timeout_s=120)
    targets = theta(n, torch.float32)[fabric.agents.start: fabric.agents.stop].to(fabric.device)
    params = torch.zeros(1, DIM, dtype=torch.float32).to(fabric.device)
    first = None
    for _ in range(steps):
        grads = (params - targets) * (1.0 + targets.abs())  # [a, D], different on every agent
        mean = fabric.allreduce_mean(grads)
        first = mean if first is None else first
        params = params - 0.1 * mean.unsqueeze(0)
        fabric.sync()
        first = first.cpu() if first.device.type != "cpu" else first
    return params.cpu(), first


def xla_host_exchange(n: int) -> tuple:
    from decnode.comm.xla import XlaFabric
    fabric = XlaFabric(n, 0, timeout_s=60)
    full = torch.arange(n * 3, dtype=torch.float32).view(n, 3) if fabric.rank == 0 else None
    back = torch.empty(n, 3) if fabric.rank == 0 else None
    out = []
    for step in range(3):  # the board's slots are reused step after step
        like = torch.zeros(fabric.per_process, 3).to(fabric.device)
        local = fabric.to_agents(None if full is None else full + step, like)
        got = fabric.to_coordinator(local * 2 + 1, back)
        out.append(None if got is None else got.clone())
    gathered = fabric.gather_rows(torch.full((1, 2), float(fabric.rank)))
    value = torch.full((2,), 7.0) if fabric.rank == 0 else torch.zeros(2)
    return out, gathered, fabric.broadcast(value).clone()


def xla_one_thread_fails(n: int) -> str:
    """Device thread 2 gives up (launch_xla.device_main does this on any error); the others are in a host wait."""
    import time

    from decnode.comm.transport import CommError
    from decnode.comm.xla import XlaFabric
    fabric = XlaFabric(n, 0, timeout_s=120)
    fabric.barrier()
    start = time.perf_counter()
    if fabric.rank == 2:
        time.sleep(0.5)  # the others are waiting by now
        fabric.board.fail(2, ValueError("disk on fire"))
        return "failed"
    try:
        fabric.gather_objects(fabric.rank)
    except CommError as err:
        return f"{err} after {time.perf_counter() - start:.1f}s"
    return "no error"


# ---- tests --------------------------------------------------------------------------------------------------
@pytest.mark.timeout(600)
@pytest.mark.parametrize("n,ks", CASES)
def test_xla_gossip_equals_P_theta_and_the_gloo_gossip(n, ks):
    xla64 = run_on_devices("test_xla_comm:xla_gossip", n, ks, torch.float64, devices=DEVICES)
    xla32 = run_on_devices("test_xla_comm:xla_gossip", n, ks, torch.float32, devices=DEVICES)
    gloo = run_ranks(gloo_gossip, DEVICES, n, ks, timeout=180)
    full = theta(n)
    for k in ks:
        P = torch.as_tensor(mixing_matrix(n, k))
        expected, after = P @ full, torch.linalg.matrix_power(P, ROUNDS) @ full
        one64, after64 = (torch.cat([r[k][i] for r in xla64]) for i in (0, 1))
        torch.testing.assert_close(one64, expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(one64, torch.cat([r[k] for r in gloo]), atol=1e-12, rtol=0)
        torch.testing.assert_close(after64, after, atol=1e-12, rtol=0)
        one32, after32 = (torch.cat([r[k][i] for r in xla32]) for i in (0, 1))
        torch.testing.assert_close(one32, expected.float(), atol=1e-6, rtol=0)  # what a TPU (no f64) would see
        torch.testing.assert_close(after32, after.float(), atol=1e-5, rtol=0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("n", [4, 8])
def test_xla_parameter_sharing_keeps_replicas_bit_identical(n):
    steps = 5
    results = run_on_devices("test_xla_comm:xla_parameter_sharing", n, steps, devices=DEVICES)
    replicas = [params for params, _ in results]
    for other in replicas[1:]:
        assert torch.equal(other, replicas[0]), "PS replicas differ between devices"
    targets = theta(n)
    params = torch.zeros(1, DIM, dtype=torch.float64)
    for step in range(steps):  # the same SGD in float64 on the host
        mean = ((params - targets) * (1.0 + targets.abs())).mean(0)
        if step == 0:
            torch.testing.assert_close(results[0][1].double(), mean, atol=1e-6, rtol=0)
        params = params - 0.1 * mean
    assert not torch.equal(replicas[0], torch.zeros_like(replicas[0]))
    torch.testing.assert_close(replicas[0].double(), params, atol=1e-5, rtol=0)


@pytest.mark.timeout(300)
def test_xla_host_exchange_scatters_gathers_and_broadcasts():
    n = 8
    results = run_on_devices("test_xla_comm:xla_host_exchange", n, devices=DEVICES)
    full = torch.arange(n * 3, dtype=torch.float32).view(n, 3)
    steps, gathered, _ = results[0]
    for step, got in enumerate(steps):
        torch.testing.assert_close(got, (full + step) * 2 + 1, atol=0, rtol=0)
    assert all(s is None for r in results[1:] for s in r[0]) and all(r[1] is None for r in results[1:])
    torch.testing.assert_close(gathered, torch.arange(DEVICES, dtype=torch.float32).repeat_interleave(2).view(-1, 2))
    for r in results:
        torch.testing.assert_close(r[2], torch.full((2,), 7.0))


@pytest.mark.timeout(300)
def test_a_failed_device_thread_stops_the_others_at_once_naming_it():
    results = run_on_devices("test_xla_comm:xla_one_thread_fails", 4, devices=DEVICES)
    assert results[2] == "failed"
    for rank in (0, 1, 3):
        message, seconds = results[rank].rsplit(" after ", 1)
        assert message.startswith(f"rank {rank}: stopped in gather during setup: device thread 2 failed: disk on fire")
        assert float(seconds.rstrip("s")) < 30  # not the 120 s timeout
