"""JLMLEngine: the objective's terms, AMP, hooks, torchreid's F1/F2 fixed."""
import os

import numpy as np
import pytest
import torch

from jlml_plugin import MODELS, SparsityRegularizer, SparsityTerm, evaluate_rank, torchreid
from jlml_plugin.engine import JLMLEngine
from jlml_plugin.precision import MAX_SKIPPED_STEPS
from jlml_plugin.errors import ConfigError, NonFiniteLossError
from jlml_plugin.hooks import (EvalHook, Hook, PeriodicCheckpoint, ProgressLog, TensorBoardLog,
                               default_hooks)

SMALL = dict(stem_width=8, global_widths=(4, 8, 8, 16), local_widths=(4, 4, 8, 8))


@pytest.fixture(scope='module')
def datamanager(data_root):
    return torchreid.data.ImageDataManager(root=data_root, sources='synthreid_tiny', height=64,
                                           width=32, batch_size_train=8, batch_size_test=50,
                                           workers=0, use_gpu=False)


def _engine(datamanager, scheduler=True, lr=0.0, **kwargs):
    torch.manual_seed(0)
    model = MODELS['jlml'](datamanager.num_train_pids, **SMALL)
    optimizer = torchreid.optim.build_optimizer(model, optim='sgd', lr=lr)
    sched = torchreid.optim.build_lr_scheduler(optimizer) if scheduler else None
    hook = SparsityRegularizer(model, [SparsityTerm('reg_global', 'global_branch.embed.fc.weight',
                                             'group_lasso', 0.01),
                                SparsityTerm('reg_local', 'local_branch.embed.fc.weight',
                                             'exclusive_group_lasso', 1e-4, 4)])
    return JLMLEngine(datamanager, model, optimizer, scheduler=sched, use_gpu=False,
                      regularizer=hook, **kwargs)


def _step(engine):
    engine.epoch, engine.batch_idx = 0, 0
    return engine.forward_backward(next(iter(engine.train_loader)))


def test_total_is_the_weighted_sum_of_every_logged_term(datamanager):
    engine = _engine(datamanager, loss_weights={'global': 0.3, 'local': 2.0})
    s = _step(engine)
    assert set(s) == {'loss', 'loss_global', 'loss_local', 'acc_global', 'acc_local',
                      'reg_global', 'reg_local', 'tau_reg_global', 'tau_reg_local',
                      'zeros_reg_global', 'zeros_reg_local'}
    assert s['tau_reg_global'] == 0.0 and s['zeros_reg_global'] == 0  # lr 0: nothing shrinks
    expected = (0.3 * s['loss_global'] + 2.0 * s['loss_local']
                + 0.01 * s['reg_global'] + 1e-4 * s['reg_local'])
    assert s['loss'] == pytest.approx(expected, rel=1e-5)


def test_ce_is_torchreids_label_smoothing_loss(datamanager):
    engine = _engine(datamanager, label_smooth=True)
    batch = next(iter(engine.train_loader))
    engine.epoch = engine.batch_idx = 0
    torch.manual_seed(1)  # the same dropout masks in both forward passes
    s = engine.forward_backward(batch)
    engine.model.train()
    torch.manual_seed(1)
    yg, _ = engine.model(batch['img'])
    ce = torchreid.losses.CrossEntropyLoss(datamanager.num_train_pids, use_gpu=False)
    assert s['loss_global'] == pytest.approx(ce(yg, batch['pid']).item(), rel=1e-5)


def test_bf16_autocast_computes_the_same_losses_in_lower_precision(datamanager):
    batch = next(iter(datamanager.train_loader))
    steps = {}
    for amp in ('off', 'bf16'):
        engine = _engine(datamanager, amp=amp)
        engine.epoch = engine.batch_idx = 0
        torch.manual_seed(1)  # the same dropout masks
        steps[amp] = engine.forward_backward(batch)
    assert engine.precision.scaler is None  # a GradScaler only for fp16
    for key in ('loss_global', 'loss_local'):
        assert steps['bf16'][key] == pytest.approx(steps['off'][key], rel=2e-2)
        assert steps['bf16'][key] != steps['off'][key]  # autocast did run in bf16


def _weights(engine):
    return engine.model.global_branch.embed.fc.weight.detach().clone()


def test_fp16_steps_go_through_the_grad_scaler(datamanager):
    engine = _engine(datamanager, amp='fp16', lr=0.1)
    assert isinstance(engine.precision.scaler, torch.amp.GradScaler)
    before, scale = _weights(engine), engine.precision.scaler.get_scale()
    s = _step(engine)
    assert all(torch.isfinite(torch.tensor(v)) for v in s.values())
    assert not torch.equal(_weights(engine), before)  # an unscaled, finite step was taken
    assert engine.precision.scaler.get_scale() == scale  # no overflow, so no back-off


