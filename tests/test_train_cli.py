"""jlml-train end to end on the tiny synthetic set: training, resume, logs, bad input."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from jlml_plugin.cli import train as train_cli
from jlml_plugin.config import flatten, load_config
from jlml_plugin.engine import JLMLEngine

TB_TAGS = {'Train/loss', 'Train/loss_global', 'Train/loss_local', 'Train/acc_global',
           'Train/acc_local', 'Train/reg_global', 'Train/reg_local', 'Train/lr',
           'Test/synthreid_tiny/rank1', 'Test/synthreid_tiny/mAP', 'Test/synthreid_tiny/mINP'}


def _run(argv, capsys):
    code = train_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _final_state(save_dir):
    path = sorted(glob.glob(os.path.join(save_dir, 'model', 'model.pth.tar-*')))[-1]
    return torch.load(path, weights_only=True)


def test_one_epoch_of_jlml_prints_metrics_and_writes_checkpoint_and_tensorboard(tiny_opts, tmp_path, capsys):
    code, out, err = _run(['model.name', 'jlml', *tiny_opts], capsys)
    assert code == 0, err
    assert 'Rank-1' in out and 'mAP' in out and 'mINP' in out
    state = _final_state(str(tmp_path / 'log'))
    assert state['epoch'] == 1 and isinstance(state['rank1'], float)
    assert state['meta']['model_name'] == 'jlml' and state['meta']['input_size'] == [3, 64, 32]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / 'log'))
    acc.Reload()
    assert TB_TAGS <= set(acc.Tags()['scalars'])
    assert glob.glob(str(tmp_path / 'log' / 'train.log-*'))
    # The run records itself: a resolved config that reloads to the same config.
    saved = str(tmp_path / 'log' / 'config.yaml')
    cfg = load_config(saved)
    assert cfg.model.name == 'jlml' and cfg.train.max_epoch == 1
    default = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', train_cli.DEFAULT_CONFIG)
    assert flatten(cfg) == flatten(load_config(default, ['model.name', 'jlml', *tiny_opts]))
    assert json.load(open(tmp_path / 'log' / 'environment.json'))['torch'] == torch.__version__
    # ... and what it printed last: the final evaluation, the speed and the wall time.
    results = json.load(open(tmp_path / 'log' / 'results.json'))
    assert results['targets']['synthreid_tiny']['rank1'] == pytest.approx(state['rank1'])
    assert f"Rank-1  : {results['targets']['synthreid_tiny']['rank1']:.1%}" in out
    assert results['epochs'] == 1 and results['train_images_per_s'] > 0


def test_sources_and_targets_do_not_swallow_overrides(data_root, tmp_path, capsys):
    # torchreid's main.py reads `model.name` as a dataset name here (F10).
    code, out, err = _run(['-s', 'synthreid_tiny', '-t', 'synthreid_tiny', '--root', data_root,
                           'model.name', 'jlml_global', 'data.height', '64', 'data.width', '32',
                           'data.workers', '0', 'train.max_epoch', '1', 'train.batch_size', '8',
                           'data.save_dir', str(tmp_path), 'model.pretrained', 'False',
                           'test.ranks', '[1]'], capsys)
    assert code == 0, err
    assert _final_state(str(tmp_path))['meta']['model_name'] == 'jlml_global'


@pytest.mark.slow
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_opts, tmp_path, capsys,
                                                                 monkeypatch):
    def opts(save_dir):
        out = list(tiny_opts)
        out[out.index('data.save_dir') + 1] = str(save_dir)
        out[out.index('train.max_epoch') + 1] = '3'
        return out + ['data.transforms', "['random_flip', 'random_crop']", 'test.eval_freq', '2']

    assert _run(opts(tmp_path / 'straight'), capsys)[0] == 0

    original = JLMLEngine.train

    def interrupted(self, *args, **kwargs):
        if self.epoch == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JLMLEngine, 'train', interrupted)
    code, _, err = _run(opts(tmp_path / 'resumed'), capsys)
    assert code == 130 and 'resume with --resume' in err
    assert _final_state(str(tmp_path / 'resumed'))['epoch'] == 2
    # Say the interrupted segment took 1000 s: the resumed run's wall time must include it.
    interrupted_path = sorted(glob.glob(str(tmp_path / 'resumed' / 'model' / 'model.pth.tar-*')))[-1]
    state = torch.load(interrupted_path, weights_only=True)
    state['counters']['wall_seconds'] = 1000.0
    torch.save(state, interrupted_path)
    monkeypatch.setattr(JLMLEngine, 'train', original)
    code, out, err = _run(opts(tmp_path / 'resumed') + ['--resume'], capsys)
    assert code == 0, err
    assert 'continuing at epoch 3' in out

    a, b = _final_state(str(tmp_path / 'straight')), _final_state(str(tmp_path / 'resumed'))
    assert a['epoch'] == b['epoch'] == 3
    # The throughput counters carry over: 3 epochs of images, not the last one only.
    assert b['counters']['train_images'] == a['counters']['train_images'] > 0
    assert a['counters']['wall_seconds'] < 1000 < b['counters']['wall_seconds']
    for key in a['state_dict']:
        assert torch.equal(a['state_dict'][key], b['state_dict'][key]), key


def test_resume_refuses_a_checkpoint_trained_with_another_config(tiny_opts, tmp_path, capsys):
    # A changed default (λ, say) must not finish an old run under the new config's name.
    assert _run(['model.name', 'jlml', *tiny_opts], capsys)[0] == 0
    code, _, err = _run(['model.name', 'jlml', *tiny_opts, 'jlml.reg_local.weight', '0.5',
                         '--resume'], capsys)
    assert code == 2
    assert "jlml.reg_local.weight" in err and '0.5 now' in err and 'new data.save_dir' in err
    # Where the data lives, the loader and what is evaluated may change.
    code, out, err = _run(['model.name', 'jlml', *tiny_opts, 'data.root', tiny_opts[1] + '/',
                           'test.ranks', '[1]', '--resume'], capsys)
    assert code == 0, err
    assert 'continuing at epoch 2' in out


def test_resume_passes_over_a_corrupt_newest_checkpoint(tiny_opts, tmp_path, capsys):
    opts = list(tiny_opts)
    opts[opts.index('train.max_epoch') + 1] = '2'
    assert _run(opts, capsys)[0] == 0
    newest = tmp_path / 'log' / 'model' / 'model.pth.tar-2'
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy cut short
    code, out, err = _run(opts + ['--resume'], capsys)
    assert code == 0, err
    assert f'cannot read checkpoint {newest}' in out and 'trying the checkpoint before it' in out
    assert f'Resumed from {tmp_path / "log" / "model" / "model.pth.tar-1"}: continuing at epoch 2' in out
    assert _final_state(str(tmp_path / 'log'))['epoch'] == 2  # epoch 2 trained again, saved whole
    # With every checkpoint unreadable, it says so in one line.
    for path in (tmp_path / 'log' / 'model').iterdir():
        path.write_bytes(b'not a checkpoint')
    code, _, err = _run(opts + ['--resume'], capsys)
    assert code == 2 and err.count('\n') == 1
    assert 'none of the 2 checkpoints under' in err and 'start again in a new data.save_dir' in err


def test_keeps_only_the_newest_checkpoints(tiny_opts, tmp_path, capsys):
    opts = list(tiny_opts)
    opts[opts.index('train.max_epoch') + 1] = '3'
    assert _run(opts + ['train.keep_checkpoints', '2'], capsys)[0] == 0
    names = sorted(os.listdir(tmp_path / 'log' / 'model'))
    assert names == ['model.pth.tar-2', 'model.pth.tar-3']


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_opts, tmp_path,
                                                                          capsys, monkeypatch):
    original = JLMLEngine.compute_losses

    def poisoned(self, outputs, pids):
        loss, summary = original(self, outputs, pids)
        return (loss * float('nan'), summary) if self.epoch == 1 and self.batch_idx == 1 else (loss, summary)

    monkeypatch.setattr(JLMLEngine, 'compute_losses', poisoned)
    opts = list(tiny_opts)
    opts[opts.index('train.max_epoch') + 1] = '2'
    code, _, err = _run(opts, capsys)
    assert code == 2
    assert 'the loss became nan at epoch 2, step 2' in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path / 'log' / 'model') == ['model.pth.tar-1']
    assert _final_state(str(tmp_path / 'log'))['epoch'] == 1


@pytest.mark.parametrize('extra,message', [
    (['train.lrr', '0.1'], "unknown config key 'train.lrr' on the command line; did you mean train.lr "),
    (['train.max_epoch', 'abc'], "train.max_epoch expects int (like "),
    (['model.name', 'jlmll'], "unknown model 'jlmll'; choose from:"),
    (['sampler.train_sampler', 'Random'], "unknown sampler.train_sampler 'Random'; choose one of: RandomIdentitySampler"),
    (['train.optim', 'adamw'], "unknown train.optim 'adamw'; choose one of: adam, amsgrad, sgd"),
    (['data.sources', "['market15O1']"], "unknown dataset 'market15O1'; torchreid knows:"),
    (['data.height', '72'], 'data.height 72 cannot be split into jlml.num_stripes 4 stripes: use a multiple of 16'),
    (['train.lr', '-1'], 'train.lr must be > 0, got -1.0'),
    (['train.lr', '0'], 'train.lr must be > 0, got 0.0'),
    (['train.weight_decay', '-5e-4'], 'train.weight_decay must be >= 0, got -0.0005'),
    (['sgd.momentum', '1.0'], 'sgd.momentum must be in [0, 1), got 1.0'),
    (['adam.beta2', '1.5'], 'adam.beta2 must be in [0, 1), got 1.5'),
    (['rmsprop.alpha', '-0.1'], 'rmsprop.alpha must be in [0, 1), got -0.1'),
])
def test_bad_input_is_one_clear_line(tiny_opts, capsys, extra, message):
    code, _, err = _run(tiny_opts + extra, capsys)
    assert code == 2
    assert err.count('\n') == 1 and err.startswith('jlml-train: error: ')
    assert message in err
    if 'model.name' in extra:
        assert 'jlml_single_loss' in err and 'osnet_x1_0' in err


def test_missing_dataset_folder_says_where_and_what_layout(tmp_path, capsys):
    code, _, err = _run(['--root', str(tmp_path / 'nowhere'), '-s', 'market1501',
                         '-t', 'market1501', 'data.save_dir', str(tmp_path)], capsys)
    assert code == 2
    assert f"dataset 'market1501' not found: looked in {tmp_path / 'nowhere' / 'market1501'}" in err
    assert 'Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}' in err


def test_corrupt_image_names_the_file(tmp_path, tiny_opts, capsys):
    from jlml_plugin.data.synthetic import generate
    folder = generate(str(tmp_path / 'data'), 'synthreid_tiny', 0)
    bad = sorted(glob.glob(os.path.join(folder, 'train', '*.png')))[3]
    with open(bad, 'wb') as f:
        f.write(b'not a png')
    opts = list(tiny_opts)
    opts[opts.index('data.root') + 1] = str(tmp_path / 'data')
    code, _, err = _run(opts + ['data.workers', '1', 'sampler.train_sampler', 'SequentialSampler'],
                        capsys)
    assert code == 2 and f'cannot read image {bad}' in err and err.count('\n') == 1


def test_debug_shows_the_traceback(tiny_opts, capsys):
    code, _, err = _run(tiny_opts + ['train.lrr', '0.1', '--debug'], capsys)
    assert code == 2 and 'Traceback' in err and 'ConfigError' in err


def test_a_stock_torchreid_yaml_trains_a_baseline(data_root, tmp_path, capsys):
    # The layout of torchreid's configs/im_osnet_x0_25_softmax_256x128_amsgrad.yaml.
    stock = tmp_path / 'im_osnet_x0_25_softmax_amsgrad.yaml'
    stock.write_text(f"""
