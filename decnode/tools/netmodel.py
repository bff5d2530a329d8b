"""decnode-netmodel: the α–β model of one training iteration's communication, and its checks.

    decnode-netmodel calibrate | predict --nproc 10 --algo decpg --k 4 --net ethernet | compare ... | sweep

The prediction itself is net/model.py; here: what a combine hides behind, measured in this process
(overlap_compute_s), the calibration of α and β by ping-pong, the comparison with a real short job's simulated
clock, the bandwidth sweep and its figure, and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..job import metricsfile
from ..cli import OneLineParser, fail, finite
from ..config import DEFAULT_CONFIG, Config, ConfigError, compose, parse_override, read_file, resolve
from ..extensions import COMBINERS, CRITICS, combiner
from ..extensions import critic as critic_entry
from ..net.model import KINDS, job_shapes, predict_iteration_comm
from ..net.profile import PRESETS, NetProfile, load_profile
from .outputs import Writer, check_files

PROG = "decnode-netmodel"


# ---- what a combine hides behind, measured here -----------------------------------------------------------------
def overlap_compute_s(cfg: Config, shapes: dict | None = None, reps: int = 3) -> dict:
    """CPU seconds, measured here in one process, of what a combine hides behind on rank 0 (one actor
    backward over the block's batch, the central critic's epoch) and of one iteration's compute on rank 0."""
    import torch

    from ..envs import config_factory
    from ..nn.models import RecurrentNet

    torch.set_num_threads(1)
    shapes = shapes or job_shapes(cfg)
    n, a = cfg.env.n_agents, cfg.algo.agents_per_process
    T, B, H = cfg.env.episode_length, cfg.env.n_envs, cfg.train.hidden

    def cpu(fn) -> float:  # median CPU seconds per call, after a warm-up call
        fn()
        marks = [time.process_time()] + [(fn(), time.process_time())[1] for _ in range(reps)]
        return float(np.median(np.diff(marks)))

    def backward(rows, dim_in, dim_out):
        net = RecurrentNet(rows, dim_in, dim_out, H)
        x, h0, reset = torch.randn(rows, T, B, dim_in), torch.zeros(rows, B, H), torch.zeros(T, B, dtype=torch.bool)
        return lambda: net(x, h0, reset)[0].square().sum().backward()

    actor = cpu(backward(a, shapes["obs_dim"], shapes["n_actions"]))
    per_agent = critic_entry(cfg.algo.critic).per_agent
    critic = cpu(backward(a if per_agent else 1, shapes["state_dim"], 1 if per_agent else n))
    net = RecurrentNet(a, shapes["obs_dim"], shapes["n_actions"], H)
    obs, h = torch.randn(a, B, shapes["obs_dim"]), torch.zeros(a, B, H)
    env = config_factory(dataclasses.asdict(cfg.env), n)(B)
    env.reset(0)
    act = cpu(lambda: net.step(obs, h, torch.zeros(B, dtype=torch.bool)))
    step = cpu(lambda: env.step(np.zeros((B, n), dtype=np.int64)))
    epoch = actor + critic
    return {"actor_backward": actor, "critic_epoch": critic,
            "overlap": epoch if combiner(cfg.algo.name).gossips else critic,
            "iteration": T * (act + step) + cfg.train.ppo_epochs * epoch + critic}


def job_config(nproc: int, algo: str, k: int, critic: str | None, config: str | None, sets: list[str]) -> Config:
    path = Path(config) if config else DEFAULT_CONFIG
    layer = {"algo": {"name": algo, "k": k, **({"critic": critic} if critic else {})}}
    cfg = compose([(str(path), read_file(path))], [("command line", layer)]
                  + [("--set", parse_override(s)) for s in sets])
    return resolve(cfg, nproc)


