"""The sparsity norms (closed forms, gradients, fp32) and the hook on any model."""
import pytest
import torch

from jlml_plugin import (MODELS, SparsityHook, SparsityTerm, exclusive_group_lasso, group_lasso,
                         torchreid)
from jlml_plugin.errors import ConfigError
from jlml_plugin.regularizers import (REGULARIZERS, jlml_terms, prox_exclusive_group_lasso,
                                      prox_group_lasso)

SMALL = dict(stem_width=8, global_widths=(4, 8, 8, 16), local_widths=(4, 4, 8, 8))

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


# ------------------------------------------------------------------ proximal operators


def test_prox_group_lasso_shrinks_each_column_and_zeroes_the_small_ones():
    # column norms 5, 0, sqrt(2), sqrt(8); tau 2 keeps columns 0 and 3, shrunk by 2 in norm
    out = prox_group_lasso(W, torch.tensor(2.0))
    torch.testing.assert_close(out.norm(dim=0), torch.tensor([3.0, 0.0, 0.0, 8 ** 0.5 - 2]))
    torch.testing.assert_close(out[:, 0], W[:, 0] * 3 / 5)  # the direction is kept
    per_column = prox_group_lasso(W, torch.tensor([0.0, 0.0, 0.0, 5.0]))
    torch.testing.assert_close(per_column[:, :3], W[:, :3])
    assert per_column[:, 3].abs().sum() == 0


@pytest.mark.parametrize('tau', [0.01, 0.1, 0.5, 3.0])
def test_prox_exclusive_group_lasso_meets_its_optimality_conditions(tau):
    # x = argmin 1/2 ||x - u||^2 + tau * sum_g ||x_g||_1^2  <=>  per group g, with
    # s = 2 tau ||x_g||_1: u_i - x_i = s sign(x_i) where x_i != 0, and |u_i| <= s where x_i = 0.
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(6, 12, generator=gen, dtype=torch.float64)
    x = prox_exclusive_group_lasso(u, torch.tensor(tau, dtype=torch.float64), groups=3)
    xs, us = x.reshape(6, 3, 4), u.reshape(6, 3, 4)
    s = 2 * tau * xs.abs().sum(-1, keepdim=True)
    kept = xs != 0
    torch.testing.assert_close((us - xs)[kept], (s * xs.sign()).expand_as(xs)[kept])
    assert (us.abs() <= s + 1e-12)[~kept].all()
    assert kept.any(-1).all()  # every group keeps its largest entry
    if tau >= 0.5:
        assert (~kept).sum() > 0  # and a strong tau zeroes entries


def test_prox_exclusive_group_lasso_with_tau_zero_is_the_identity():
    torch.testing.assert_close(prox_exclusive_group_lasso(W, torch.tensor(0.0), 2), W)


def test_proximal_step_uses_the_optimizers_step_size():
    torch.manual_seed(0)
    model = _model()
    term = SparsityTerm('reg', '0.weight', 'group_lasso', 0.5)
    hook = SparsityHook(model, [term])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    hook.proximal_step(sgd)
    torch.testing.assert_close(model[0].weight, prox_group_lasso(before, torch.tensor(0.05)))
    # Adam: lr / (sqrt(v_hat) + eps), averaged over each column.
    adam = torch.optim.Adam(model.parameters(), lr=0.1, amsgrad=True)
    model(torch.randn(3, 4)).sum().backward()
    adam.step()
    state = adam.state[model[0].weight]
    v_hat = state['max_exp_avg_sq'] / (1 - 0.999 ** float(state['step']))
    tau = 0.5 * (0.1 / (v_hat.sqrt() + 1e-8)).mean(dim=0)
    before = model[0].weight.detach().clone()
    hook.proximal_step(adam)
    torch.testing.assert_close(model[0].weight, prox_group_lasso(before, tau))


# ------------------------------------------- the terms act on what the network computes


@pytest.mark.parametrize('term', ['reg_global', 'reg_local'])
@pytest.mark.parametrize('scaling', ['uniform', 'per_column'])
def test_shrinking_the_penalised_weight_changes_the_logits(term, scaling):
    """A penalty that can be lowered without changing the network is no selection: here
    every shrinkage that lowers a term must change what the network computes (in training
    mode, with the same dropout masks; a BN after the weight would undo it)."""
    torch.manual_seed(0)
    model = MODELS['jlml'](10, **SMALL).train()
    x = torch.randn(8, 3, 160, 64)
    terms = {t.name: t for t in jlml_terms(model)}
    param = dict(model.named_parameters())[terms[term].param]
    norm = REGULARIZERS[terms[term].kind]

    def run():
        torch.manual_seed(1)
        with torch.no_grad():
            return torch.cat(model(x), 1), norm(param, terms[term].groups).item()

    logits, penalty = run()
    gen = torch.Generator().manual_seed(2)
    factor = (torch.tensor(0.5) if scaling == 'uniform'
              else torch.rand(param.shape[1], generator=gen) * 0.5 + 0.2)
    with torch.no_grad():
        param.mul_(factor)
    shrunk_logits, shrunk_penalty = run()
    assert shrunk_penalty < 0.75 * penalty
    change = (shrunk_logits - logits).abs().max() / logits.abs().max()
    assert change > 0.05, f'{term}: penalty {penalty:.4g} -> {shrunk_penalty:.4g}, logits moved {change:.2e}'


# ----------------------------------------------------------------- selection in training


def _trained_selection(tiny_opts, tmp_path, scale):
    from jlml_plugin.config import load_config
    from jlml_plugin.runner import train
    from jlml_plugin.selection import checkpoint_terms, selection_summary
    cfg = load_config('configs/jlml_synthetic.yaml', tiny_opts + [
        'train.max_epoch', '3', 'train.optim', 'amsgrad', 'train.lr', '0.0015',
        'data.save_dir', str(tmp_path / f'x{scale}'), 'jlml.feat_dim', '64',
        'jlml.stem_width', '8', 'jlml.global_widths', '[4,8,8,16]',
        'jlml.local_widths', '[4,4,8,8]',
        'jlml.reg_global.weight', str(5e-4 * scale),
        'jlml.reg_local.weight', str(5e-7 * scale)])
    train(cfg)
    checkpoint = torch.load(tmp_path / f'x{scale}' / 'model' / 'model.pth.tar-3',
                            weights_only=True)
    return selection_summary(checkpoint['state_dict'], checkpoint_terms(checkpoint))


@pytest.mark.slow
def test_a_large_lambda_switches_units_off_and_lambda_zero_does_not(tiny_opts, tmp_path):
    # 300x (5e-4, 5e-7), 18 steps: (torch 2.14, CPU) all 64 global columns and 4.1% of the
    # local entries are exactly 0; the test asks for half and 2%.
    strong = _trained_selection(tiny_opts, tmp_path, 300)
    assert strong['reg_global']['exact_zeros'] >= 0.5 * strong['reg_global']['units']
    assert strong['reg_local']['exact_zeros'] >= 0.02 * strong['reg_local']['units']
    assert min(strong['reg_local']['off_fraction_per_group']) < 1  # every stripe stays alive
    none = _trained_selection(tiny_opts, tmp_path, 0)
    assert none['reg_global']['exact_zeros'] == none['reg_local']['exact_zeros'] == 0
    assert none['reg_global']['off_fraction'] == 0 and none['reg_local']['off_fraction'] < 0.01
