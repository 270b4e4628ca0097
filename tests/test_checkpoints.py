"""Checkpoints through torchreid's tools and the plugin's loader; FeatureExtractor; complexity."""
import re

import numpy as np
import pytest
import torch

from jlml_plugin import MODELS, load_checkpoint, torchreid
from jlml_plugin.errors import CheckpointError

SMALL = dict(stem_width=8, global_widths=(4, 8, 8, 16), local_widths=(4, 4, 8, 8))


def _torchreid_style_checkpoint(model, folder):
    """What torchreid's Engine.save_model writes: rank1 is a numpy float32."""
    torchreid.utils.save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1,
                                     'rank1': np.float32(0.5)}, str(folder))
    return str(folder / 'model.pth.tar-1')


def test_state_dict_round_trip_through_torchreid_and_the_plugin_loader(tmp_path):
    torch.manual_seed(0)
    model = MODELS['jlml'](7)
    path = _torchreid_style_checkpoint(model, tmp_path)
    fresh = MODELS['jlml'](7)
    torchreid.utils.load_pretrained_weights(fresh, path)  # uses the plugin's loader
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert load_checkpoint(path)['rank1'] == np.float32(0.5)


@pytest.mark.skipif(tuple(int(p) for p in torch.__version__.split('.')[:2]) < (2, 6),
                    reason='torch < 2.6 loads with weights_only=False by default')
def test_torchreids_own_loader_fails_where_the_plugins_works(tmp_path):
    path = _torchreid_style_checkpoint(MODELS['jlml'](3, **SMALL), tmp_path)
    with pytest.raises(Exception, match='Weights only load failed'):
        torch.load(path)  # what torchreid's load_checkpoint calls (F1)
    assert 'state_dict' in load_checkpoint(path)


def test_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / 'broken.pth.tar'
    bad.write_bytes(b'garbage')
    with pytest.raises(CheckpointError, match=f'cannot read checkpoint {bad}'):
        load_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        load_checkpoint(str(tmp_path / 'missing'))


def test_other_class_count_loads_the_feature_layers_and_says_what_was_skipped(tmp_path, capsys):
    torch.manual_seed(0)
    trained = MODELS['jlml'](9, **SMALL)
    path = _torchreid_style_checkpoint(trained, tmp_path)
    other = MODELS['jlml'](4, **SMALL)
    torchreid.utils.load_pretrained_weights(other, path)
    out = capsys.readouterr().out
    skipped = re.search(r'discarded.*?: (\[.*\])', out).group(1)
    assert 'classifier_g.weight' in skipped and 'classifier_l.bias' in skipped
    assert 'embed' not in skipped
    trained.eval(), other.eval()
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x), trained(x))


def test_feature_extractor_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MODELS['jlml'](5).eval()
    path = _torchreid_style_checkpoint(model, tmp_path)
    extractor = torchreid.utils.FeatureExtractor(model_name='jlml', model_path=path,
                                                 image_size=(160, 64), device='cpu',
                                                 verbose=False)
    images = [np.random.default_rng(i).integers(0, 255, (160, 64, 3), dtype=np.uint8)
              for i in range(3)]
    features = extractor(images)
    assert features.shape == (3, 1024)
    with torch.no_grad():
        expected = model(torch.stack([extractor.preprocess(extractor.to_pil(im)) for im in images]))
    torch.testing.assert_close(features, expected)


def test_feature_extractor_without_weights_builds_with_the_documented_init():
    extractor = torchreid.utils.FeatureExtractor(model_name='jlml_global', image_size=(160, 64),
                                                 device='cpu', verbose=False)
    assert extractor(torch.rand(2, 3, 160, 64)).shape == (2, 512)


def test_complexity_matches_the_readme():
    """The params/FLOPs table in the README is what torchreid measures."""
    readme = open(__file__.replace('tests/test_checkpoints.py', 'README.md')).read()
    for name in ('jlml', 'jlml_global', 'jlml_local'):
        model = MODELS[name](751)
        params, flops = torchreid.utils.compute_model_complexity(model, (1, 3, 160, 64))
        row = re.search(rf'^\| `{name}` \| ([\d.]+) \| ([\d.]+) \|', readme, re.M)
        assert row, f'README lists no complexity row for {name}'
        assert float(row.group(1)) == round(params / 1e6, 2)
        assert float(row.group(2)) == round(flops / 1e9, 3)
