"""Progress with an ETA: a live bar on a terminal, plain lines in a log file."""
from __future__ import annotations

import datetime
import sys
import time
from typing import Optional, TextIO


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
    """Counts steps of a known total and shows rate and time left.

    On a terminal the bar redraws in place (at most ~10 times a second) and is cleared at
    the end; otherwise one plain line is printed every ``every`` steps and at the end, so
    logs stay readable. Live redraws start with a carriage return, which
    :class:`jlml_plugin._cli.Tee` keeps out of log files.
    ``enabled=False`` prints nothing (non-zero ranks under DDP).
    """

    def __init__(self, total: int, desc: str, every: int = 20, stream: Optional[TextIO] = None,
                 enabled: bool = True, unit: str = 'it') -> None:
        self.total, self.desc, self.every, self.unit = max(total, 1), desc, max(every, 1), unit
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.live = enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.count = 0
        self.start = self._last_draw = time.perf_counter()

    def eta(self) -> float:
        """Seconds left at the rate so far."""
        elapsed = time.perf_counter() - self.start
        return elapsed / self.count * (self.total - self.count) if self.count else 0.0

    def update(self, n: int = 1, info: str = '') -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        done = self.count >= self.total
        if self.live:
            if done or now - self._last_draw > 0.1:
                width = 24
                filled = int(width * min(self.count / self.total, 1))
                bar = '#' * filled + '.' * (width - filled)
                self.stream.write(f'\r{self._line(bar, info)}\033[K')
                self.stream.flush()
                self._last_draw = now
        elif done or self.count % self.every == 0:
            self.stream.write(self._line('', info) + '\n')
            self.stream.flush()

    def _line(self, bar: str, info: str) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        head = f'{self.desc} [{bar}] ' if bar else f'{self.desc} '
        return (f'{head}{self.count}/{self.total} {rate:.1f} {self.unit}/s '
                f'eta {_duration(self.eta())}' + (f' {info}' if info else ''))

    def close(self) -> None:
        """Clears a live bar; callers print their own one-line summary."""
        if self.enabled and self.live:
            self.stream.write('\r\033[K')
            self.stream.flush()
