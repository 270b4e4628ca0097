"""What every command shares: one-line errors, ``--debug`` for the traceback."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, List, Optional

from ..errors import JLMLError, one_line


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
