"""Noise metrics over real processes equal a direct computation on the gathered vectors."""

import torch

from multiproc import run_ranks

N_PER, DIM = 2, 23


def rows_for(rank: int, name: str) -> torch.Tensor:
    seed = {"g": 1, "d": 2, "t": 3}[name] * 100 + rank
    return torch.randn(N_PER, DIM, generator=torch.Generator().manual_seed(seed)) * (rank + 1)


def _worker():
    from decnode.comm.transport import world_from_env
    from decnode.comm.fabric import open_fabric
    from decnode.marl.noise import agent_variance_and_sums

    rank, world = world_from_env()
    with open_fabric(N_PER * world, 1, timeout_s=60) as fabric:
        return agent_variance_and_sums(fabric, {k: rows_for(rank, k) for k in "gdt"}, [float(rank), 1.0])


def direct(x: torch.Tensor) -> float:
    x = x.double()
    return ((x - x.mean(0)) ** 2).sum(1).mean().item()


def test_variance_matches_direct_computation_on_gathered_rows():
    world = 3
    results = run_ranks(_worker, world, timeout=120)
    for name in "gdt":
        gathered = torch.cat([rows_for(r, name) for r in range(world)])
        for variance, _ in results:
            assert abs(variance[name] - direct(gathered)) < 1e-9 * max(1.0, direct(gathered))
    for _, sums in results:
        assert sums == [0.0 + 1.0 + 2.0, 3.0]


def test_single_process_and_identical_rows():
    from decnode.comm.fabric import Fabric
    from decnode.marl.noise import agent_variance_and_sums

    same = torch.ones(4, 5).mul(3.0)
    variance, _ = agent_variance_and_sums(Fabric(4, 1), {"x": same, "y": torch.arange(20.).view(4, 5)}, [])
    assert variance["x"] == 0.0  # PS replicas: no consensus distance
    assert abs(variance["y"] - direct(torch.arange(20.).view(4, 5))) < 1e-9
