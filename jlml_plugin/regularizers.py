"""Structured-sparsity regularisers and the hook that adds them to a training step.

JLML selects features with two norms on the branches' feature-layer weights
``W`` (shape ``out x in``, torch's ``nn.Linear`` layout):

* global branch, group LASSO (L2,1): ``R_g(W) = sum_j ||W[:, j]||_2``, one group per
  input feature ``j``; whole input features are switched off.
* local branch, exclusive group LASSO (L1,2; Kong et al., NIPS 2014):
  ``R_l(W) = sum_k sum_s (sum_{j in stripe s} |W[k, j]|)^2``, input features grouped by
  stripe; each output unit keeps few features per stripe but every stripe contributes.

The grouping axis and the exact forms are our reading of the paper (docs/regularizers.md).
Both are computed in fp32, outside autocast, whatever the training precision.

Two controls act on the same layers through the same step: ``l1`` (``sum |W|``, every
entry its own group) and ``ridge`` (``1/2 ||W||_F^2``, no sparsity).

The terms are minimised by a **proximal step** after each optimizer step: the optimizer
takes the identity losses' step ``W - step * d`` (``d``: SGD's gradient or momentum,
Adam's bias-corrected first moment; ``step``: SGD's ``lr``, Adam's per-entry
``lr / (sqrt(v_hat) + eps)``), then :meth:`SparsityRegularizer.proximal_step` applies each
term's proximal operator **in the metric of those per-entry step sizes**
(variable-metric forward-backward splitting; ProxGen, Yun et al., NeurIPS 2021):

    W <- argmin_Y  lambda R(Y) + sum_j (Y_j - Z_j)^2 / (2 step_j),   Z = W - step * d.

Its fixed points are exactly the points where ``0 in d + lambda dR(W)``, for any step
sizes. So with full-batch gradients the step converges to the minimiser of
``L + lambda R``, whatever the optimizer: ``lambda`` is in the loss's units, as if the term
were added to it. It sets groups (group LASSO), entries (exclusive group LASSO, L1) to
exact zeros, where a subgradient in the loss would make them oscillate around zero.
An entry that gets no loss gradient has a huge Adam step size, so a small metric weight:
it cannot inflate its group's threshold (``tests/test_regularizers.py`` checks both).
Weight decay does not act on the penalised layers (:meth:`SparsityRegularizer.own_weight_decay`):
their term is their regulariser.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError

__all__ = ['group_lasso', 'exclusive_group_lasso', 'l1', 'ridge', 'prox_group_lasso',
           'prox_exclusive_group_lasso', 'prox_l1', 'prox_ridge', 'selection_norms', 'REGULARIZERS', 'SparsityTerm',
           'SparsityRegularizer', 'check_term', 'jlml_terms', 'jlml_sparsity', 'LAMBDA_GLOBAL',
           'LAMBDA_LOCAL']

#: Default weights (ours; the paper's are unknown), chosen under the metric step on
#: cuhk01_tune, whose tuning identities no board split tests, by the rules of
#: configs/leaderboard/sparsity_path*.yaml: lambda_g along the global path with the local
#: term off, then lambda_l along the local path at that lambda_g (docs/regularizers.md).
#: At 4e-2 the global term switches every column off.
LAMBDA_GLOBAL = 1e-2
LAMBDA_LOCAL = 1e-4


def group_lasso(weight: torch.Tensor, groups: int = 0) -> torch.Tensor:
    """L2,1 norm: the sum over input columns of each column's L2 norm. ``groups`` is unused."""
    return weight.reshape(weight.shape[0], -1).norm(dim=0).sum()


