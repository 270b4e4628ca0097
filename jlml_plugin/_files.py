"""Safe files: atomic writes (a crash leaves the old file or the new one, never half of one)
and locks between processes (filelock's: flock on POSIX, msvcrt on Windows)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

import filelock


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w') -> Iterator[IO]:
    """Opens a temporary file beside ``path``; on success it is synced and renamed over
    ``path``, on failure removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.part', dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the file it replaces was not
    try:
        with os.fdopen(fd, mode, **({} if 'b' in mode else {'encoding': 'utf-8'})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str, wait: bool = True) -> Iterator[bool]:
    """Holds an exclusive lock on ``path`` (created if missing) for the block and yields
    True; with ``wait=False`` it yields False at once if another holder has it. The OS drops
    the lock when its holder dies, so a killed process never leaves a stale one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lock = filelock.FileLock(path, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path, 'w') as f:
        f.write(text)
