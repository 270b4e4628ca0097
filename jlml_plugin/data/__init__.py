"""Datasets the plugin adds to torchreid, and the check that a dataset is on disk. Each
dataset is one module of this package, registered by ``@register_dataset``
(:mod:`jlml_plugin.data.registry`); every module here is imported with the package."""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import List

from .. import _torchreid
from ..errors import ConfigError, DataError
from .registry import DATASETS, LAYOUTS, register_dataset

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_module.name}')

from .cuhk01 import CUHK01, CUHK01Tuning, CUHK01Validation  # noqa: E402  (re-exported)
from .synthetic import SynthReID, SynthReIDTiny  # noqa: E402

__all__ = ['CUHK01', 'CUHK01Tuning', 'CUHK01Validation', 'SynthReID', 'SynthReIDTiny',
           'DATASETS', 'register_dataset', 'register_datasets', 'check_datasets']


def register_datasets() -> None:
    """Registers every dataset of :data:`DATASETS` in torchreid's factory under its own
    name (torchreid's ``cuhk01`` keeps its meaning); idempotent."""
    for name, cls in DATASETS.items():
        _torchreid.register_image_dataset(name, cls)


def check_datasets(names: List[str], root: str, split_id: int = 0) -> None:
    """Fails fast, before any model is built, on an unknown or missing dataset, or a
    split id that a dataset with seeded splits does not have.

    torchreid would otherwise try to download a missing set (failing offline after a
    long wait) or raise deep inside its loader.
    """
    factory = _torchreid.image_dataset_factory()
    for name in names:
        if name not in factory:
            raise ConfigError(f'unknown dataset {name!r}; torchreid knows: {", ".join(sorted(factory))}')
        if hasattr(factory[name], 'identities'):  # seeded splits: the dataset checks its ids
            factory[name].identities(split_id)
        if name in DATASETS and name not in LAYOUTS:
            continue  # draws itself on first use
        folder = os.path.join(os.path.abspath(os.path.expanduser(root)),
                              getattr(factory[name], 'dataset_dir', name))
        if not os.path.isdir(folder):
            layout = LAYOUTS.get(name, f'{os.path.basename(folder)}/ as in torchreid\'s datasets docs')
            raise DataError(f'dataset {name!r} not found: looked in {folder}; torchreid expects '
                            f'<data.root>/{layout} (set data.root or --root)')
