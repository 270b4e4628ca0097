"""Every script in examples/ runs on the synthetic set and does what it says."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from jlml_plugin import MODELS
from jlml_plugin.tools import report
from jlml_plugin.checkpoint import save_checkpoint

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'examples')
KWARGS = dict(num_stripes=4, feat_dim=512, dropout=0.0, stem_width=8,
              global_widths=[4, 8, 8, 16], local_widths=[4, 4, 8, 8])


def _example(name, *args, env=None):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = MODELS['jlml'](12, **KWARGS)
    meta = dict(model_name='jlml', num_classes=12, input_size=[3, 64, 32],
                mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], model_kwargs=KWARGS)
    return save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1, 'rank1': 0.0,
                            'meta': meta}, str(tmp_path_factory.mktemp('ckpt')))


def test_extract_features(checkpoint, data_root, tmp_path):
    images = os.path.join(data_root, 'synthreid', 'synthreid_tiny-seed0', 'query')
    out = tmp_path / 'features.npy'
    stdout = _example('extract_features.py', '--checkpoint', checkpoint, '--images', images,
                      '--output', str(out))
    features = np.load(out)
    assert features.shape == (len(os.listdir(images)), 1024) and np.isfinite(features).all()
    assert '-> 1024-D features' in stdout


def test_visrank(checkpoint, data_root, tmp_path):
    _example('visrank.py', '--checkpoint', checkpoint, '--root', data_root, '--dataset',
             'synthreid_tiny', '--save-dir', str(tmp_path), '--topk', '3')
    pictures = os.listdir(tmp_path / 'visrank_synthreid_tiny')
    assert len(pictures) == 10 and all(p.endswith('.jpg') for p in pictures)


def test_branch_features(checkpoint, data_root, tmp_path):
    record = tmp_path / 'scores.json'
    out = _example('branch_features.py', '--checkpoint', checkpoint, '--root', data_root,
                   '--dataset', 'synthreid_tiny', '--output', str(record))
    assert 'synthreid_tiny split 0: 10 queries x 10 gallery' in out
    scores = {line.split(' R1 ')[0].strip(): line for line in out.splitlines() if ' R1 ' in line}
    views = ['global', 'local', 'joined', 'joined, L2-normalised',
             'each half normalised, joined']
    assert list(scores) == [f'{v}, {where}' for where in ('after ReLU', 'before ReLU')
                            for v in views]
    saved = json.loads(record.read_text())
    assert list(saved['scores']) == list(scores) == list(saved['queries'])
    for label, line in scores.items():
        assert f"R1 {saved['scores'][label]['rank1']:.1%}" in line and 'mAP' in line
        outcomes = saved['queries'][label]
        assert len(outcomes['pid']) == 10  # every query, and they recompute the scores
        assert np.mean(np.array(outcomes['first_rank']) == 1) == pytest.approx(saved['scores'][label]['rank1'])
        assert np.mean(outcomes['ap']) == pytest.approx(saved['scores'][label]['mAP'], abs=1e-5)


def test_plot_cmc(tmp_path):
    for label, split, r1 in (('jlml', 0, 0.6), ('jlml', 1, 0.7), ('osnet_x1_0', 0, 0.5)):
        cmc = np.minimum(1.0, r1 + np.arange(50) * 0.02).tolist()
        report.append_record(str(tmp_path), dict(
            label=label, model=label, group='models', split_id=split, cmc=cmc, rank1=cmc[0],
            rank5=cmc[4], rank10=cmc[9], rank20=cmc[19], mAP=0.5, mINP=0.3, params=1, gflops=1.0,
            input='160x64', epochs=1, train_images_per_s=1.0, wall_seconds=1.0))
    out = tmp_path / 'cmc.png'
    stdout = _example('plot_cmc.py', '--results', str(tmp_path), '--output', str(out))
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'jlml                 R1 65.0%' in stdout and '(2 splits)' in stdout


def test_sparsity_hook_on_osnet(data_root, tmp_path):
    stdout = _example('sparsity_on_osnet.py', '--root', data_root, '--dataset', 'synthreid_tiny',
                      '--height', '64', '--width', '32', '--epochs', '2', '--weight', '0.05',
                      '--save-dir', str(tmp_path))
    line = [s for s in stdout.splitlines() if s.startswith('||fc.0.weight||_2,1')][0]
    before, after = (float(v) for v in line.split(':')[1].split(';')[0].split('->'))
    assert after < before
    assert 'reg_fc' in stdout  # the hook's term is logged with the losses


def test_python_api_example(tmp_path):
    stdout = _example('python_api.py', env={'HOME': str(tmp_path)})
    assert "'rank1':" in stdout and "'mAP':" in stdout
