"""One registry for the plugin's datasets: ``@register_dataset(name, layout)`` on a torchreid
``ImageDataset`` class puts it in :data:`DATASETS`, which :func:`jlml_plugin.data.register_datasets`
hands to torchreid's factory, and its folder layout in :data:`LAYOUTS`, which the
not-found error quotes. Every module of :mod:`jlml_plugin.data` is imported on import, so
a new dataset is one file."""
from __future__ import annotations

from typing import Callable, Dict

__all__ = ['DATASETS', 'LAYOUTS', 'register_dataset']

#: The plugin's datasets, by torchreid name.
DATASETS: Dict[str, type] = {}
#: Where torchreid looks for each dataset below ``data.root``: its own, then the plugin's.
LAYOUTS = {
    'market1501': 'market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/',
    'dukemtmcreid': 'dukemtmc-reid/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}/',
    'cuhk03': 'cuhk03/cuhk03_release/cuhk-03.mat (+ cuhk03_new_protocol_config_*.mat)',
    'msmt17': 'msmt17/MSMT17_V1 or MSMT17_V2/{train,test,list_*.txt}',
    'cuhk01': 'cuhk01/campus/NNNNIII.png (971 identities x 4 images)',
    'viper': 'viper/VIPeR/{cam_a,cam_b}/',
    'grid': 'grid/underground_reid/{probe,gallery,features_and_partitions.mat}',
}


def register_dataset(name: str, layout: str = '') -> Callable[[type], type]:
    """Registers the decorated dataset class under ``name``; ``layout`` says where its files
    lie below ``data.root`` ('' for a dataset that draws itself)."""
    def register(cls: type) -> type:
        DATASETS[name] = cls
        if layout:
            LAYOUTS[name] = layout
        return cls
    return register
