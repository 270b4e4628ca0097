"""The plugin's only door to torchreid, and the home of its fixes.

torchreid ships in two layouts with identical code:

* PyPI ``torchreid`` 0.2.5 (an unofficial repack) puts everything under ``torchreid.reid``;
* upstream deep-person-reid 1.4.0, installed from git, puts it under ``torchreid``.

Everything else in :mod:`jlml_plugin` reaches torchreid through the names exported here,
so the difference lives in one place. The fixes below patch module globals that torchreid
reads at call time; none edits torchreid's files. Each is described in ``docs/compat.md``.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .errors import CheckpointError, CorruptImageError


def _import_torchreid():
    with warnings.catch_warnings():
        # Both layouts warn at import that the Cython evaluator is missing; the plugin's
        # exact vectorised evaluator replaces the Python fallback (see install_evaluator).
        warnings.filterwarnings('ignore', message='Cython evaluation')
        try:
            return importlib.import_module('torchreid.reid'), 'pypi'
        except ModuleNotFoundError as exc:
            if exc.name == 'torchreid':
                raise ImportError(
                    'jlml-plugin needs torchreid: `pip install torchreid==0.2.5`, or install '
                    'upstream deep-person-reid from git (see docs/compat.md)') from exc
            if exc.name != 'torchreid.reid':
                raise
        return importlib.import_module('torchreid'), 'upstream'


torchreid, LAYOUT = _import_torchreid()
#: torchreid's own version string: '1.4.0' in both layouts (the PyPI wrapper says 0.2.5).
VERSION: str = getattr(torchreid, '__version__', 'unknown')
PACKAGE_VERSION: str = getattr(sys.modules['torchreid'], '__version__', VERSION)

data = torchreid.data
engine = torchreid.engine
losses = torchreid.losses
metrics = torchreid.metrics
models = torchreid.models
optim = torchreid.optim
utils = torchreid.utils

_rank = importlib.import_module(metrics.__name__ + '.rank')
_torchtools = importlib.import_module(utils.__name__ + '.torchtools')
_tools = importlib.import_module(utils.__name__ + '.tools')
_dataset_module = importlib.import_module(data.__name__ + '.datasets.dataset')
_datasets_package = importlib.import_module(data.__name__ + '.datasets')
_sampler_module = importlib.import_module(data.__name__ + '.sampler')
_optimizer_module = importlib.import_module(optim.__name__ + '.optimizer')
_scheduler_module = importlib.import_module(optim.__name__ + '.lr_scheduler')


def describe() -> str:
    """One line naming the torchreid in use, e.g. ``torchreid 1.4.0 (PyPI 0.2.5, torchreid.reid)``."""
    if LAYOUT == 'pypi':
        return f'torchreid {VERSION} (PyPI {PACKAGE_VERSION}, torchreid.reid)'
    return f'torchreid {VERSION} (upstream, torchreid)'


# --------------------------------------------------------------------------------------
# Registries. torchreid has no plugin API: its factories are module-level dicts that
# build_model / init_image_dataset read at call time, under names that start with two
# underscores (so they must be looked up as strings, never as attributes in a class body).


def model_factory() -> Dict[str, Callable]:
    return vars(models)['__model_factory']


def image_dataset_factory() -> Dict[str, type]:
    return vars(_datasets_package)['__image_datasets']


def _same_object(a: Any, b: Any) -> bool:
    # A reloaded module makes new function objects for the same definition.
    key = lambda f: (getattr(f, '__module__', None), getattr(f, '__qualname__', None))  # noqa: E731
    return a is b or key(a) == key(b)


def _register(registry: Dict[str, Any], kind: str, name: str, obj: Any) -> None:
    current = registry.get(name)
    if current is None or _same_object(current, obj):
        registry[name] = obj
        return
    raise ValueError(f'torchreid already has a {kind} named {name!r} ({current!r}); '
                     f'choose another name')


def register_model(name: str, builder: Callable) -> None:
    """Adds ``builder`` to torchreid's model factory under ``name``, idempotently.

    The builder must take torchreid's signature
    ``(num_classes, loss='softmax', pretrained=True, use_gpu=True)``; use
    :func:`functools.partial` to fix further keyword arguments.
    """
    _register(model_factory(), 'model', name, builder)


def register_image_dataset(name: str, dataset: type) -> None:
    """Adds an image dataset class to torchreid's dataset factory, idempotently; a taken
    name (torchreid's own ``cuhk01``, say) is never rebound."""
    _register(image_dataset_factory(), 'dataset', name, dataset)


def available_samplers() -> list:
    return list(_sampler_module.AVAI_SAMPLERS)


def available_optimizers() -> list:
    return list(_optimizer_module.AVAI_OPTIMS)


def available_schedulers() -> list:
    return list(_scheduler_module.AVAI_SCH)


# --------------------------------------------------------------------------------------
# F1: torch >= 2.6 loads with weights_only=True, and torchreid's checkpoints hold a numpy
# float32 'rank1'. Allow exactly the numpy scalar types such files contain; nothing else.


def _numpy_scalar_globals() -> list:
    allowed = [np.dtype]
    for module_name in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            allowed.append(importlib.import_module(module_name).scalar)
        except (ImportError, AttributeError):
            pass
    allowed.extend(getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith('DType'))
    return allowed


def load_checkpoint(fpath: str) -> Dict[str, Any]:
    """Loads a torchreid checkpoint safely (``weights_only=True``) on any torch version.

    Unlike torchreid's own loader, it reads files whose ``rank1`` is a numpy scalar
    (every checkpoint torchreid's ``Engine.save_model`` writes) on torch >= 2.6.
    """
    fpath = os.path.abspath(os.path.expanduser(str(fpath)))
    if not os.path.isfile(fpath):
        raise CheckpointError(f'checkpoint not found: {fpath}')
    map_location = None if torch.cuda.is_available() else 'cpu'
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(fpath, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f'cannot read checkpoint {fpath}: {first}') from exc


# --------------------------------------------------------------------------------------
# torchreid's read_image retries forever on an IOError, so one corrupt file hangs a run.


def read_image(path: str):
    """Reads an RGB image; a missing or undecodable file raises an error naming it."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except FileNotFoundError as exc:
        raise CorruptImageError(f'image file not found: {path}') from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f'cannot read image {path}: {exc}') from exc


# --------------------------------------------------------------------------------------


def install_fixes() -> None:
    """Applies the plugin's torchreid fixes; calling it again changes nothing."""
    for module in (_torchtools, utils):
        module.load_checkpoint = load_checkpoint
    for module in (_tools, utils, _dataset_module):
        module.read_image = read_image
    if LAYOUT == 'pypi':
        # Upstream-style imports (`from torchreid.utils import ...`, upstream scripts)
        # fail on the PyPI layout (F9); alias the subpackages, never overriding.
        for sub in ('data', 'engine', 'losses', 'metrics', 'models', 'optim', 'utils'):
            sys.modules.setdefault('torchreid.' + sub, getattr(torchreid, sub))


def install_evaluator(evaluate: Callable) -> None:
    """Makes torchreid's ``metrics.evaluate_rank`` use ``evaluate`` instead of its Python fallback.

    torchreid still prefers its compiled Cython evaluator when that is built.
    """
    _rank.evaluate_py = evaluate


def cython_evaluator() -> Optional[Callable]:
    """torchreid's compiled evaluator, or None where it is not built (always on PyPI 0.2.5)."""
    return _rank.evaluate_cy if getattr(_rank, 'IS_CYTHON_AVAI', False) else None


def reference_evaluators() -> Dict[str, Callable]:
    """torchreid's own pure-Python ``eval_market1501`` and ``eval_cuhk03`` (for tests and benchmarks)."""
    return {'market1501': _rank.eval_market1501, 'cuhk03': _rank.eval_cuhk03}
