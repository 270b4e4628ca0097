"""What every command shares: one-line errors, ``--debug`` for the traceback."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Callable, List, Optional, TextIO

from .errors import JLMLError, one_line


def command_parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser carrying the ``--debug`` flag that :func:`main_wrapper` acts on."""
    parser = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    parser.add_argument('--debug', action='store_true', help='show tracebacks')
    return parser


def main_wrapper(prog: str, run: Callable[[List[str]], int],
                 argv: Optional[List[str]] = None) -> int:
    """Runs ``run(argv)``; bad input exits 2 with ``prog: error: <one line>``.

    ``--debug`` anywhere in ``argv`` shows the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv
    if debug:
        argv.remove('--debug')
    try:
        return run(argv) or 0
    except KeyboardInterrupt:
        print(f'\n{prog}: interrupted; checkpoints so far are kept (resume with --resume)',
              file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure gets one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            kind = '' if isinstance(exc, JLMLError) else f'{type(exc).__name__}: '
            hint = '' if isinstance(exc, JLMLError) else ' (run with --debug for the traceback)'
            print(f'{prog}: error: {kind}{one_line(exc)}{hint}', file=sys.stderr)
        return 2 if isinstance(exc, JLMLError) else 1


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
