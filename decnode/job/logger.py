"""Rank 0's record of a run: metrics.jsonl, TensorBoard scalars, a progress bar, the final timing table."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from tqdm import tqdm

from . import metricsfile
from ..timing import format_table

SCALARS = ("train_reward", "eval_reward", "eval_win_rate", "train_win_rate", "policy_loss", "value_loss",
           "entropy", "lr", "grad_disagreement", "update_variance", "consensus_distance", "grad_norm",
           "approx_kl", "clip_fraction", "explained_variance")


class RunLogger:
    unfinished: RunLogger | None = None  # this process's unfinished logger, whose progress bar a failure must end

    def __init__(self, run_dir: Path, total_iterations: int, start_iteration: int, tensorboard: bool,
                 writing=None, saved_line: str | None = None):
        """saved_line: the checkpoint's own metrics line (what a resume restores if the file lost it)."""
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / metricsfile.NAME
        # writing(what): around each write, turns a full or read-only disk into one line (trainer.writing)
        self.writing = writing or (lambda what: contextlib.nullcontext())
        with self.writing("metrics.jsonl"):
            # From the checkpoint's iteration on (the lines past it belong to the lost future; a cut line goes).
            # decnode-run's resume checked the same plan before anything started (run.py).
            metricsfile.rewind(self.run_dir, metricsfile.plan_resume(self.run_dir, start_iteration, saved_line))
            # Unbuffered: a line that cannot be written fails here, not again later when the file is closed.
            self.metrics = open(self.metrics_path, "ab", buffering=0)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            with self.writing("TensorBoard events"):
                self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_iteration + 1)
            threading.excepthook = _quiet_tensorboard_thread
        self.bar = tqdm(total=total_iterations, initial=start_iteration, desc="train", unit="it",
                        dynamic_ncols=True, mininterval=0.5)
        self._t0, self._steps0 = time.perf_counter(), None
        RunLogger.unfinished = self

    @classmethod
    def abandon(cls) -> None:
        """After a failure: end the progress bar, so the one-line error that follows starts on a line of its own."""
        if cls.unfinished is not None:
            cls.unfinished.bar.close()
            cls.unfinished = None

    def log(self, line: str, stats: dict, last_eval: float) -> None:
        it = stats["iteration"]
        with self.writing(f"metrics.jsonl (iteration {it})"):
            data = memoryview((line + "\n").encode())
            while data:  # a raw write may be short
                data = data[self.metrics.write(data):]
        if self.writer is not None:
            with self.writing(f"TensorBoard events (iteration {it})"):
                for key in SCALARS:
                    if stats.get(key) is not None:
                        self.writer.add_scalar(key, stats[key], it)
        if self._steps0 is None:
            self._steps0, self._t0 = stats["env_steps"], time.perf_counter()
            rate = 0.0
        else:
            rate = (stats["env_steps"] - self._steps0) / max(time.perf_counter() - self._t0, 1e-9)
        last = "-" if last_eval != last_eval else f"{last_eval:.2f}"  # NaN until the first evaluation
        postfix = {"env_steps/s": f"{rate:.0f}", "eval": last}
        if "sim" in stats:  # a network profile is set: what an iteration takes on the simulated cluster
            postfix["sim s/it"] = f"{stats['sim']['seconds']:.3f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def finish(self, per_rank_timing: list[dict], summary: dict) -> str:
        self.bar.close()
        RunLogger.unfinished = None
        table = format_table(per_rank_timing)
        with self.writing("timing.json"):
            (self.run_dir / "timing.json").write_text(json.dumps({"ranks": per_rank_timing, **summary}, indent=1))
        if self.writer is not None:
            with self.writing("TensorBoard events"):
                self.writer.close()
        self.metrics.close()
        return table


def _quiet_tensorboard_thread(args, _default=threading.excepthook) -> None:
    """TensorBoard writes from a thread of its own; a failed write (a full disk) reaches the main thread at the
    next add_scalar, which says it in one line, so the thread's traceback would only repeat it."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _default(args)
