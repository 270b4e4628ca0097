"""The sparsity norms (closed forms, gradients, fp32), their proximal step and the hook."""
import functools

import pytest
import torch

from jlml_plugin import (MODELS, SparsityRegularizer, SparsityTerm, exclusive_group_lasso, group_lasso,
                         torchreid)
from jlml_plugin.errors import ConfigError
from jlml_plugin.regularizers import (PROXIMAL, REGULARIZERS, jlml_terms,
                                      prox_exclusive_group_lasso, prox_group_lasso, prox_l1,
                                      prox_ridge)

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
    hook = SparsityRegularizer(model, [SparsityTerm('reg_a', '0.weight', 'group_lasso', 0.5),
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
    hook = SparsityRegularizer(_model(), [SparsityTerm('reg', '0.weight', 'group_lasso', 0.0)])
    assert not hook and hook() == (None, {}) and called == []


def test_computed_in_fp32_under_autocast():
    model = _model().to(torch.bfloat16)
    hook = SparsityRegularizer(model, [SparsityTerm('reg', '0.weight', 'group_lasso', 1.0)])
    with torch.autocast('cpu', dtype=torch.bfloat16):
        total, values = hook()
    assert total.dtype == torch.float32 and values['reg'].dtype == torch.float32
    assert total.item() == pytest.approx(group_lasso(model[0].weight.float()).item())


def test_hook_on_a_torchreid_baseline_inside_dataparallel():
    osnet = torchreid.models.build_model('osnet_x0_25', 10, pretrained=False, use_gpu=False)
    wrapped = torch.nn.DataParallel(osnet)
    hook = SparsityRegularizer(wrapped, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso', 1e-3)])
    total, _ = hook()
    assert total.item() == pytest.approx(1e-3 * group_lasso(osnet.fc[0].weight).item())


def test_unknown_parameter_suggests_close_names():
    with pytest.raises(ConfigError, match=r"no parameter 'O.weight'.*0\.weight"):
        SparsityRegularizer(_model(), [SparsityTerm('reg', 'O.weight', 'group_lasso', 1.0)])


def test_bad_kind_and_negative_weight_are_config_errors():
    with pytest.raises(ConfigError, match='unknown regulariser kind'):
        SparsityRegularizer(_model(), [SparsityTerm('reg', '0.weight', 'lasso', 1.0)])
    with pytest.raises(ConfigError, match='>= 0'):
        SparsityRegularizer(_model(), [SparsityTerm('reg', '0.weight', 'group_lasso', -1.0)])


# ------------------------------------------------------------------ proximal operators


def test_prox_group_lasso_with_one_step_size_shrinks_each_column_and_zeroes_the_small_ones():
    # column norms 5, 0, sqrt(2), sqrt(8); lam * step = 2 keeps columns 0 and 3, shrunk by 2
    out = prox_group_lasso(W, 4.0, 0.5)
    torch.testing.assert_close(out.norm(dim=0), torch.tensor([3.0, 0.0, 0.0, 8 ** 0.5 - 2]))
    torch.testing.assert_close(out[:, 0], W[:, 0] * 3 / 5)  # the direction is kept


def _random_problem(seed, shape=(6, 12)):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(*shape, generator=gen, dtype=torch.float64)
    step = torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 + 0.01
    return u, step


@pytest.mark.parametrize('lam', [0.01, 0.3, 2.0, 5.0])
def test_prox_group_lasso_in_a_per_entry_metric_meets_its_optimality_conditions(lam):
    # y = argmin lam sum_j ||y_j|| + sum (y - u)^2 / (2 step)  <=>  per column j:
    # (u - y) / step = lam y / ||y|| where y != 0, and ||u / step|| <= lam where y = 0.
    u, step = _random_problem(0)
    y = prox_group_lasso(u, lam, step)
    norms = y.norm(dim=0)
    alive = norms > 0
    torch.testing.assert_close(((u - y) / step)[:, alive], (lam * y / norms)[:, alive])
    assert ((u / step).norm(dim=0)[~alive] <= lam).all()
    if lam >= 2.0:
        assert (~alive).any()  # a strong lam zeroes columns


@pytest.mark.parametrize('lam', [0.01, 0.1, 0.5, 3.0])
def test_prox_exclusive_group_lasso_in_a_per_entry_metric_meets_its_optimality_conditions(lam):
    # y = argmin lam sum_g ||y_g||_1^2 + sum (y - u)^2 / (2 step)  <=>  per group g, with
    # t = 2 lam ||y_g||_1: (u_i - y_i) / step_i = t sign(y_i) where y_i != 0, |u_i| / step_i <= t
    # where y_i = 0.
    u, step = _random_problem(1)
    y = prox_exclusive_group_lasso(u, lam, step, groups=3)
    ys, us, ss = (t.reshape(6, 3, 4) for t in (y, u, step))
    t = 2 * lam * ys.abs().sum(-1, keepdim=True)
    kept = ys != 0
    torch.testing.assert_close(((us - ys) / ss)[kept], (t * ys.sign()).expand_as(ys)[kept])
    assert ((us.abs() / ss) <= t + 1e-12)[~kept].all()
    assert kept.any(-1).all()  # every group keeps an entry
    if lam >= 0.5:
        assert (~kept).sum() > 0  # and a strong lam zeroes entries


def test_l1_and_ridge_proximal_steps_are_their_closed_forms():
    u, step = _random_problem(2)
    torch.testing.assert_close(prox_l1(u, 0.5, step), u.sign() * (u.abs() - 0.5 * step).clamp_min(0))
    torch.testing.assert_close(prox_ridge(u, 0.5, step), u / (1 + 0.5 * step))
    torch.testing.assert_close(prox_exclusive_group_lasso(W, 0.0, 1.0, 2), W)


# ------------------------------------ the engine's step reaches the objective's minimiser

N, D, K = 120, 12, 4


def _logistic_problem():
    """Multinomial logistic regression on 12 features of which 6 carry the label."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    true = torch.zeros(K, D, dtype=torch.float64)
    true[:, :6] = torch.randn(K, 6, generator=gen, dtype=torch.float64) * 2
    y = (x @ true.T + 0.5 * torch.randn(N, K, generator=gen, dtype=torch.float64)).argmax(1)
    lipschitz = torch.linalg.matrix_norm(torch.cat([x, torch.ones(N, 1, dtype=x.dtype)], 1), 2) ** 2 / N
    return x, y, float(lipschitz)


@functools.lru_cache()
def _reference(kind, lam, groups, iters=1500):
    """The minimiser of mean CE + lam R: full-batch FISTA with step 1 / L, run to
    convergence (the bias is not penalised)."""
    x, y, lipschitz = _logistic_problem()
    onehot = torch.nn.functional.one_hot(y, K).double()
    w, b = torch.zeros(K, D, dtype=x.dtype), torch.zeros(K, dtype=x.dtype)
    wy, by, t = w, b, 1.0
    for _ in range(iters):
        residual = torch.softmax(x @ wy.T + by, 1) - onehot
        w_next = PROXIMAL[kind](wy - residual.T @ x / N / lipschitz, lam, 1 / lipschitz, groups)
        b_next = by - residual.mean(0) / lipschitz
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        wy = w_next + (t - 1) / t_next * (w_next - w)
        by = b_next + (t - 1) / t_next * (b_next - b)
        w, b, t = w_next, b_next, t_next
    return w


OPTIMIZERS = {  # (optimizer, lr: a multiple of 1 / L for SGD, else absolute, cosine)
    'sgd': (lambda p, lr: torch.optim.SGD(p, lr), 1.0, False),
    'sgd_momentum': (lambda p, lr: torch.optim.SGD(p, lr, momentum=0.9), 0.1, False),
    'adam': (lambda p, lr: torch.optim.Adam(p, lr), 0.2, True),
    'amsgrad': (lambda p, lr: torch.optim.Adam(p, lr, amsgrad=True), 0.2, True),
}


@pytest.mark.parametrize('optimizer', sorted(OPTIMIZERS))
@pytest.mark.parametrize('kind,lam,groups', [('group_lasso', 0.05, 0),
                                             ('exclusive_group_lasso', 0.02, 3)])
def test_the_step_reaches_the_minimiser_of_loss_plus_lambda_r(optimizer, kind, lam, groups):
    """Full-batch training with any optimizer and the engine's proximal step converges to
    the minimiser of L + lam R that a reference solver finds: the step's fixed points are
    that objective's, whatever the optimizer's step sizes (docs/regularizers.md)."""
    x, y, lipschitz = _logistic_problem()
    build, lr, cosine = OPTIMIZERS[optimizer]
    steps = 1000
    model = torch.nn.Linear(D, K).double()
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    hook = SparsityRegularizer(model, [SparsityTerm('reg', 'weight', kind, lam, groups)])
    opt = build(model.parameters(), lr / lipschitz if optimizer.startswith('sgd') else lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        hook.proximal_step(opt)
        if schedule:
            schedule.step()
    expected = _reference(kind, lam, groups)
    torch.testing.assert_close(model.weight.detach(), expected, atol=1e-5, rtol=0)
    assert torch.equal(model.weight == 0, expected == 0)  # the same exact zeros
    if kind == 'group_lasso':
        assert 0 < int((expected.norm(dim=0) == 0).sum()) < D  # it selects, not all or none


def _toy_columns_switched_off(rows_with_gradient, lam=2e-3, steps=300):
    """A 16 x 64 layer, AMSGrad lr 1.5e-3 with weight decay 5e-4, group LASSO lam: the
    first 32 input features predict the targets, the others are noise; only the first
    ``rows_with_gradient`` outputs enter the loss. Returns (useful, noise) columns at 0."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 16, bias=False)
    mixing = torch.randn(16, 32)
    hook = SparsityRegularizer(layer, [SparsityTerm('reg', 'weight', 'group_lasso', lam)])
    opt = torch.optim.Adam(layer.parameters(), lr=1.5e-3, weight_decay=5e-4, amsgrad=True)
    hook.own_weight_decay(opt)
    for _ in range(steps):
        x = torch.randn(32, 64)
        loss = (layer(x) - x[:, :32] @ mixing.T)[:, :rows_with_gradient].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        hook.proximal_step(opt)
    norms = layer.weight.detach().norm(dim=0)
    return int((norms[:32] == 0).sum()), int((norms[32:] == 0).sum())


def test_rows_without_loss_gradient_do_not_switch_useful_columns_off():
    """Half the rows get no loss gradient: their Adam step sizes are huge. A step that
    averaged step sizes over a column let them zero all 32 useful columns; here no
    useful column goes, and a stronger lam switches the noise columns off first."""
    assert _toy_columns_switched_off(16) == (0, 0)
    assert _toy_columns_switched_off(8) == (0, 0)
    useful, noise = _toy_columns_switched_off(16, lam=0.5)
    assert noise == 32 and useful < 16


def test_weight_decay_leaves_the_penalised_layer_alone():
    model = _model()
    hook = SparsityRegularizer(model, [SparsityTerm('reg', '0.weight', 'group_lasso', 0.5)])
    opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=5e-4)
    hook.own_weight_decay(opt)
    decay = {id(p): g['weight_decay'] for g in opt.param_groups for p in g['params']}
    assert decay[id(model[0].weight)] == 0.0
    assert all(decay[id(p)] == 5e-4 for n, p in model.named_parameters() if n != '0.weight')
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


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
    from jlml_plugin.tools.sparsity import checkpoint_terms, selection_summary
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


def test_a_jlml_checkpoint_reports_both_feature_layers_whichever_it_trained():
    # A point of the global term's path (λ_l = 0) is the λ_l = 0 point of the local one's.
    from dataclasses import asdict
    from jlml_plugin.models import build
    from jlml_plugin.tools.sparsity import checkpoint_terms
    kwargs = dict(feat_dim=16, stem_width=8, global_widths=[4, 8, 8, 16],
                  local_widths=[4, 4, 8, 8])
    model = build('jlml', 5, **kwargs)
    trained = jlml_terms(model, 0.01, 0.0)[:1]
    checkpoint = dict(state_dict=model.state_dict(), meta=dict(
        model_name='jlml', model_kwargs=kwargs, sparsity=[asdict(t) for t in trained]))
    assert [(t.name, t.kind, t.weight) for t in checkpoint_terms(checkpoint)] == [
        ('reg_global', 'group_lasso', 0.01), ('reg_local', 'exclusive_group_lasso', 0.0)]
    ridge = [dict(asdict(trained[0]), kind='ridge')]  # a control keeps its own kind
    checkpoint['meta']['sparsity'] = ridge
    assert [t.kind for t in checkpoint_terms(checkpoint)] == ['ridge', 'exclusive_group_lasso']


@pytest.mark.slow
def test_a_large_lambda_switches_units_off_and_lambda_zero_does_not(tiny_opts, tmp_path):
    # 3000x (1.5, 1.5e-3), 18 steps: (torch 2.14, CPU) all 64 global columns and 33.9% of
    # the local entries are exactly 0 (at 300x, 1 column); the test asks for half and 2%.
    strong = _trained_selection(tiny_opts, tmp_path, 3000)
    assert strong['reg_global']['exact_zeros'] >= 0.5 * strong['reg_global']['units']
    assert strong['reg_local']['exact_zeros'] >= 0.02 * strong['reg_local']['units']
    assert min(strong['reg_local']['off_fraction_per_group']) < 1  # every stripe stays alive
    none = _trained_selection(tiny_opts, tmp_path, 0)
    assert none['reg_global']['exact_zeros'] == none['reg_local']['exact_zeros'] == 0
    assert none['reg_global']['off_fraction'] == 0 and none['reg_local']['off_fraction'] < 0.01
