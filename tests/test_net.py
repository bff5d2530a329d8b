"""The simulated cluster: network profiles, the per-node clock on real processes over gloo, and its guarantees."""

import math
import os
import time

import pytest
import torch

from decnode.config import ConfigError
from decnode.net.link import Link
from decnode.net.profile import PRESETS, NetProfile, NodeClock, load_profile, make_profile
from multiproc import run_ranks

pytestmark = pytest.mark.serial  # it compares times with the host's: make test runs it alone

SLOW_LINK = NetProfile("test", latency_s=0.005, bandwidth_bit_s=8e6)  # 1 MB/s: 100 KB take 0.1 s on the wire


def burn(cpu_seconds: float) -> None:
    """Synthetic compute of known CPU time."""
    t0 = time.process_time()
    while time.process_time() - t0 < cpu_seconds:
        pass


def _two_messages(d1: int, d2: int):
    from decnode.comm.fabric import Fabric

    rank, world = _rank_world()
    fabric = Fabric(2, 1, rank, world, timeout_s=60, link=Link(SLOW_LINK, rank, world))
    x1, x2 = torch.full((1, d1), float(fabric.rank)), torch.full((1, d2), float(fabric.rank))
    clock = fabric.link.clock
    posted = clock.advance()
    first, second = fabric.gossip_start(x1, "gossip"), fabric.gossip_start(x2, "gossip_critic")
    mixed = first.wait().clone()
    after_first = clock.now
    second.wait()
    return posted, after_first, clock.now, mixed


def _rank_world():
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    return dist.get_rank(), dist.get_world_size()


def test_a_message_arrives_after_latency_and_bandwidth_and_the_next_one_queues_behind_it():
    d1, d2 = 25_000, 50_000  # 100 KB and 200 KB of float32
    wire1, wire2 = SLOW_LINK.wire_s(4 * d1), SLOW_LINK.wire_s(4 * d2)
    results = run_ranks(_two_messages, 2, d1, d2, timeout=120)
    for rank, (_, after_first, done, mixed) in enumerate(results):
        peer_posted = results[1 - rank][0]
        assert after_first >= peer_posted + SLOW_LINK.latency_s + wire1
        assert done >= peer_posted + SLOW_LINK.latency_s + wire1 + wire2  # queued behind the first on the link
        assert done <= max(peer_posted, results[rank][0]) + SLOW_LINK.latency_s + wire1 + wire2 + 0.05
        torch.testing.assert_close(mixed, torch.full((1, d1), 0.5))  # the data is the real data


def _gossip_two_agents_each(d: int):
    from decnode.comm.fabric import Fabric

    rank, world = _rank_world()
    fabric = Fabric(4, 1, rank, world, timeout_s=60, link=Link(SLOW_LINK, rank, world))  # agents 2r, 2r+1
    clock = fabric.link.clock
    posted = clock.advance()
    fabric.gossip(torch.ones(2, d))
    return posted, clock.now


def test_a_gossip_message_costs_the_rows_it_carries_not_the_whole_block():
    # k=1 on 4 agents: agent i hears i+1, so each rank sends its peer one of its two rows. The wire is one row's
    # bytes over β (the whole block once was: twice the time on the wire, issue 24's 100 Mbit/s cells).
    d = 25_000  # 100 KB of float32 per row
    results = run_ranks(_gossip_two_agents_each, 2, d, timeout=120)
    one_row = SLOW_LINK.latency_s + SLOW_LINK.wire_s(4 * d)
    for rank, (posted, done) in enumerate(results):
        start = max(posted, results[1 - rank][0])
        assert start + one_row <= done <= start + one_row + 0.05, (done - start, one_row)


def _burn_then_collective(cpu_seconds: float, profile: NetProfile, k: int, algo: str):
    from decnode.comm.fabric import Fabric

    rank, world = _rank_world()
    fabric = Fabric(4, k, rank, world, timeout_s=60, link=Link(profile, rank, world))
    x = torch.ones(1, 1000)
    before, wall = fabric.link.clock.snapshot(), time.perf_counter()
    burn(cpu_seconds)
    if algo == "decpg":
        fabric.gossip(x)
    else:
        fabric.allreduce_mean(x)
    return fabric.link.clock.snapshot(), before, time.perf_counter() - wall


