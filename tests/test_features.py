"""A model rebuilt from a checkpoint is the model that was trained, or an error says why."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from jlml_plugin import MODELS, CheckpointFeatureExtractor, load_feature_model
from jlml_plugin.checkpoint import save_checkpoint
from jlml_plugin.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not the defaults: torchreid's FeatureExtractor would build a 1024-D JLML by name.
KWARGS = dict(num_stripes=4, feat_dim=128, dropout=0.5, stem_width=8,
              global_widths=[4, 8, 8, 16], local_widths=[4, 4, 8, 8])
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model = MODELS['jlml'](12, **KWARGS)
    model.train()
    with torch.no_grad():  # running BN statistics that differ from a fresh model's
        for _ in range(3):
            model(torch.randn(8, 3, 64, 32) * 2 + 1)
    meta = dict(model_name='jlml', num_classes=12, input_size=[3, 64, 32], mean=MEAN,
                std=STD, model_kwargs=KWARGS)
    path = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1, 'rank1': 0.0,
                            'meta': meta}, str(tmp_path_factory.mktemp('ckpt')))
    return model.eval(), path


def _own_features(model, paths):
    preprocess = T.Compose([T.Resize((64, 32)), T.ToTensor(), T.Normalize(MEAN, STD)])
    with torch.no_grad():
        return model(torch.stack([preprocess(Image.open(p).convert('RGB')) for p in paths]))


def test_example_features_equal_the_trained_models_eval_output(trained, data_root, tmp_path):
    model, path = trained
    images = os.path.join(data_root, 'synthreid', 'synthreid_tiny-seed0', 'query')
    out = tmp_path / 'features.npy'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'examples', 'extract_features.py'),
                           '--checkpoint', path, '--images', images, '--output', str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    paths = sorted(os.path.join(images, n) for n in os.listdir(images))
    features = np.load(out)
    assert features.shape == (len(paths), 256)
    np.testing.assert_allclose(features, _own_features(model, paths).numpy(), rtol=1e-5,
                               atol=1e-5)


def test_extractor_accepts_what_torchreids_does(trained, data_root):
    model, path = trained
    images = os.path.join(data_root, 'synthreid', 'synthreid_tiny-seed0', 'query')
    paths = sorted(os.path.join(images, n) for n in os.listdir(images))[:3]
    extractor = CheckpointFeatureExtractor(path)
    torch.testing.assert_close(extractor(paths), _own_features(model, paths))
    torch.testing.assert_close(extractor(paths[0]), _own_features(model, paths[:1]))


def test_a_partial_load_is_an_error_naming_the_missing_keys(trained, tmp_path):
    model, _ = trained
    state = {k: v for k, v in model.state_dict().items() if not k.startswith('local_branch')}
    meta = dict(model_name='jlml', input_size=[3, 64, 32], model_kwargs=KWARGS)
    path = save_checkpoint({'state_dict': state, 'epoch': 1, 'rank1': 0.0, 'meta': meta},
                           str(tmp_path))
    with pytest.raises(CheckpointError, match=r'missing, 0 mismatched \(local_branch\.'):
        load_feature_model(path)


def test_kwargs_the_metadata_lacks_make_every_layer_mismatch(trained, tmp_path):
    model, _ = trained
    meta = dict(model_name='jlml', input_size=[3, 64, 32])  # feat_dim 128 not recorded
    path = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1, 'rank1': 0.0,
                            'meta': meta}, str(tmp_path))
    with pytest.raises(CheckpointError, match='does not fit jlml'):
        load_feature_model(path)


def test_another_input_size_than_the_trained_one_warns(trained):
    _, path = trained
    with pytest.warns(UserWarning, match='trained on 64x32 images; extracting at 128x64'):
        load_feature_model(path, input_size=(128, 64))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        load_feature_model(path)

