import os

import pytest
import torch

import jlml_plugin  # noqa: F401  registers the plugin for every test

torch.set_num_threads(2)


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """A datasets folder holding the tiny synthetic set (drawn once per session)."""
    root = tmp_path_factory.mktemp('reid-data')
    from jlml_plugin.data.synthetic import generate
    for split_id in (0, 1):
        generate(str(root), 'synthreid_tiny', split_id)
    return str(root)


@pytest.fixture
def tiny_opts(data_root, tmp_path):
    """KEY VALUE overrides for a seconds-long CLI training on synthreid_tiny."""
    return ['data.root', data_root, 'data.sources', "['synthreid_tiny']",
            'data.targets', "['synthreid_tiny']", 'data.height', '64', 'data.width', '32',
            'data.workers', '0', 'data.save_dir', str(tmp_path / 'log'),
            'train.max_epoch', '1', 'train.batch_size', '8', 'train.print_freq', '1',
            'test.batch_size', '50', 'test.ranks', '[1, 5]', 'model.pretrained', 'False']


def pytest_configure(config):
    os.environ.setdefault('TORCH_HOME', str(config.rootpath / '.pytest_cache' / 'torch-home'))
