"""Console output of long work: progress bars by tqdm (a live bar on a terminal; where the
output is no terminal, a log file or CI, tqdm's line printed plainly every ``every`` steps
and at the end, so that logs read as logs), and the one tee that copies stdout into a run's
log file."""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ['progress', 'Tee', 'log_to']

#: The line tqdm prints where nothing is redrawn: no bar, which would only grow a log.
PLAIN_FORMAT = '{desc} {n_fmt}/{total_fmt} {rate_fmt} eta {remaining}{postfix}'


class _Bar(tqdm):
    monitor_interval = 0  # no monitor thread: the steps drive every print

    def update(self, n: int = 1) -> None:
        super().update(n)
        if self.n == self.total and self.last_print_n < self.n:
            self.refresh()  # the last step is always shown


class _Lines:
    """A stream that writes each of tqdm's redraws (``'\\r'`` + line) as one plain line."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip('\r\n').rstrip()
        if text:
            self.stream.write(text + '\n')

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int, desc: str, every: int = 20, enabled: bool = True,
             unit: str = 'it') -> tqdm:
    """A tqdm bar over ``total`` steps; ``enabled=False`` shows nothing (non-zero ranks
    under DDP). A live bar is cleared when closed: callers print their own summary."""
    stream = sys.stdout
    if hasattr(stream, 'isatty') and stream.isatty():
        return _Bar(total=total, desc=desc, unit=unit, disable=not enabled, leave=False,
                    file=stream, mininterval=0.1, dynamic_ncols=True)
    return _Bar(total=total, desc=desc, unit=unit, disable=not enabled, leave=False,
                file=_Lines(stream), mininterval=0, miniters=max(every, 1), delay=1e-9,
                bar_format=PLAIN_FORMAT)  # delay: no line before the first step


class Tee:
    """Writes to the console and a log file; a live bar's redraws (``\\r``) skip the file."""

    def __init__(self, console: TextIO, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.console = console
        self.file = open(path, 'a', encoding='utf-8')

    def write(self, text: str) -> int:
        self.console.write(text)
        if '\r' not in text:
            self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.file.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def close(self) -> None:
        self.file.close()


def log_to(save_dir: str, name: str) -> Tee:
    """Tees stdout into ``<save_dir>/<name>.log-<time>``, as torchreid's main.py does."""
    tee = Tee(sys.stdout, os.path.join(save_dir, f'{name}.log-{time.strftime("%Y-%m-%d-%H-%M-%S")}'))
    sys.stdout = tee
    return tee