def test_fp16_overflow_skips_the_step_and_only_a_run_of_them_stops(datamanager, monkeypatch):
    engine = _engine(datamanager, amp='fp16', lr=0.1)
    clean = engine.compute_losses
    monkeypatch.setattr(engine, 'compute_losses',
                        lambda out, pids: (lambda l, s: (l * float('inf'), s))(*clean(out, pids)))
    before, scale = _weights(engine), engine.precision.scaler.get_scale()
    _step(engine)  # no error: GradScaler skips it and backs off
    assert torch.equal(_weights(engine), before) and engine.precision.scaler.get_scale() < scale
    for _ in range(MAX_SKIPPED_STEPS - 2):
        _step(engine)
    with pytest.raises(NonFiniteLossError, match=f'{MAX_SKIPPED_STEPS} steps in a row'):
        _step(engine)
    monkeypatch.setattr(engine, 'compute_losses', clean)
    engine.guard.count = MAX_SKIPPED_STEPS - 1
    _step(engine)  # a finite step resets the count
    assert engine.guard.count == 0


def test_a_non_finite_loss_without_a_scaler_stops_at_once(datamanager, monkeypatch):
    engine = _engine(datamanager, amp='bf16')
    clean = engine.compute_losses
    monkeypatch.setattr(engine, 'compute_losses',
                        lambda out, pids: (lambda l, s: (l * float('nan'), s))(*clean(out, pids)))
    with pytest.raises(NonFiniteLossError, match='the loss became nan at epoch 1, step 1'):
        _step(engine)


def test_unknown_amp_mode_is_refused(datamanager):
    with pytest.raises(ConfigError, match="train.amp must be one of"):
        _engine(datamanager, amp='fp8')


def test_checkpoint_without_scheduler_has_a_float_rank1_and_loads_weights_only(datamanager,
                                                                             tmp_path):
    engine = _engine(datamanager, scheduler=False)  # torchreid's save_model fails here (F2)
    engine.save_model(0, torch.tensor(0.25).numpy(), str(tmp_path))
    path = tmp_path / 'model' / 'model.pth.tar-1'
    state = torch.load(path, weights_only=True)  # F1
    assert type(state['rank1']) is float and 'scheduler' not in state
    assert not any(n.startswith('.tmp-') for n in os.listdir(tmp_path / 'model'))
    # torchreid's own resume accepts it, also when it is handed a scheduler
    other = _engine(datamanager)
    start = torchreid.utils.resume_from_checkpoint(str(path), other.model, other.optimizer,
                                                   other.scheduler)
    assert start == 1


def test_counters_survive_a_checkpoint(datamanager, tmp_path):
    engine = _engine(datamanager)
    engine.throughput.images, engine.throughput.seconds = 640, 12.5
    engine.save_model(3, 0.4, str(tmp_path))
    resumed = _engine(datamanager)
    assert resumed.resume(str(tmp_path / 'model' / 'model.pth.tar-4')) == 4
    checkpoints = [h for h in resumed.hooks if isinstance(h, PeriodicCheckpoint)]
    assert (checkpoints[0].rank1, resumed.throughput.images, resumed.throughput.seconds) == (
        0.4, 640, 12.5)


def test_evaluation_is_the_evaluator_on_the_models_fp32_features(datamanager, capsys):
    results = {}
    for amp in ('off', 'bf16'):
        engine = _engine(datamanager, amp=amp)
        results[amp] = engine.run(test_only=True, ranks=[1, 5]).results['synthreid_tiny']
    assert 'mINP' in capsys.readouterr().out
    model = engine.model.eval()
    loaders = datamanager.test_loader['synthreid_tiny']
    with torch.no_grad():
        feats = {k: (torch.cat([model(b['img']) for b in loaders[k]]),
                     torch.cat([b['pid'] for b in loaders[k]]).numpy(),
                     torch.cat([b['camid'] for b in loaders[k]]).numpy())
                 for k in ('query', 'gallery')}
    (qf, qp, qc), (gf, gp, gc) = feats['query'], feats['gallery']
    distmat = torchreid.metrics.compute_distance_matrix(qf, gf, 'euclidean').numpy()
    expected = evaluate_rank(distmat, qp, gp, qc, gc)
    for result in results.values():  # the same whatever the training precision
        np.testing.assert_array_equal(result.cmc, expected.cmc)
        assert result.mAP == expected.mAP and result.mINP == expected.mINP
    # The bf16 engine extracts exactly the fp32 features (rankings on 10 queries could
    # hide a small difference).
    imgs = next(iter(loaders['query']))['img']
    with torch.no_grad():
        torch.testing.assert_close(engine.extract_features(imgs), model(imgs), rtol=0, atol=0)


