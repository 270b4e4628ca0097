"""Errors the plugin raises for bad input, each with a message that fits on one line."""
from __future__ import annotations

__all__ = ['JLMLError', 'ConfigError', 'DataError', 'CorruptImageError', 'CheckpointError',
           'NonFiniteLossError', 'one_line']


class JLMLError(Exception):
    """Base class: bad input that the command line reports in one line, without a traceback."""


class ConfigError(JLMLError, ValueError):
    """A config key, value or combination that cannot work."""


class DataError(JLMLError, FileNotFoundError):
    """A dataset that is missing or not in the layout torchreid expects."""


class CorruptImageError(JLMLError, OSError):
    """An image file that cannot be decoded."""


class CheckpointError(JLMLError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


class NonFiniteLossError(JLMLError, FloatingPointError):
    """A NaN or inf loss: training stops and the last good checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """The last meaningful line of an exception's message.

    A DataLoader worker re-raises its error in the main process with the worker's
    whole traceback in the message; the error's own sentence is its last line.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    prefix = type(exc).__name__ + ': '
    if prefix in last:
        last = last.split(prefix, 1)[1]
    return last