def test_four_ranks_on_two_cores_see_their_own_cpu_time_not_the_oversubscribed_wall_clock(measured):
    cpu = 0.4
    # Two cores (or the one this process may use), however many the host has: the ranks inherit them from here.
    allowed = os.sched_getaffinity(0)
    cores = sorted(allowed)[:2]
    os.sched_setaffinity(0, cores)
    try:
        results = run_ranks(_burn_then_collective, 4, cpu, PRESETS["datacenter"], 0, "ps", timeout=120)
    finally:
        os.sched_setaffinity(0, allowed)
    ideal = cpu + PRESETS["datacenter"].allreduce_s(4, 4000)
    simulated = [after["clock"] - before["clock"] for after, before, _ in results]
    walls = [wall for *_, wall in results]
    measured(f"simulated {min(simulated):.3f}-{max(simulated):.3f} s (ideal {ideal:.3f}); host wall-clock "
             f"{min(walls):.2f}-{max(walls):.2f} s on {len(cores)} cores")
    for s in simulated:
        assert abs(s - ideal) < 0.1 * ideal, (simulated, ideal)
    # 4 × cpu of CPU on len(cores) cores takes at least 4 × cpu / len(cores) of host time, all of it after the first
    # rank started its clock and before its all-reduce ended: that rank's wall-clock is at least twice what its
    # clock shows, so a clock that followed the host's time would have failed above. (0.95: CPU-time accounting.)
    assert max(walls) >= 0.95 * 4 * cpu / len(cores), (walls, cores)


@pytest.mark.parametrize("algo", ["decpg", "ps"])
def test_a_slow_node_makes_its_neighbours_wait_in_decpg_and_everyone_wait_in_ps(algo):
    cpu, slow = 0.15, 3.0
    profile = NetProfile("slow-rank-2", latency_s=1e-4, bandwidth_bit_s=1e9, speed=(1.0, 1.0, slow, 1.0))
    results = run_ranks(_burn_then_collective, 4, cpu, profile, 2, algo, timeout=120)
    waited = [after["waiting"] - before["waiting"] for after, before, _ in results]
    late = (slow - 1) * cpu  # how far behind the slow node posts
    assert waited[2] < 0.02
    waiting_ranks = {1, 3} if algo == "decpg" else {0, 1, 3}  # k=2: rank 2's in-neighbours are 1 and 3
    for rank in range(4):
        if rank in waiting_ranks:
            assert abs(waited[rank] - late) < 0.25 * late, (rank, waited)
        elif rank != 2:
            assert waited[rank] < 0.02, (rank, waited)


def _train(root: str, profile: NetProfile | None):
    from pathlib import Path

    from decnode.comm.fabric import Fabric
    from decnode.config import load, resolve
    from decnode.job.run import DEFAULT_CONFIG
    from decnode.job.trainer import train

    cfg = resolve(load(DEFAULT_CONFIG, ["algo.k=1", "train.iterations=2", "env.n_envs=4", "eval.interval=0",
                                        "eval.episodes=2", "eval.test_episodes=2", "run.tensorboard=false",
                                        "run.checkpoint_interval=0", "env.n_agents=2"]), 2)
    run_dir = Path(root) / (profile.name if profile else "none")
    run_dir.mkdir(parents=True, exist_ok=True)
    rank, world = _rank_world()
    summary = train(cfg, Fabric(2, 1, rank, world, 60, link=Link(profile, rank, world, seed=1)), run_dir)
    return torch.load(run_dir / "models.pt", weights_only=False)["actor_rows"] if rank == 0 else None, summary


def test_the_network_changes_time_never_results(tmp_path):
    wan = make_profile({"preset": "wan", "straggler_p": 0.5, "straggler_slowdown": 4, "speed": [1, 2]})
    plain, _ = run_ranks(_train, 2, str(tmp_path), None, timeout=200)[0]
    simulated, summary = run_ranks(_train, 2, str(tmp_path), wan, timeout=200)[0]
    assert torch.equal(plain, simulated)
    ranks = summary["simulated"]["ranks"]
    for r in ranks:  # iterations' simulated seconds, split without remainder
        assert r["wire"] > 0 and r["compute"] > 0
        assert r["seconds"] == pytest.approx(r["compute"] + r["wire"] + r["waiting"], abs=1e-6)