class _Recorder(Hook):
    """Records the order of the engine's calls to its hooks."""

    def __init__(self):
        self.calls = []

    def before_train(self, engine, save_dir):
        self.calls.append('before_train')

    def before_epoch(self, engine):
        self.calls.append(f'before_epoch {engine.epoch}')

    def after_step(self, engine, losses, images, seconds):
        self.calls.append(f'step {engine.batch_idx} {images}')
        assert 'loss_global' in losses and seconds > 0

    def after_epoch(self, engine, summary):
        self.calls.append(f'after_epoch {engine.epoch}')

    def after_eval(self, engine, results):
        self.calls.append(f'eval {sorted(results)}')

    def after_train(self, engine):
        self.calls.append('after_train')


def _without(kind):
    return [h for h in default_hooks() if not isinstance(h, kind)]


def test_hooks_are_called_in_loop_order_and_each_can_be_left_out(datamanager, tmp_path):
    recorder = _Recorder()
    engine = _engine(datamanager, lr=0.01, hooks=[*_without(TensorBoardLog), recorder])
    outcome = engine.run(save_dir=str(tmp_path), max_epoch=1, ranks=[1])
    steps = len(datamanager.train_loader)
    sizes = [len(b['img']) for b in datamanager.train_loader]
    assert recorder.calls == (['before_train', 'before_epoch 0']
                              + [f'step {i} {n}' for i, n in enumerate(sizes[:steps])]
                              + ["eval ['synthreid_tiny']", 'after_epoch 0', 'after_train'])
    assert not [f for f in os.listdir(tmp_path) if f.startswith('events.')]  # no TensorBoard
    assert outcome.train_images == sum(sizes) == engine.throughput.images
    assert set(outcome.train_summary) >= {'loss', 'loss_global', 'reg_local'}
    saved = torch.load(tmp_path / 'model' / 'model.pth.tar-1', weights_only=True)
    assert saved['rank1'] == outcome.results['synthreid_tiny'].rank(1)


def test_without_the_eval_hook_nothing_is_evaluated_and_the_end_is_still_saved(datamanager,
                                                                                tmp_path):
    engine = _engine(datamanager, lr=0.01, hooks=_without(EvalHook))
    outcome = engine.run(save_dir=str(tmp_path), max_epoch=2, eval_freq=1, ranks=[1])
    assert outcome.results == {}
    saved = torch.load(tmp_path / 'model' / 'model.pth.tar-2', weights_only=True)
    assert saved['rank1'] == 0.0 and saved['epoch'] == 2


def test_without_the_checkpoint_hook_nothing_is_saved(datamanager, tmp_path):
    engine = _engine(datamanager, lr=0.01, hooks=_without(PeriodicCheckpoint))
    outcome = engine.run(save_dir=str(tmp_path), max_epoch=1, ranks=[1])
    assert 'synthreid_tiny' in outcome.results and not os.path.exists(tmp_path / 'model')


def test_checkpoints_follow_their_period_and_every_evaluation(datamanager, tmp_path):
    hooks = [h for h in default_hooks(checkpoint_period=3, keep_checkpoints=0)
             if not isinstance(h, ProgressLog)]
    engine = _engine(datamanager, lr=0.01, hooks=hooks)
    engine.run(save_dir=str(tmp_path), max_epoch=4, eval_freq=2, ranks=[1])
    saved = sorted(int(f.rsplit('-', 1)[1]) for f in os.listdir(tmp_path / 'model'))
    assert saved == [2, 3, 4]  # evaluated at 2 and 4 (the last), periodic at 3


def test_a_model_returning_another_number_of_heads_than_it_names_is_an_error(datamanager):
    engine = _engine(datamanager)
    logits = torch.zeros(4, datamanager.num_train_pids)
    with pytest.raises(ValueError, match=r"names 2 losses \('global', 'local'\) but returned 3"):
        engine.identity_losses((logits, logits, logits), torch.zeros(4, dtype=torch.long))


def test_progress_is_plain_lines_where_nothing_is_redrawn(capsys):
    from jlml_plugin.progress import progress
    bar = progress(10, 'epoch 1/1', every=4, unit='batch')
    for step in range(10):
        bar.set_postfix_str(f'loss {step}', refresh=False)
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ['4/10', '8/10', '10/10']
    assert all('\r' not in line and ' eta ' in line for line in lines)
    assert lines[-1].endswith('loss 9')
    assert progress(10, 'rank 1', enabled=False).disable


def test_the_epoch_line_prints_small_values_in_scientific_notation():
    from jlml_plugin.hooks import format_losses
    assert (format_losses({'loss': 6.3181, 'tau_reg_global': 5.1e-6, 'zeros_reg_global': 0.0})
            == 'loss 6.318 tau_reg_global 5.10e-06 zeros_reg_global 0.000')