# ---- compare: a real short job's simulated clock beside the prediction -------------------------------------------
def run_job(cfg_args: list[str], nproc: int, net: str, iterations: int, out: Path, timeout_s: float = 900) -> dict:
    """Train `iterations` on nproc processes with --net; returns per-iteration sim dicts of rank 0 (the last,
    which also evaluates, dropped) and the host-measured communication seconds per iteration."""
    cmd = [sys.executable, "-m", "decnode.run", "--nproc", str(nproc), "--net", net, "--iterations",
           str(iterations), "--out", str(out), "--overwrite", "--no-preflight", *cfg_args,
           "--set", "eval.interval=0", "--set", "eval.episodes=1", "--set", "eval.test_episodes=1",
           "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode:
        raise RuntimeError(f"the job failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    lines = metricsfile.read(out).records
    lines = lines[:-1] if len(lines) > 1 else lines
    comm_sections = ("step_exchange", "reward_scatter", "gossip", "gossip_critic", "allreduce", "allreduce_critic",
                     "stats", "state_broadcast")
    host = [sum(v for k, v in line["timing"].items() if k in comm_sections) for line in lines]
    return {"sim": [line["sim"] for line in lines], "host_comm": host}


def compare(cfg: Config, net: str, nproc: int, iterations: int, cfg_args: list[str], shapes=None) -> dict:
    profile = load_profile(net)
    shapes = shapes or job_shapes(cfg)
    overlap = overlap_compute_s(cfg, shapes)
    pred = predict_iteration_comm(cfg, profile, nproc, overlap["overlap"], shapes)
    with tempfile.TemporaryDirectory(prefix="netmodel-") as tmp:
        job = run_job(cfg_args, nproc, net, iterations, Path(tmp) / "run")
    sims = job["sim"]
    sim_comm = float(np.median([s["wire"] + s["waiting"] for s in sims]))
    return {"net": net, "algo": cfg.algo.name, "k": cfg.algo.k, "nproc": nproc, "predicted": pred,
            "overlap_s": overlap["overlap"], "simulated_comm": sim_comm,
            "simulated_iteration": float(np.median([s["seconds"] for s in sims])),
            "host_comm": float(np.median(job["host_comm"])), "ratio": sim_comm / pred["total"] if pred["total"] else
            math.nan}


def format_compare(r: dict) -> str:
    name = f"{r['algo']}" + (f" k={r['k']}" if combiner(r["algo"]).gossips else "")
    return (f"{name:<10} {r['net']:<10} n={r['nproc']:<3} predicted {1e3 * r['predicted']['total']:9.2f} ms   "
            f"simulated {1e3 * r['simulated_comm']:9.2f} ms   simulated/predicted {r['ratio']:.3f}   "
            f"host-measured (loopback, oversubscribed) {1e3 * r['host_comm']:9.2f} ms")


# ---- calibrate: α and β of the transport in use ---------------------------------------------------------------
SIZES = [4 ** i for i in range(1, 13)]  # 4 B … 16 MiB


def pingpong_worker(sizes: list[int], reps: int, out: str, timeout_s: float) -> None:
    """Rank 0 sends, rank 1 echoes; one-way seconds = round trip / 2, median of reps (after a warm-up)."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    rank, timeout = dist.get_rank(), timedelta(seconds=timeout_s)
    buffers = {size: torch.zeros(max(size // 4, 1)) for size in sizes}
    times = {size: [] for size in sizes}
    try:
        for rep in range(reps + 1):  # sizes interleaved, so a burst of load on this shared host hits them alike,
            for size in np.random.default_rng(rep).permutation(sizes).tolist():  # in an order both ranks share
                x = buffers[size]
                dist.barrier()
                t0 = time.perf_counter()
                if rank == 0:
                    dist.isend(x, 1, tag=1).wait(timeout)
                    dist.irecv(x, 1, tag=2).wait(timeout)
                else:
                    dist.irecv(x, 0, tag=1).wait(timeout)
                    dist.isend(x, 0, tag=2).wait(timeout)
                if rep:
                    times[size].append((time.perf_counter() - t0) / 2)
        result = {size: float(np.median(t)) for size, t in times.items()}
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def fit_alpha_beta(nbytes, seconds) -> dict:
    """Least squares t(B) = α + B/β, weighted by 1/t so small and large messages count alike (relative error);
    returns α (s), β (bit/s), R² and the largest relative residual."""
    b, t = np.asarray(nbytes, float), np.asarray(seconds, float)
    slope, alpha = np.polyfit(b, t, 1, w=1 / t)
    fit = alpha + slope * b
    r2 = 1 - np.sum((t - fit) ** 2) / np.sum((t - t.mean()) ** 2)
    return {"latency_s": float(alpha), "bandwidth_bit_s": float(8 / slope) if slope > 0 else math.inf,
            "r2": float(r2), "max_rel_residual": float(np.max(np.abs(fit - t) / t))}


def calibrate(reps: int = 25, sizes: list[int] = SIZES, timeout_s: float = 120.0) -> dict:
    from ..job.launch import launch

    with tempfile.TemporaryDirectory(prefix="netmodel-") as tmp:
        out = Path(tmp) / "pingpong.json"
        code = launch(2, pingpong_worker, (sizes, reps, str(out), timeout_s), Path(tmp), prog=PROG)
        if code or not out.is_file():
            raise RuntimeError(f"the ping-pong processes failed (exit {code})")
        measured = {int(k): v for k, v in json.loads(out.read_text()).items()}
    return {"sizes": list(measured), "seconds": list(measured.values()),
            **fit_alpha_beta(list(measured), list(measured.values()))}


def format_calibration(c: dict) -> str:
    lines = [f"{'bytes':>10}{'one way':>14}{'fit':>14}"]
    for b, t in zip(c["sizes"], c["seconds"]):
        fit = c["latency_s"] + 8 * b / c["bandwidth_bit_s"]
        lines.append(f"{b:>10}{1e6 * t:>12.1f}µs{1e6 * fit:>12.1f}µs")
    lines.append(f"α = {1e6 * c['latency_s']:.1f} µs, β = {c['bandwidth_bit_s'] / 1e9:.2f} Gbit/s "
                 f"(least squares weighted by 1/t: R² {c['r2']:.4f}, largest relative residual "
                 f"{100 * c['max_rel_residual']:.0f}%)")
    return "\n".join(lines)


# ---- sweep: iteration time and communication share against bandwidth ------------------------------------------
def sweep(latency_s: float, compute_s: float, overlap: dict, n: int = 10, ks=(2, 4, 6, 8), points: int = 41) -> dict:
    """Per algorithm, iteration seconds (compute + predicted communication) over bandwidths 1 Mbit/s–100 Gbit/s."""
    bandwidths = np.logspace(6, 11, points)
    cases = {"ps": job_config(n, "ps", 0, None, None, [])}
    cases.update({f"decpg k={k}": job_config(n, "decpg", k, None, None, []) for k in ks})
    shapes = job_shapes(cases["ps"])
    curves = {}
    for name, cfg in cases.items():
        hide = overlap["decpg" if name.startswith("decpg") else "ps"]
        comm = np.array([predict_iteration_comm(cfg, NetProfile("sweep", latency_s, bw), n, hide, shapes)["total"]
                         for bw in bandwidths])
        curves[name] = {"iteration": compute_s + comm, "share": comm / (compute_s + comm)}
    return {"bandwidth": bandwidths, "curves": curves}


def decpg_wins(result: dict) -> list[str]:
    """Where some DecPG k beats PS in wall-clock, as bandwidth ranges."""
    bw, ps = result["bandwidth"], result["curves"]["ps"]["iteration"]
    lines = []
    for name, c in result["curves"].items():
        if name == "ps":
            continue
        wins = c["iteration"] < ps
        if wins.any():
            lo, hi = bw[wins].min(), bw[wins].max()
            best = np.max(ps[wins] / c["iteration"][wins])
            where = "at every bandwidth" if wins.all() else f"from {lo / 1e6:.3g} to {hi / 1e6:.3g} Mbit/s"
            lines.append(f"{name} beats PS {where} (up to {best:.2f}× faster)")
        else:
            lines.append(f"{name} never beats PS")
    return lines


def plot_sweep(results: dict, compute_s: float, out: Path) -> None:
    """results: α -> sweep(); one column per α: iteration seconds above, communication share below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7), sharex=True, squeeze=False)
    for (latency, result), (top, bottom) in zip(results.items(), axes.T):
        for name, c in result["curves"].items():
            top.plot(result["bandwidth"], c["iteration"], label=name, lw=2.2 if name == "ps" else 1.2)
            bottom.plot(result["bandwidth"], 100 * c["share"], label=name, lw=2.2 if name == "ps" else 1.2)
        top.set(xscale="log", yscale="log", ylabel="seconds per iteration",
                title=f"n=10, α={1e3 * latency:g} ms, compute {compute_s:.2f} s/iteration")
        bottom.set(xscale="log", xlabel="bandwidth per link (bit/s)", ylabel="communication share (%)", ylim=(0, 100))
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        top.legend()
    fig.suptitle("α–β model of one iteration (decnode-netmodel sweep)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ---- command line -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description="α–β model of the trainer's communication: calibrate, predict, "
                                             "compare with the simulated clock, sweep bandwidth.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    cal = sub.add_parser("calibrate", help="ping-pong 4 B–16 MiB between 2 gloo processes, fit α and β")
    cal.add_argument("--reps", type=int, default=25, help="round trips per size (median; default 25)")
    cal.add_argument("--out", default=None, metavar="FILE", help="also write the fit as a profile for --net FILE "
                     "(an existing FILE only if decnode wrote it)")
    for name, text in (("predict", "per-iteration communication from the α–β costs"),
                       ("compare", "predicted vs simulated vs host-measured, from a short real job")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--nproc", type=int, default=10, help="processes (default 10)")
        q.add_argument("--algo", default="decpg", metavar="NAME",
                       help=f"algorithm: {', '.join(COMBINERS.names())} (default decpg)")
        q.add_argument("--k", type=int, default=4, help="kNN neighbours (decpg)")
        q.add_argument("--critic", default=None, metavar="NAME", help=f"critic placement: {', '.join(CRITICS.names())}")
        q.add_argument("--config", default=None, help=f"YAML config (default {DEFAULT_CONFIG.name})")
        q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
        q.add_argument("--net", default="ethernet", metavar="NAME|FILE", help="profile (default ethernet)")
        if name == "predict":
            q.add_argument("--overlap-s", type=finite(), default=None,
                           help="compute each combine round hides behind (default: measured here)")
        else:
            q.add_argument("--iterations", type=int, default=4, help="iterations of the job (≥ 2; the last, "
                                                                      "which evaluates, is left out)")
    sw = sub.add_parser("sweep", help="n=10: iteration time and communication share against bandwidth (PNG)")
    sw.add_argument("--latency-s", type=finite(), nargs="+", default=[PRESETS["ethernet"].latency_s,
                    PRESETS["wan"].latency_s], help="one column per α (default 100 µs as ethernet, 20 ms as wan)")
    sw.add_argument("--compute-s", type=finite(), default=None,
                    help="compute seconds per iteration (default: measured here for n=10, one agent per process)")
    sw.add_argument("--out", default="netmodel-bandwidth.png", help="PNG to write (an existing one only if decnode "
                    "wrote it)")
    return p


def _job(args) -> Config:
    if args.nproc < 1:
        raise ConfigError(f"--nproc must be ≥ 1, got {args.nproc}")
    cfg = job_config(args.nproc, args.algo, args.k, args.critic, args.config, args.set)
    load_profile(args.net)
    return cfg


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "calibrate":
            if args.reps < 1:
                raise ConfigError(f"--reps must be ≥ 1, got {args.reps}")
            if args.out:
                check_files([args.out])  # new, or a profile decnode wrote and nobody edited since
            result = calibrate(args.reps)
            print(format_calibration(result))
            if args.out:
                out = Path(args.out)
                with Writer(out.parent, record=False) as w:  # its first line marks it decnode's
                    # x.xxxxe±yy: four digits are what a calibration resolves (yamlio reads every float spelling)
                    w.text(out.name, f"preset: loopback\nname: calibrated\nlatency_s: {result['latency_s']:.4e}\n"
                                     f"bandwidth_bit_s: {result['bandwidth_bit_s']:.4e}\n", f"{PROG} calibrate")
                print(f"wrote {args.out} (use: decnode-run --net {args.out})")
        elif args.command == "predict":
            cfg = _job(args)
            hide = args.overlap_s if args.overlap_s is not None else overlap_compute_s(cfg)["overlap"]
            pred = predict_iteration_comm(cfg, load_profile(args.net), args.nproc, hide)
            print(f"{args.algo} n={cfg.env.n_agents} on {args.nproc} processes, '{args.net}', overlap "
                  f"{1e3 * hide:.1f} ms: {1e3 * pred['total']:.2f} ms per iteration ("
                  + "  ".join(f"{k} {1e3 * pred[k]:.2f}" for k in KINDS)
                  + f" ms; combine before overlap {1e3 * pred['combine_raw']:.2f} ms)"
                  + (f"; gossip {pred['gossip_bytes'] / 1e6:.3f} MB per iteration" if pred["gossip_bytes"] else ""))
        elif args.command == "compare":
            cfg = _job(args)
            if args.iterations < 2:
                raise ConfigError(f"--iterations must be ≥ 2 (the last one evaluates and is left out), "
                                  f"got {args.iterations}")
            extra = ["--algo", args.algo, "--k", str(args.k), *(["--critic", args.critic] if args.critic else []),
                     *(["--config", args.config] if args.config else []), *(x for s in args.set for x in ("--set", s))]
            print(format_compare(compare(cfg, args.net, args.nproc, args.iterations, extra)))
        else:
            out = Path(args.out)
            check_files([out])  # new, or a figure decnode wrote (listed in the folder's .decnode-outputs.json)
            measured = {algo: overlap_compute_s(job_config(10, algo, 4, None, None, [])) for algo in ("decpg", "ps")}
            compute = args.compute_s if args.compute_s is not None else measured["ps"]["iteration"]
            hide = {a: m["overlap"] for a, m in measured.items()}
            results = {latency: sweep(latency, compute, hide) for latency in args.latency_s}
            with Writer(out.parent) as w:
                plot_sweep(results, compute, w.path(out.name))
            for latency, result in results.items():
                print(f"α = {1e3 * latency:g} ms, compute {compute:.3f} s/iteration: " + "; ".join(decpg_wins(result)))
            print(f"wrote {out}")
    except (ConfigError, ValueError, RuntimeError) as err:
        fail(PROG, str(err))
    except OSError as err:
        fail(PROG, f"could not write {getattr(args, 'out', None) or err.filename}: {err.strerror or err}")


if __name__ == "__main__":
    main()
