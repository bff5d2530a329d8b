"""Rank 0's record of a run: metrics.jsonl, TensorBoard scalars, a progress bar, the final timing table."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from .timing import format_table

SCALARS = ("train_reward", "eval_reward", "eval_win_rate", "train_win_rate", "policy_loss", "value_loss",
           "entropy", "lr", "grad_disagreement", "update_variance", "consensus_distance", "grad_norm",
           "approx_kl", "clip_fraction", "explained_variance")


class RunLogger:
    def __init__(self, run_dir: Path, total_iterations: int, start_iteration: int, tensorboard: bool):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._truncate_after(start_iteration)  # lines past the checkpoint belong to the lost future
        self.metrics = open(self.metrics_path, "a")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_iteration + 1)
        self.bar = tqdm(total=total_iterations, initial=start_iteration, desc="train", unit="it",
                        dynamic_ncols=True, mininterval=0.5)
        self._t0, self._steps0 = time.perf_counter(), None

    def _truncate_after(self, iteration: int) -> None:
        if not self.metrics_path.exists():
            return
        keep = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["iteration"] <= iteration]
        self.metrics_path.write_text("".join(line + "\n" for line in keep))

    def log(self, line: str, stats: dict, last_eval: float) -> None:
        self.metrics.write(line + "\n")
        self.metrics.flush()
        it = stats["iteration"]
        if self.writer is not None:
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
        table = format_table(per_rank_timing)
        (self.run_dir / "timing.json").write_text(json.dumps({"ranks": per_rank_timing, **summary}, indent=1))
        if self.writer is not None:
            self.writer.close()
        self.metrics.close()
        return table
