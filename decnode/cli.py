"""What every decnode command shares on its command line: one-line errors, exit code 2, no usage block."""

from __future__ import annotations

import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments as `prog: error: …` in one line (its messages already name the
    allowed choices or the expected type) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)
