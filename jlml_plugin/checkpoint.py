"""Checkpoints that survive interruption, and resuming from them.

Files keep torchreid's layout and keys (``<save_dir>/model/model.pth.tar-<epoch>`` with
``state_dict``, ``epoch``, ``rank1``, ``optimizer``, ``scheduler``), so torchreid's own
``load_pretrained_weights`` and ``FeatureExtractor`` read them. The plugin adds the RNG
states (for a resumed run to continue exactly), the AMP scaler, and ``meta``: what is
needed to rebuild the model (name, keyword arguments, input size, normalisation).

Writes go to a temporary file in the same folder, then ``os.replace``: a crash leaves
either the old file or the new one, never half of one. Every value is a tensor or a
plain Python value, so files load with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import glob
import os
import random
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ._files import atomic_open
from ._torchreid import load_checkpoint
from .distributed import unwrap
from .errors import CheckpointError, one_line

__all__ = ['atomic_save', 'training_state', 'save_checkpoint', 'latest_checkpoint',
           'latest_readable_checkpoint', 'model_state', 'resume',
           'rng_state', 'set_rng_state', 'load_checkpoint']

PREFIX = 'model.pth.tar-'


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def rng_state() -> Dict[str, Any]:
    """Python, numpy and torch RNG states, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state = dict(python=random.getstate(), torch=torch.get_rng_state(),
                 numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)),
                            pos=int(np_state[2]), has_gauss=int(np_state[3]),
                            cached_gaussian=float(np_state[4])))
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(_as_tuple(state['python']))
    torch.set_rng_state(state['torch'])
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['keys'].numpy().astype(np.uint32), npy['pos'],
                         npy['has_gauss'], npy['cached_gaussian']))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def training_state(model: torch.nn.Module, optimizer, scheduler, epoch: int, rank1: float,
                   **extra: Any) -> Dict[str, Any]:
    """torchreid's checkpoint keys (``epoch`` is the next one to run; ``rank1`` a float,
    F1), the RNG states and ``extra`` (the plugin's ``scaler``, ``meta``, ``counters``).
    Without a scheduler the key is left out: torchreid's ``resume_from_checkpoint``
    loads one whenever the key is there and it is given a scheduler (F2)."""
    state = dict(state_dict=model.state_dict(), epoch=epoch + 1, rank1=float(rank1),
                 optimizer=optimizer.state_dict(), rng=rng_state(), **extra)
    if scheduler is not None:
        state['scheduler'] = scheduler.state_dict()
    return state


def save_checkpoint(state: Dict[str, Any], save_dir: str, keep: int = 2) -> str:
    """Writes ``state`` as ``<save_dir>/model.pth.tar-<epoch>`` and keeps only the newest
    ``keep`` such files (0 keeps all). Returns the path."""
    path = os.path.join(save_dir, f'{PREFIX}{state["epoch"]}')
    atomic_save(state, path)
    if keep > 0:
        for old in _checkpoints(save_dir)[:-keep]:
            os.remove(old)
    return path


def _checkpoints(save_dir: str) -> list:
    found = []
    for path in glob.glob(os.path.join(glob.escape(save_dir), PREFIX + '*')):
        match = re.fullmatch(re.escape(PREFIX) + r'(\d+)', os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _newest_first(save_dir: str) -> List[str]:
    """Every checkpoint under ``save_dir`` (searched recursively), newest first."""
    candidates = []
    for folder, _, _ in os.walk(save_dir):
        candidates += _checkpoints(folder)
    return sorted(candidates, key=lambda p: (_epoch(p), os.path.getmtime(p)), reverse=True)


def _epoch(path: str) -> int:
    """The epoch a checkpoint's name (``model.pth.tar-<epoch>``) records."""
    return int(path.rsplit('-', 1)[1])


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The newest checkpoint under ``save_dir`` (searched recursively), or None."""
    return next(iter(_newest_first(save_dir)), None)


def epochs_done(save_dir: str) -> int:
    """How many epochs the newest checkpoint under ``save_dir`` has trained (0 if none)."""
    path = latest_checkpoint(save_dir)
    return _epoch(path) if path else 0


def latest_readable_checkpoint(save_dir: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The newest checkpoint under ``save_dir`` that loads, with its contents, or None if
    there is none. A newer one that does not load (a crash mid-copy, a full disk) is
    passed over with one line saying so; if none loads, that is an error."""
    paths = _newest_first(save_dir)
    for path in paths:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            print(f'=> {one_line(exc)}; trying the checkpoint before it', flush=True)
    if paths:
        raise CheckpointError(f'none of the {len(paths)} checkpoints under {save_dir} can be '
                              f'read; start again in a new data.save_dir')
    return None


def model_state(checkpoint: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """A checkpoint's weights with the ``module.`` prefix of (Distributed)DataParallel
    removed; a bare state dict is taken as it is."""
    state = checkpoint.get('state_dict', checkpoint)
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def resume(path: str, model: torch.nn.Module, optimizer=None, scheduler=None,
           scaler=None, checkpoint: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Restores weights, optimizer, scheduler, scaler and RNG states from ``path`` (or
    from ``checkpoint``, its contents already loaded); returns the checkpoint (its
    ``epoch`` is the next epoch to run)."""
    if checkpoint is None:
        checkpoint = load_checkpoint(path)
    state_dict = model_state(checkpoint)
    target = unwrap(model)
    try:
        target.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f'{path} does not fit this model (resume needs the same model '
                              f'and number of classes): {str(exc).splitlines()[0]}') from exc
    for name, obj in (('optimizer', optimizer), ('scheduler', scheduler), ('scaler', scaler)):
        if obj is not None and checkpoint.get(name) is not None:
            obj.load_state_dict(checkpoint[name])
    if 'rng' in checkpoint:
        set_rng_state(checkpoint['rng'])
    return checkpoint