model:
  name: 'osnet_x0_25'
  pretrained: False

data:
  type: 'image'
  root: '{data_root}'
  sources: ['synthreid_tiny']
  targets: ['synthreid_tiny']
  height: 64
  width: 32
  combineall: False
  transforms: ['random_flip']
  save_dir: '{tmp_path / 'log'}'
  workers: 0

loss:
  name: 'softmax'
  softmax:
    label_smooth: True

train:
  optim: 'amsgrad'
  lr: 0.0015
  max_epoch: 1
  batch_size: 8
  fixbase_epoch: 0
  open_layers: ['classifier']
  lr_scheduler: 'single_step'
  stepsize: [60]

test:
  batch_size: 300
  dist_metric: 'euclidean'
  normalize_feature: False
  evaluate: False
  eval_freq: -1
  rerank: False
""")
    code, out, err = _run(['--config-file', str(stock), 'test.ranks', '[1, 5]'], capsys)
    assert code == 0, err
    assert 'Model osnet_x0_25' in out and 'Rank-1' in out
    summary = [line for line in out.splitlines() if line.startswith('epoch 1/1:')][0]
    assert 'loss_id' in summary and 'reg_global' not in summary


def test_triplet_training_through_the_cli(tiny_opts, capsys):
    code, out, err = _run(tiny_opts + ['loss.name', 'triplet', 'loss.triplet.weight_x', '1.0',
                                       'sampler.train_sampler', 'RandomIdentitySampler',
                                       'sampler.num_instances', '2'], capsys)
    assert code == 0, err
    assert 'loss_t_global' in out and 'loss_t_local' in out and 'loss_global' in out


def test_triplet_without_identity_sampler_is_refused(tiny_opts, capsys):
    code, _, err = _run(tiny_opts + ['loss.name', 'triplet'], capsys)
    assert code == 2 and 'RandomIdentitySampler' in err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, '-m', 'jlml_plugin.cli.train', '--help'],
                         capture_output=True, text=True, check=True).stdout
    assert '--config-file' in out and 'KEY VALUE' in out


def test_deterministic_mode_is_one_that_runs_on_cuda():
    # In a child process: the switch is process-wide.
    code = ('import os, torch; from jlml_plugin.runner import use_deterministic_kernels as u; '
            'os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None); u(); '
            'print(os.environ["CUBLAS_WORKSPACE_CONFIG"], torch.are_deterministic_algorithms_enabled(), '
            'torch.is_deterministic_algorithms_warn_only_enabled(), '
            'torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    # cuBLAS's fixed workspace, and a warning, not an error, for adaptive average pooling's
    # backward, which has no deterministic CUDA kernel.
    assert out.stdout.split() == [':4096:8', 'True', 'True', 'True', 'False']


def test_a_trainer_subclass_overrides_one_builder(tiny_opts):
    """detectron2's Trainer.build_*: one hook added by overriding build_hooks alone; the
    rest of the run (data, model, engine, evaluation) is the default trainer's."""
    from jlml_plugin.config import get_cfg
    from jlml_plugin.hooks import Hook
    from jlml_plugin.runner import Trainer

    class EpochCounter(Hook):
        epochs = []

        def after_epoch(self, engine, summary):
            self.epochs.append((engine.epoch, summary['loss']))

    class CountingTrainer(Trainer):
        @classmethod
        def build_hooks(cls, cfg):
            return super().build_hooks(cfg) + [EpochCounter()]

    cfg = load_config(None, tiny_opts + ['model.name', 'jlml_global'], base=get_cfg())
    result = CountingTrainer.train(cfg)
    assert [epoch for epoch, _ in EpochCounter.epochs] == [0]
    assert 'synthreid_tiny' in result.training.results  # the default EvalHook still ran
