"""Datasets the plugin adds to torchreid, and the check that a dataset is on disk."""
from __future__ import annotations

import os
from typing import List

from .. import _torchreid
from ..errors import ConfigError, DataError
from .cuhk01 import CUHK01, CUHK01Tuning, CUHK01Validation
from .synthetic import PRESETS, SynthReID, SynthReIDTiny

__all__ = ['CUHK01', 'CUHK01Tuning', 'CUHK01Validation', 'SynthReID', 'SynthReIDTiny', 'register_datasets',
           'check_datasets']

#: Where torchreid looks for the datasets the configs name, below ``data.root``.
LAYOUTS = {
    'market1501': 'market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/',
    'dukemtmcreid': 'dukemtmc-reid/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/',
    'cuhk03': 'cuhk03/cuhk03_release/cuhk-03.mat (+ cuhk03_new_protocol_config_*.mat)',
    'msmt17': 'msmt17/MSMT17_V1 or MSMT17_V2/{train,test,list_*.txt}',
    'cuhk01': 'cuhk01/campus/NNNNIII.png (971 identities x 4 images)',
    'viper': 'viper/VIPeR/{cam_a,cam_b}/',
    'grid': 'grid/underground_reid/{probe,gallery,features_and_partitions.mat}',
}
LAYOUTS['cuhk01_seeded'] = LAYOUTS['cuhk01_tune'] = LAYOUTS['cuhk01_val'] = LAYOUTS['cuhk01']  # the same images


def register_datasets() -> None:
    """Registers the ``synthreid`` presets and CUHK01 with seeded splits under names of
    its own (``cuhk01_seeded``, ``cuhk01_tune``, ``cuhk01_val``; torchreid's ``cuhk01``
    keeps its meaning); idempotent."""
    _torchreid.register_image_dataset('synthreid', SynthReID)
    _torchreid.register_image_dataset('synthreid_tiny', SynthReIDTiny)
    _torchreid.register_image_dataset('cuhk01_seeded', CUHK01)
    _torchreid.register_image_dataset('cuhk01_tune', CUHK01Tuning)
    _torchreid.register_image_dataset('cuhk01_val', CUHK01Validation)


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
        if name in PRESETS:
            continue  # drawn on first use
        folder = os.path.join(os.path.abspath(os.path.expanduser(root)),
                              getattr(factory[name], 'dataset_dir', name))
        if not os.path.isdir(folder):
            layout = LAYOUTS.get(name, f'{os.path.basename(folder)}/ as in torchreid\'s datasets docs')
            raise DataError(f'dataset {name!r} not found: looked in {folder}; torchreid expects '
                            f'<data.root>/{layout} (set data.root or --root)')
