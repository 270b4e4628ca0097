"""Registration in torchreid's factories, on each installed layout."""
import importlib
import importlib.metadata
import os
import subprocess

import pytest
import torch

import jlml_plugin
from jlml_plugin import MODELS, _torchreid, torchreid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_registers_every_model_and_dataset():
    factory = _torchreid.model_factory()
    for name, builder in MODELS.items():
        assert factory[name] is builder
    datasets = _torchreid.image_dataset_factory()
    # Each dataset module registers itself (@register_dataset): a new dataset is one file.
    assert set(jlml_plugin.data.DATASETS) == {'synthreid', 'synthreid_tiny', 'cuhk01_seeded',
                                              'cuhk01_tune', 'cuhk01_val'}
    for name, cls in jlml_plugin.data.DATASETS.items():
        assert datasets[name] is cls
    assert datasets['cuhk01_seeded'].__module__ == 'jlml_plugin.data.cuhk01'


def test_torchreids_own_names_keep_their_meaning():
    assert _torchreid.image_dataset_factory()['cuhk01'].__module__.startswith('torchreid.')
    with pytest.raises(ValueError, match="already has a dataset named 'cuhk01'"):
        _torchreid.register_image_dataset('cuhk01', jlml_plugin.data.CUHK01)


def test_no_torchreid_entry_point_is_declared():
    # Neither torchreid layout reads entry points: declaring one would promise discovery.
    assert 'entry-points' not in open(os.path.join(ROOT, 'pyproject.toml')).read()
    groups = importlib.metadata.entry_points(group='torchreid.models')
    assert not [e for e in groups if 'jlml' in e.value]


def test_registering_again_changes_nothing():
    before_models = dict(_torchreid.model_factory())
    before_data = dict(_torchreid.image_dataset_factory())
    jlml_plugin.register()
    importlib.reload(jlml_plugin)  # new function objects for the same definitions
    assert list(_torchreid.model_factory()) == list(before_models)
    assert list(_torchreid.image_dataset_factory()) == list(before_data)


def test_a_different_builder_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already has a model named 'resnet50'"):
        _torchreid.register_model('resnet50', lambda **kw: None)


def test_show_avai_models_lists_the_jlml_models(capsys):
    torchreid.models.show_avai_models()
    out = capsys.readouterr().out
    for name in MODELS:
        assert f"'{name}'" in out


def test_layout_is_detected():
    assert _torchreid.LAYOUT in ('pypi', 'upstream')
    expected = 'torchreid.reid' if _torchreid.LAYOUT == 'pypi' else 'torchreid'
    assert torchreid.__name__ == expected
    assert _torchreid.VERSION == '1.4.0'


@pytest.mark.skipif(_torchreid.LAYOUT != 'pypi', reason='the alias fixes the PyPI layout only')
def test_upstream_style_imports_work_on_the_pypi_layout():
    from torchreid.utils import FeatureExtractor  # F9 on plain PyPI 0.2.5
    assert FeatureExtractor is torchreid.utils.FeatureExtractor


UPSTREAM = os.environ.get('JLML_UPSTREAM_PYTHON', '')


@pytest.mark.skipif(not UPSTREAM, reason='set JLML_UPSTREAM_PYTHON to a python with upstream '
                                         'torchreid 1.4.0 and jlml-plugin installed')
def test_registration_on_the_upstream_layout():
    code = ('import jlml_plugin, torchreid; from jlml_plugin import _torchreid as t; '
            'assert t.LAYOUT == "upstream", t.LAYOUT; '
            'm = torchreid.models.build_model("jlml", 5, pretrained=False, use_gpu=False); '
            'print(type(m).__name__, t.cython_evaluator() is not None)')
    out = subprocess.run([UPSTREAM, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['JLML', 'True']


def test_one_decorator_registers_a_variant_everywhere():
    from functools import partial
    from jlml_plugin.models import default_cfgs, register_variant

    @register_variant(feature_dim=256, classifiers=2)
    def jlml_test_m6(num_classes, loss='softmax', pretrained=False, use_gpu=True, **kwargs):
        return partial(MODELS['jlml'], num_stripes=6, feat_dim=128)(num_classes, loss, **kwargs)

    try:
        assert MODELS['jlml_test_m6'] is jlml_test_m6
        assert _torchreid.model_factory()['jlml_test_m6'] is jlml_test_m6
        assert default_cfgs['jlml_test_m6']['feature_dim'] == 256
        model = torchreid.models.build_model('jlml_test_m6', 3, pretrained=False).eval()
        assert model(torch.randn(1, 3, 192, 64)).shape == (1, 256)
    finally:
        for registry in (MODELS, default_cfgs, _torchreid.model_factory()):
            registry.pop('jlml_test_m6', None)
