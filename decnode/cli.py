"""What every decnode command shares on its command line: one-line errors, exit code 2, no usage block."""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path


class AnalysisError(ValueError):
    """Bad input for a tool that reads runs (decnode-eval, -landscape, -plot, -report); the message is one line."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as `prog: error: …` in one line (its messages already name the
    allowed choices or the expected type) and exits with code 2."""

    def error(self, message: str):
        # A subcommand's parser is named "decnode-netmodel sweep": its errors start as every other, "decnode-X: error:"
        self.exit(2, f"{self.prog.split()[0]}: error: {' '.join(message.split())}\n")


def finite(low: float = 0.0, above: bool = False):
    """argparse type: a finite number ≥ low (> low with `above`). float() takes `inf` and `nan`, which every
    duration or range of a command turns into a warning and a traceback downstream, not one line here."""
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '≥'} {low:g} and finite, got '{text}'")
        return value
    return number


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def check_output(path: Path, kind: str = "file") -> None:
    """ValueError (one line) unless `path` can be written as a file or created as a directory — checked before
    the work, with a real temporary file (permission bits say nothing for root or on read-only mounts)."""
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise ValueError(f"output {path} is a directory; name a file")
    if kind == "directory" and (path.is_file() or (path.is_symlink() and not path.exists())):
        raise ValueError(f"output {path} is a file, not a directory")
    for parent in (path.parents if kind == "file" else (path, *path.parents)):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file")
            try:
                tempfile.TemporaryFile(dir=parent).close()
            except OSError as err:
                raise ValueError(f"cannot write {path}: {parent} is not writable ({err.strerror or err})") from None
            return