def exclusive_group_lasso(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """L1,2 norm: for each output row, the sum over column groups of the group's squared L1 norm.

    ``groups`` equal contiguous blocks of input columns (for JLML, one per stripe).
    """
    rows = weight.reshape(weight.shape[0], -1)
    if groups < 1 or rows.shape[1] % groups:
        raise ConfigError(f'exclusive_group_lasso: {rows.shape[1]} input columns cannot form '
                          f'{groups} equal groups; set groups to a divisor of {rows.shape[1]}')
    return _column_groups(rows, groups).abs().sum(dim=2).square().sum()


def _column_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(out, in) -> (out, groups, in / groups): stripe ``g`` owns column block ``g``."""
    rows = weight.reshape(weight.shape[0], -1)
    return rows.reshape(rows.shape[0], groups, -1)


def _per_entry(step, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Step sizes as a tensor of ``weight``'s shape (from one, or one per entry)."""
    return torch.as_tensor(step, dtype=dtype, device=weight.device).expand_as(weight)


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 (and lower) weights, fp64 for fp64 ones."""
    return torch.promote_types(weight.dtype, torch.float32)


def prox_group_lasso(weight: torch.Tensor, lam: float, step: torch.Tensor,
                     groups: int = 0) -> torch.Tensor:
    """The proximal step of ``lam * sum_j ||W[:, j]||_2`` in the metric of per-entry step
    sizes ``step`` (a tensor of ``weight``'s shape, or one for all):

        argmin_Y  lam * sum_j ||Y[:, j]||_2 + sum_kj (Y_kj - W_kj)^2 / (2 step_kj).

    A column is exactly 0 when ``||W[:, j] / step[:, j]||_2 <= lam``. Otherwise
    ``Y_kj = W_kj u / (u + step_kj)``, where ``u > 0`` solves ``||W[:, j] / (step[:, j] + u)||
    = lam`` (then ``||Y[:, j]|| = lam u``). With one step size per column, ``u`` has a closed
    form and this is the familiar shrinkage of the column's norm by ``lam * step``; in
    general ``u`` is found by Newton's method on ``1 / ||W / (step + u)||``, which is linear
    in ``u`` for equal step sizes and close to linear otherwise, from the equal-step
    solution at the column's mean step and kept inside a bracket (3-5 steps).
    """
    dtype = _compute_dtype(weight)
    z = weight.reshape(weight.shape[0], -1).to(dtype)
    s = _per_entry(step, weight, dtype).reshape(z.shape)
    alive = (z / s).norm(dim=0) > lam
    low = torch.zeros(z.shape[1], dtype=dtype, device=z.device)
    high = z.norm(dim=0) / lam                    # there ||W / (step + u)|| <= lam
    u = (high - s.mean(0)).clamp_min(0)
    tolerance = 8 * torch.finfo(dtype).eps
    for _ in range(_NEWTON_STEPS):
        q = z / (s + u)
        norm = q.norm(dim=0)
        gap = 1 / norm - 1 / lam                  # increasing in u, 0 at the root
        if not (torch.where(alive, gap.abs() * lam, 0.0) > tolerance).any():
            break
        low = torch.where(gap < 0, u, low)
        high = torch.where(gap > 0, u, high)
        newton = u - gap * norm.pow(3) / (q.square() / (s + u)).sum(0)
        u = torch.where((newton > low) & (newton < high), newton, (low + high) / 2)
    y = torch.where(alive, z * u / (u + s), torch.zeros_like(z))
    return y.reshape(weight.shape).to(weight.dtype)


#: Newton steps of :func:`prox_group_lasso` at most; it stops once converged.
_NEWTON_STEPS = 30


def prox_exclusive_group_lasso(weight: torch.Tensor, lam: float, step: torch.Tensor,
                               groups: int = 1) -> torch.Tensor:
    """The proximal step of ``lam * sum_k sum_g (sum_{j in g} |W[k, j]|)^2`` (Kong et al.
    2014) in the metric of per-entry step sizes ``step``:

        argmin_Y  lam * sum_kg ||Y_kg||_1^2 + sum_kj (Y_kj - W_kj)^2 / (2 step_kj).

    Within each (row, group): ``Y_j = sign(W_j) max(|W_j| - theta step_j, 0)`` with
    ``theta = 2 lam ||Y||_1``. Ranking the entries by ``|W_j| / step_j``, the kept set is
    the longest prefix whose last entry exceeds ``theta`` computed over the prefix,
    ``2 lam sum |W| / (1 + 2 lam sum step)``; small entries become exactly 0 while the
    largest of every group always survives.
    """
    dtype = _compute_dtype(weight)
    blocks = _column_groups(weight.to(dtype), groups)
    s = _column_groups(_per_entry(step, weight, dtype), groups)
    magnitude = blocks.abs()
    order = (magnitude / s).argsort(dim=-1, descending=True)
    ranked, ranked_step = magnitude.gather(-1, order), s.gather(-1, order)
    theta = 2 * lam * ranked.cumsum(-1) / (1 + 2 * lam * ranked_step.cumsum(-1))
    kept = (ranked / ranked_step > theta).sum(-1, keepdim=True).clamp_min(1)
    theta = theta.gather(-1, kept - 1)
    y = blocks.sign() * (magnitude - theta * s).clamp_min(0)
    return y.reshape(weight.shape).to(weight.dtype)


def prox_l1(weight: torch.Tensor, lam: float, step: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The proximal step of ``lam * ||W||_1``: soft-thresholding by ``lam * step``."""
    return weight.sign() * (weight.abs() - lam * step).clamp_min(0)


def prox_ridge(weight: torch.Tensor, lam: float, step: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """The proximal step of ``lam / 2 * ||W||_F^2``: scaling by ``1 / (1 + lam * step)``."""
    return weight / (1 + lam * step)


def selection_norms(weight: torch.Tensor, kind: str, groups: int = 1) -> torch.Tensor:
    """The sizes of what a term can switch off, flat: each column's L2 norm for the group
    LASSO (its groups), each entry's magnitude otherwise (the exclusive group LASSO's
    groups all stay alive while the entries inside them compete; L1 and ridge act on
    entries), in column-group order."""
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    if kind == 'group_lasso':
        return rows.norm(dim=0)
    return _column_groups(rows, groups).abs().permute(1, 0, 2).reshape(-1)


def l1(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``sum |W|``: unstructured sparsity, a control for the structured terms."""
    return weight.abs().sum()


def ridge(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``1/2 ||W||_F^2``: shrinkage without sparsity, a control for the structured terms."""
    return weight.square().sum() / 2


#: Regularisers by the name configs use, and their proximal operators.
REGULARIZERS: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    'group_lasso': group_lasso,
    'exclusive_group_lasso': exclusive_group_lasso,
    'l1': l1,
    'ridge': ridge,
}
PROXIMAL = {
    'group_lasso': prox_group_lasso,
    'exclusive_group_lasso': prox_exclusive_group_lasso,
    'l1': prox_l1,
    'ridge': prox_ridge,
}


def _step_sizes(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The step size the optimizer applies to each entry of ``param``, per unit of loss
    gradient once its moments have settled: ``lr / (sqrt(v_hat) + eps)`` for Adam/AMSGrad
    (``v_hat`` bias-corrected; the first moment settles at the gradient), ``lr / (sqrt(v) +
    eps)`` for RMSprop, and for SGD ``lr`` times what momentum ``mu`` (dampening ``delta``)
    makes of a steady gradient: ``(1 - delta) / (1 - mu)`` (Nesterov: ``1 + mu (1 - delta) /
    (1 - mu)``). Without this factor, the step's fixed point under momentum would be that
    of ``lambda (1 - mu)``."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g['params']))
    state = optimizer.state.get(param, {})
    second = next((state[k] for k in ('max_exp_avg_sq', 'exp_avg_sq', 'square_avg')
                   if k in state), None)
    if second is None:
        momentum, dampening = group.get('momentum', 0.0), group.get('dampening', 0.0)
        settled = (1 - dampening) / (1 - momentum) if momentum else 1.0
        if momentum and group.get('nesterov'):
            settled = 1 + momentum * settled
        return torch.full_like(param, group['lr'] * settled)
    if 'betas' in group:
        second = second / (1 - group['betas'][1] ** float(state['step']))
    return group['lr'] / (second.sqrt() + group['eps'])


@dataclass(frozen=True)
class SparsityTerm:
    """One regulariser on one named parameter: ``weight * REGULARIZERS[kind](param, groups)``."""
    name: str
    param: str
    kind: str = 'group_lasso'
    weight: float = 1e-4
    groups: int = 1


def check_term(name: str, kind: str, weight: float) -> None:
    """The one check of a term's ``kind`` and ``weight`` (``jlml.reg_*`` in a config)."""
    if kind not in REGULARIZERS:
        raise ConfigError(f'unknown regulariser kind {kind!r} for {name}; '
                          f'choose one of {sorted(REGULARIZERS)}')
    if weight < 0:
        raise ConfigError(f'{name}: the regulariser weight must be >= 0, got {weight}')


class SparsityRegularizer:
    """Weighted sparsity terms on named parameters. The engine reports them every step
    (:meth:`report`) and minimises them with :meth:`proximal_step` after each optimizer
    step; calling it gives the terms as tensors.

    It works on any model's named parameters (e.g. osnet's ``fc.0.weight``), also
    inside ``DataParallel``/``DistributedDataParallel`` (the ``module.`` prefix is
    optional). Terms with weight 0 are skipped entirely and cost nothing.

    Example::

        regularizer = SparsityRegularizer(
            model, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso', 5e-4)])
        total, values = regularizer()  # the weighted sum (None when every weight is 0), each term
        optimizer.step()
        regularizer.proximal_step(optimizer)
    """

    def __init__(self, model: nn.Module, terms: Sequence[SparsityTerm]) -> None:
        params = dict(model.named_parameters())
        stripped = {k[len('module.'):]: v for k, v in params.items() if k.startswith('module.')}
        self.terms: List[Tuple[SparsityTerm, nn.Parameter]] = []
        for term in terms:
            check_term(term.name, term.kind, term.weight)
            param = params.get(term.param, stripped.get(term.param))
            if param is None:
                close = difflib.get_close_matches(term.param, list(stripped or params), n=3)
                hint = f'; did you mean {", ".join(close)}?' if close else ''
                raise ConfigError(f'{term.name}: the model has no parameter {term.param!r}{hint}')
            if term.weight > 0:
                if term.kind == 'exclusive_group_lasso':
                    exclusive_group_lasso(param.detach()[:1], term.groups)  # validates groups
                self.terms.append((term, param))

    def __bool__(self) -> bool:
        return bool(self.terms)

    @torch.no_grad()
    def proximal_step(self, optimizer: torch.optim.Optimizer) -> Dict[str, float]:
        """Applies each term's proximal operator to its parameter in the metric of the
        per-entry step sizes the optimizer just used there; call it right after
        ``optimizer.step()``. Returns, per term, for the log: ``tau_<name>``, the median
        shrinkage ``lambda * step`` (in weight units, over a strided sample), and ``zeros_<name>``, how many of
        its units (group LASSO: columns; otherwise entries) are now exactly 0."""
        log = {}
        for term, param in self.terms:
            steps = _step_sizes(optimizer, param)
            param.copy_(PROXIMAL[term.kind](param, term.weight, steps, term.groups))
            units = selection_norms(param, term.kind, term.groups)
            sample = steps.flatten()[::max(1, steps.numel() // 4096)]  # a median, cheaply
            log[f'tau_{term.name}'] = term.weight * float(sample.float().median())
            log[f'zeros_{term.name}'] = float((units == 0).sum())
        return log

    def own_weight_decay(self, optimizer: torch.optim.Optimizer) -> None:
        """Moves the penalised parameters into a parameter group of their own without
        weight decay: the term is their regulariser, and a weight decay on top would
        change the objective (and blur the controls). Call it before the optimizer has
        stepped and before an LR scheduler is built on it (schedulers record each group)."""
        penalised = [param for _, param in self.terms]
        for group in list(optimizer.param_groups):
            mine = [p for p in group['params'] if any(p is q for q in penalised)]
            if not mine:
                continue
            group['params'] = [p for p in group['params'] if not any(p is q for q in mine)]
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != 'params'},
                                       'params': mine, 'weight_decay': 0.0})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g['params']]

    @torch.no_grad()
    def report(self) -> Tuple[float, Dict[str, float]]:
        """The weighted sum and each unweighted term, as numbers for the log."""
        total, values = self()
        return (total.item() if total is not None else 0.0), {k: v.item() for k, v in values.items()}

    def __call__(self) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Returns the weighted sum (None if nothing is on) and each unweighted term."""
        values: Dict[str, torch.Tensor] = {}
        total = None
        for term, param in self.terms:
            with torch.autocast(param.device.type, enabled=False):
                value = REGULARIZERS[term.kind](param.float(), term.groups)
            values[term.name] = value.detach()
            total = term.weight * value if total is None else total + term.weight * value
        return total, values


def jlml_terms(model: nn.Module, weight_global: float = LAMBDA_GLOBAL,
               weight_local: float = LAMBDA_LOCAL) -> List[SparsityTerm]:
    """The paper's two terms on a JLML model's feature layers: a group LASSO on the global
    branch, an exclusive group LASSO (one group per stripe) on the local branch; branches
    the model lacks are skipped."""
    net = getattr(model, 'module', model)
    params = net.sparsity_params()
    terms = []
    if 'reg_global' in params:
        terms.append(SparsityTerm('reg_global', params['reg_global'], 'group_lasso',
                                  weight_global))
    if 'reg_local' in params:
        terms.append(SparsityTerm('reg_local', params['reg_local'], 'exclusive_group_lasso',
                                  weight_local, net.num_stripes))
    return terms


def jlml_sparsity(model: nn.Module, weight_global: float = LAMBDA_GLOBAL,
                  weight_local: float = LAMBDA_LOCAL) -> Optional[SparsityRegularizer]:
    """A hook with :func:`jlml_terms`; None when no term has a weight above 0."""
    regularizer = SparsityRegularizer(model, jlml_terms(model, weight_global, weight_local))
    return regularizer if regularizer else None
