"""jlml-bench runs on tiny sizes and writes valid JSON (speed lives in BENCHMARKS.md)."""
import json

import pytest

from jlml_plugin.cli import bench
from jlml_plugin.tools import timing
from jlml_plugin.engine import JLMLEngine


def test_speed_on_tiny_sizes_writes_json(tmp_path, capsys):
    out = tmp_path / 'speed.json'
    code = bench.main(['speed', '--models', 'jlml,jlml@looped,osnet_x0_25', '--height', '32',
                       '--width', '16', '--batch', '2', '--warmup', '1', '--repeats', '2',
                       '--iters', '1', '--reference', 'osnet_x0_25', '--output', str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data['results']) == {'jlml', 'jlml@looped', 'osnet_x0_25'}
    row = data['results']['jlml']
    assert row['train_images_per_s'] > 0 and row['infer_images_per_s'] > 0 and row['params'] > 0
    assert data['results']['osnet_x0_25']['train_ratio'] == 1.0
    assert len(row['seconds']['train']) == 2
    assert 'jlml@looped' in capsys.readouterr().out


def test_evaluator_benchmark_writes_json(tmp_path):
    out = tmp_path / 'eval.json'
    assert bench.main(['evaluator', '--queries', '20', '--gallery', '60', '--ids', '8',
                       '--cams', '2', '--repeats', '1', '--output', str(out)]) == 0
    data = json.loads(out.read_text())['results']
    assert data['jlml_plugin']['speedup_of_jlml_plugin'] == 1.0
    assert data['torchreid_python']['max_abs_difference_to_plugin'] < 1e-6
    assert data['torchreid_python']['mAP'] == pytest.approx(data['jlml_plugin']['mAP'], abs=1e-6)


def test_data_loader_benchmark(data_root, tmp_path):
    out = tmp_path / 'data.json'
    assert bench.main(['data', '--root', data_root, '--dataset', 'synthreid_tiny', '--height',
                       '64', '--width', '32', '--batch', '4', '--workers', '0', '--batches', '3',
                       '--output', str(out)]) == 0
    assert json.loads(out.read_text())['results']['0'] > 0


def test_unknown_model_is_a_clear_error(capsys):
    assert bench.main(['speed', '--models', 'resnet5O']) == 2
    assert "unknown model 'resnet5O'" in capsys.readouterr().err


def test_profile_prints_the_operator_table(capsys):
    assert bench.main(['profile', '--model', 'jlml_local', '--height', '32', '--width', '16',
                       '--batch', '2', '--steps', '1']) == 0
    out = capsys.readouterr().out
    assert 'Self CPU' in out and 'aten::' in out


def test_speed_times_the_engines_own_training_step(monkeypatch, tmp_path):
    calls = []
    original = JLMLEngine.forward_backward

    def counted(self, data):
        calls.append((type(self.net).__name__, self.regularizer is not None))
        return original(self, data)

    monkeypatch.setattr(JLMLEngine, 'forward_backward', counted)
    timing.speed(['jlml', 'osnet_x0_25'], 32, 16, 2, warmup=1, repeats=2, iters=1,
                reference='osnet_x0_25')
    # per model: the warm-up, then per repeat the Timer's 2 warm-up steps and 1 timed one;
    # JLML's step carries its sparsity terms
    assert sorted(set(calls)) == [('JLML', True), ('OSNet', False)]
    assert len(calls) == 2 * (1 + 2 * (2 + 1))


def test_loop_against_step_on_the_synthetic_set(data_root, tmp_path, capsys):
    out = tmp_path / 'loop.json'
    assert bench.main(['loop', '--config-file', 'configs/jlml_synthetic.yaml', '--threads', '1',
                       '--output', str(out), 'data.root', data_root,
                       'data.sources', "['synthreid_tiny']", 'data.targets', "['synthreid_tiny']",
                       'data.height', '64', 'data.width', '32', 'data.workers', '0',
                       'train.batch_size', '8']) == 0
    assert 'loop / step' in capsys.readouterr().out
    results = json.load(open(out))['results']
    assert results['images'] == results['batches'] * 8  # every batch of the epoch, full
    assert 0 < results['data_wait_seconds'] < results['loop_seconds']
    assert results['loop_over_step'] > 0 and results['loader_alone_images_per_s'] > 0