def test_profiles_presets_files_and_one_line_errors(tmp_path):
    assert not PRESETS["loopback"].active and PRESETS["ethernet"].active
    eth = load_profile("ethernet")
    assert (eth.latency_s, eth.bandwidth_bit_s) == (100e-6, 1e9)
    assert math.isclose(eth.allreduce_s(10, 4e6), 18 * (100e-6 + 8 * 4e5 / 1e9))
    path = tmp_path / "lab.yaml"
    path.write_text("preset: ethernet\nlatency_s: 0.001\nspeed: [1, 1.5]\n")
    lab = load_profile(str(path))
    assert lab.latency_s == 0.001 and lab.bandwidth_bit_s == 1e9 and lab.slowdown(3) == 1.5 and lab.active
    for bad, words in [({"preset": "fibre"}, "unknown network preset"), ({"latency_s": -1}, "must be ≥ 0"),
                       ({"bandwidth_bit_s": 0}, "must be > 0"), ({"speed": []}, "non-empty"),
                       ({"straggler_p": 2}, "[0, 1]"), ({"mode": "real"}, "simulate, emulate"),
                       ({"latency": 1}, "unknown network profile key"), ({"jitter_s": float("nan")}, "finite"),
                       ({"speed": [1, "fast"]}, "must be a number")]:
        with pytest.raises(ConfigError, match=None) as err:
            make_profile(bad)
        assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="neither a preset"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_clock_queues_messages_on_the_senders_link_and_splits_wire_from_waiting():
    cpu = iter([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]).__next__
    clock = NodeClock(SLOW_LINK, rank=0, cpu=cpu)
    assert clock.send(100_000) == pytest.approx((0.0, 0.105))
    assert clock.send(100_000) == pytest.approx((0.1, 0.205))  # waits for the link
    clock.receive(depart=0.5, arrival=0.6)  # the clock reads 1.0 s of compute by now: nothing to wait for
    assert clock.now == pytest.approx(1.0) and clock.tally.waiting == 0
    clock.receive(depart=1.2, arrival=1.3)  # the peer sent 0.2 s after we were ready: 0.2 waiting, 0.1 wire
    assert clock.now == pytest.approx(1.3)
    assert (clock.tally.waiting, clock.tally.wire) == pytest.approx((0.2, 0.1))


def test_cpu_spent_inside_a_communication_call_is_the_transports_not_compute():
    cpu = iter([0.0, 0.5, 1.0, 1.5, 2.0]).__next__  # 0.5 s compute, 1 s inside the call, 0.5 s compute
    clock = NodeClock(SLOW_LINK, rank=0, cpu=cpu)
    with clock.transport():
        clock.advance()
    clock.advance()
    assert clock.tally.compute == pytest.approx(1.0) and clock.now == pytest.approx(1.0)


def _rounds_on_a_slow_link(profile: NetProfile, rounds: int):
    """The same rounds twice in one process group, back to back: on the simulated clock only, then with the delays
    as real waits too. Per mode: (simulated seconds, host time at the start, at the end)."""
    from dataclasses import replace

    from decnode.comm.fabric import Fabric

    rank, world = _rank_world()
    x = torch.ones(1, 25_000)  # 100 KB
    out = {}
    for mode in ("simulate", "emulate"):
        fabric = Fabric(2, 1, rank, world, timeout_s=60, link=Link(replace(profile, mode=mode), rank, world))
        fabric.barrier()
        before, start = fabric.link.clock.snapshot(), time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
        for _ in range(rounds):
            burn(0.01)  # little compute: what a busy host stretches is not what this test is about
            fabric.gossip(x)
        out[mode] = (fabric.link.clock.snapshot()["clock"] - before["clock"], start, time.monotonic())
    return out


