"""JLMLEngine: the objective's terms, AMP, torchreid's F1/F2 fixed."""
import os

import pytest
import torch

from jlml_plugin import MODELS, SparsityHook, SparsityTerm, torchreid
from jlml_plugin.engine import JLMLEngine
from jlml_plugin.errors import ConfigError

SMALL = dict(stem_width=8, global_widths=(4, 8, 8, 16), local_widths=(4, 4, 8, 8))


@pytest.fixture(scope='module')
def datamanager(data_root):
    return torchreid.data.ImageDataManager(root=data_root, sources='synthreid_tiny', height=64,
                                           width=32, batch_size_train=8, batch_size_test=50,
                                           workers=0, use_gpu=False)


def _engine(datamanager, scheduler=True, **kwargs):
    torch.manual_seed(0)
    model = MODELS['jlml'](datamanager.num_train_pids, **SMALL)
    optimizer = torchreid.optim.build_optimizer(model, optim='sgd', lr=0.0)
    sched = torchreid.optim.build_lr_scheduler(optimizer) if scheduler else None
    hook = SparsityHook(model, [SparsityTerm('reg_global', 'global_branch.embed.fc.weight',
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
                      'reg_global', 'reg_local'}
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


def test_bf16_autocast_runs_with_finite_losses(datamanager):
    engine = _engine(datamanager, amp='bf16')
    s = _step(engine)
    assert all(torch.isfinite(torch.tensor(v)) for v in s.values())
    assert engine.scaler is None  # a GradScaler only for fp16 on GPU


def test_unknown_amp_mode_is_refused(datamanager):
    with pytest.raises(ConfigError, match="train.amp must be one of"):
        _engine(datamanager, amp='fp8')


def test_checkpoint_without_scheduler_has_a_float_rank1_and_loads_weights_only(datamanager,
                                                                             tmp_path):
    engine = _engine(datamanager, scheduler=False)  # torchreid's save_model fails here (F2)
    engine.save_model(0, torch.tensor(0.25).numpy(), str(tmp_path))
    state = torch.load(tmp_path / 'model' / 'model.pth.tar-1', weights_only=True)  # F1
    assert type(state['rank1']) is float and state['scheduler'] is None
    assert not any(n.startswith('.tmp-') for n in os.listdir(tmp_path / 'model'))


def test_evaluation_records_the_full_result(datamanager, capsys):
    engine = _engine(datamanager)
    engine.run(test_only=True, ranks=[1, 5])
    result = engine.results['synthreid_tiny']
    assert len(result.cmc) == 50 and 0 <= result.mINP <= result.mAP <= 1
    assert 'mINP' in capsys.readouterr().out
