"""The sparsity norms (closed forms, gradients, fp32) and the hook on any model."""
import pytest
import torch

from jlml_plugin import SparsityHook, SparsityTerm, exclusive_group_lasso, group_lasso, torchreid
from jlml_plugin.errors import ConfigError

W = torch.tensor([[3.0, 0.0, -1.0, 2.0],
                  [4.0, 0.0, 1.0, -2.0]])


def test_group_lasso_closed_form():
    # column norms: 5, 0, sqrt(2), sqrt(8)
    expected = 5.0 + 0.0 + 2 ** 0.5 + 8 ** 0.5
    assert group_lasso(W).item() == pytest.approx(expected)


def test_exclusive_group_lasso_closed_form():
    # two groups of two columns; row 1: (3+0)^2 + (1+2)^2 = 18; row 2: (4+0)^2 + (1+2)^2 = 25
    assert exclusive_group_lasso(W, groups=2).item() == pytest.approx(43.0)
    # one group: (3+0+1+2)^2 + (4+0+1+2)^2 = 36 + 49
    assert exclusive_group_lasso(W, groups=1).item() == pytest.approx(85.0)
    # a group per column: the squared Frobenius norm
    assert exclusive_group_lasso(W, groups=4).item() == pytest.approx(float((W ** 2).sum()))


def test_exclusive_group_lasso_rejects_uneven_groups():
    with pytest.raises(ConfigError, match='cannot form 3 equal groups'):
        exclusive_group_lasso(W, groups=3)


@pytest.mark.parametrize('fn,groups', [(group_lasso, 1), (exclusive_group_lasso, 2)])
def test_gradcheck(fn, groups):
    gen = torch.Generator().manual_seed(0)
    # Away from 0, where both norms are smooth.
    w = (torch.rand(5, 6, generator=gen, dtype=torch.float64) + 0.1) \
        * torch.where(torch.rand(5, 6, generator=gen) > 0.5, 1.0, -1.0).double()
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, groups), (w,))


def test_group_lasso_gradient_is_the_normalised_column():
    w = W.clone().requires_grad_(True)
    group_lasso(w).backward()
    torch.testing.assert_close(w.grad[:, 0], torch.tensor([0.6, 0.8]))


def _model():
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 2))


def test_hook_adds_weighted_terms_and_reports_each():
    model = _model()
    hook = SparsityHook(model, [SparsityTerm('reg_a', '0.weight', 'group_lasso', 0.5),
                                SparsityTerm('reg_b', '1.weight', 'exclusive_group_lasso', 2.0, 3)])
    total, values = hook()
    a = group_lasso(model[0].weight)
    b = exclusive_group_lasso(model[1].weight, 3)
    torch.testing.assert_close(total, 0.5 * a + 2.0 * b)
    assert set(values) == {'reg_a', 'reg_b'} and torch.allclose(values['reg_a'], a)
    total.backward()
    assert model[0].weight.grad is not None and model[1].weight.grad is not None


def test_zero_weight_switches_a_term_off_and_costs_nothing(monkeypatch):
    called = []
    monkeypatch.setitem(__import__('jlml_plugin').regularizers.REGULARIZERS, 'group_lasso',
                        lambda w, g: called.append(1) or w.sum())
    hook = SparsityHook(_model(), [SparsityTerm('reg', '0.weight', 'group_lasso', 0.0)])
    assert not hook and hook() == (None, {}) and called == []


def test_computed_in_fp32_under_autocast():
    model = _model().to(torch.bfloat16)
    hook = SparsityHook(model, [SparsityTerm('reg', '0.weight', 'group_lasso', 1.0)])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        total, values = hook()
    assert total.dtype == torch.float32 and values['reg'].dtype == torch.float32
    assert total.item() == pytest.approx(group_lasso(model[0].weight.float()).item())


def test_hook_on_a_torchreid_baseline_inside_dataparallel():
    osnet = torchreid.models.build_model('osnet_x0_25', 10, pretrained=False, use_gpu=False)
    wrapped = torch.nn.DataParallel(osnet)
    hook = SparsityHook(wrapped, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso', 1e-3)])
    total, _ = hook()
    assert total.item() == pytest.approx(1e-3 * group_lasso(osnet.fc[0].weight).item())


def test_unknown_parameter_suggests_close_names():
    with pytest.raises(ConfigError, match=r"no parameter 'O.weight'.*0\.weight"):
        SparsityHook(_model(), [SparsityTerm('reg', 'O.weight', 'group_lasso', 1.0)])


def test_bad_kind_and_negative_weight_are_config_errors():
    with pytest.raises(ConfigError, match='unknown regulariser kind'):
        SparsityHook(_model(), [SparsityTerm('reg', '0.weight', 'lasso', 1.0)])
    with pytest.raises(ConfigError, match='>= 0'):
        SparsityHook(_model(), [SparsityTerm('reg', '0.weight', 'group_lasso', -1.0)])
