"""How a step computes: mixed precision, the memory format, and the stop on a diverged loss.

:class:`MixedPrecision` is fast-reid's ``AMPTrainer`` step as a small object: autocast in
bf16 or fp16, and for fp16 a ``GradScaler``, which skips a step whose gradients
overflow. :func:`to_channels_last` puts a model in NHWC. :class:`NonFiniteGuard` stops
training with one clear line when the loss is no longer a number.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Optional

import torch

from .errors import ConfigError, NonFiniteLossError

__all__ = ['AMP_MODES', 'MAX_SKIPPED_STEPS', 'check_amp', 'MixedPrecision', 'NonFiniteGuard',
           'to_channels_last']

AMP_MODES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
#: With fp16, this many non-finite losses in a row (each step skipped by GradScaler) stop
#: training; one alone is the scaler's routine overflow.
MAX_SKIPPED_STEPS = 20


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in the channels_last (NHWC) memory format, its adaptive pools' outputs made
    contiguous: torchreid's heads flatten them with ``.view``, which fails on an NHWC
    tensor whose pooled grid is larger than 1x1 (PCB's part pooling, 4x1 or 6x1). Those
    outputs are small, so the copy costs nothing that shows."""
    for module in model.modules():
        if isinstance(module, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
            module.register_forward_hook(lambda module, inputs, output: output.contiguous())
    return model.to(memory_format=torch.channels_last)


def check_amp(mode: str, on_gpu: bool = True) -> None:
    """The one check of ``train.amp`` (the runner's config check and the engine share it):
    a known mode, and fp16 only where a GPU runs it (its GradScaler is for CUDA)."""
    if mode not in AMP_MODES:
        raise ConfigError(f'train.amp must be one of {list(AMP_MODES)}, got {mode!r}')
    if mode == 'fp16' and not on_gpu:
        raise ConfigError('train.amp fp16 needs a GPU; use bf16 on the CPU')


class MixedPrecision:
    """``train.amp``: ``'off'``, ``'bf16'`` (autocast) or ``'fp16'`` (autocast and a
    ``GradScaler``)."""

    def __init__(self, mode: str, device_type: str) -> None:
        check_amp(mode)
        self.mode, self.device_type, self.dtype = mode, device_type, AMP_MODES[mode]
        self.scaler = torch.amp.GradScaler(device_type) if mode == 'fp16' else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """Backward and optimizer step; returns whether the step was taken (the scaler
        skips one whose gradients overflow)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # it backs off exactly when it skips

    def state_dict(self) -> Optional[Dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None


class NonFiniteGuard:
    """Counts non-finite losses in a row and stops at ``patience`` of them: 1 normally;
    more under fp16, where GradScaler skips an overflowing step and lowers its scale, so
    an occasional inf is routine and only a run of them means training diverged."""

    def __init__(self, patience: int = 1, hint: str = 'try a lower train.lr') -> None:
        self.patience, self.hint, self.count = patience, hint, 0

    @classmethod
    def for_amp(cls, mode: str) -> 'NonFiniteGuard':
        """The guard for ``train.amp`` ``mode``: patient under fp16's GradScaler."""
        return cls(MAX_SKIPPED_STEPS if mode == 'fp16' else 1,
                   'try a lower train.lr' + (' or train.amp off' if mode != 'off' else ''))

    def check(self, value: float, where: str) -> None:
        """Raises :class:`NonFiniteLossError` when ``value`` ends a run of ``patience``
        non-finite losses; ``where`` says at which step (e.g. ``epoch 3, step 7``)."""
        self.count = 0 if math.isfinite(value) else self.count + 1
        if self.count >= self.patience:
            run = f'{self.count} steps in a row up to ' if self.patience > 1 else ''
            raise NonFiniteLossError(f'the loss became {value} at {run}{where}; training '
                                     f'stopped and the last good checkpoint is kept ({self.hint})')