def test_emulate_mode_makes_the_host_wall_clock_show_the_simulated_network(measured):
    """net.mode=emulate holds every message on the host until α + B/β after its sender posted it: the host
    wall-clock contains the simulated network's delays, once, beside the same rounds without them."""
    rounds = 4
    profile = make_profile({"latency_s": 0.1, "bandwidth_bit_s": 8e6, "mode": "emulate"})
    delay = profile.p2p_s(100_000)  # α + B/β = 0.2 s
    per_round = delay + 0.01  # plus the compute before it
    results = run_ranks(_rounds_on_a_slow_link, 2, profile, rounds, timeout=120)
    host = {}
    for mode in ("simulate", "emulate"):
        assert [r[mode][0] for r in results] == pytest.approx([rounds * per_round] * 2, rel=0.1)  # either mode
        first = min(r[mode][1] for r in results)
        host[mode] = [r[mode][2] - first for r in results]  # per rank, from the first rank's start
    added = max(host["emulate"]) - max(host["simulate"])
    measured(f"host {min(host['emulate']):.3f}-{max(host['emulate']):.3f} s emulated (≥ {rounds * delay:.1f}), "
             f"{max(host['simulate']):.3f} s simulated: {added:.3f} s added (< {1.5 * rounds * delay:.1f})")
    # A rank posts round i only after its round i − 1 was delivered, and a message is held until `delay` after it
    # was posted: every rank's round i ends at least i × delay after the first rank began, however fast the host.
    assert min(host["emulate"]) >= rounds * delay
    # And held no longer: a second hold would add 2 × rounds × delay in all. The same rounds without the holds, just
    # before, pay the same host overhead (part of which the holds hide); the margin, half the delays, is for the
    # load changing between the two. Measured on 2 cores at load average 1-16, 10 runs: 0.62-0.85 s added for 0.8 s.
    assert added < 1.5 * rounds * delay


def test_trace_json_shows_both_clocks_with_every_message_as_an_arrow(tmp_path, saved_figures):
    import json

    from decnode.tools.plots import CATEGORY_NAMES, Run, plot_timeline
    from decnode.timing import ORDER

    profile = make_profile({"preset": "ethernet", "latency_s": 0.002})
    run_ranks(_train, 2, str(tmp_path), profile, timeout=200)
    run_dir = tmp_path / profile.name
    events = json.loads((run_dir / "trace.json").read_text())["traceEvents"]
    sections = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in sections} == {0, 1} and {e["tid"] for e in sections} == {0, 1}
    assert {"gossip", "step_exchange", "actor_update"} <= {e["name"] for e in sections}
    for pid in (0, 1):  # every message: one send, one receive, on different ranks, the receive not earlier
        ends = {}
        for e in (e for e in events if e["ph"] in "sf" and e["pid"] == pid):
            ends.setdefault(e["id"], {})[e["ph"]] = e
        assert ends and all(set(pair) == {"s", "f"} for pair in ends.values())
        for pair in ends.values():
            assert pair["s"]["tid"] != pair["f"]["tid"]
            delay = pair["f"]["ts"] - pair["s"]["ts"]
            assert delay >= (2000 if pid == 1 else 0)  # simulated: at least α = 2 ms (in µs)
    png = plot_timeline(Run(run_dir, {"algo": {"name": "decpg", "k": 1}}, [], None, None), tmp_path / "timeline.png")
    assert png.is_file()
    # timeline.png: a panel per clock, a row per rank, every section a bar from its start for its duration (ms),
    # in its category's colour as the legend gives it
    fig = saved_figures["timeline.png"]
    assert fig.get_suptitle() == "DecPG k=1: the first traced iterations"
    legend = fig.legends[0]
    colour = {t.get_text(): tuple(h.get_facecolor()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert list(colour) == [CATEGORY_NAMES[c] for c in ORDER if any(e["cat"] == c for e in sections)]
    assert [ax.get_title() for ax in fig.axes] == ["host wall-clock", f"simulated cluster ({profile.name})"]
    for pid, ax in enumerate(fig.axes):
        assert ax.get_xlabel() == "ms" and [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1"]
        bars = sorted((v[:, 1].min(), v[:, 1].max(), v[:, 0].min(), v[:, 0].max(), tuple(c.get_facecolor()[0]))
                      for c in ax.collections for v in [c.get_paths()[0].vertices])
        expected = sorted((e["tid"] - 0.4, e["tid"] + 0.4, e["ts"] / 1e3, e["ts"] / 1e3 + max(e["dur"] / 1e3, 1e-3),
                           colour[CATEGORY_NAMES[e["cat"]]]) for e in sections if e["pid"] == pid)
        assert len(bars) == len(expected)
        for bar, want in zip(bars, expected):
            assert bar[:4] == pytest.approx(want[:4], rel=1e-9, abs=1e-9) and bar[4] == want[4], (pid, bar, want)
