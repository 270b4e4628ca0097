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

The terms are minimised by a **proximal step** after each optimizer step (ISTA, applied
to the smooth loss's optimizer): the optimizer takes the identity losses' step, then
:meth:`SparsityHook.proximal_step` applies each norm's proximal operator, which sets
groups (group LASSO) or entries (exclusive group LASSO) to exact zeros. A subgradient
in the loss would only make them oscillate around zero. The step size is the one the
optimizer just used on those weights (``lr / (sqrt(v) + eps)`` for Adam-type
optimizers, averaged over each group), so ``lambda`` weighs the terms against the
identity losses as it would in the loss.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError

__all__ = ['group_lasso', 'exclusive_group_lasso', 'prox_group_lasso',
           'prox_exclusive_group_lasso', 'selection_norms', 'REGULARIZERS', 'SparsityTerm',
           'SparsityHook', 'jlml_terms', 'jlml_sparsity', 'LAMBDA_GLOBAL', 'LAMBDA_LOCAL']

#: Default weights (ours; the paper's are unknown), chosen on cuhk01_val (BENCHMARKS.md):
#: 30 x 5e-4 for the global term and 300 x 5e-7 for the local one. At 1 x, each weighted
#: term is about 0.7 at initialisation, the order of one identity loss
#: (docs/regularizers.md). At 100 x the global term switches every column off.
LAMBDA_GLOBAL = 1.5e-2
LAMBDA_LOCAL = 1.5e-4


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


def prox_group_lasso(weight: torch.Tensor, tau: torch.Tensor, groups: int = 0) -> torch.Tensor:
    """The proximal operator of ``tau_j * ||W[:, j]||_2`` summed over columns: each column
    shrinks towards 0 by ``tau_j`` in norm, and is exactly 0 when its norm is below it.
    ``tau`` is a scalar or one value per column."""
    rows = weight.reshape(weight.shape[0], -1)
    norms = rows.norm(dim=0)
    factor = (1 - tau / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_min(0)
    return (rows * factor).reshape(weight.shape)


def prox_exclusive_group_lasso(weight: torch.Tensor, tau: torch.Tensor,
                               groups: int = 1) -> torch.Tensor:
    """The proximal operator of ``tau_kg * (sum_{j in g} |W[k, j]|)^2`` summed over rows
    ``k`` and column groups ``g`` (Kong et al. 2014): within each (row, group) every entry
    is soft-thresholded by one threshold ``theta``, so small entries become exactly 0,
    while the largest entry of every group always survives. ``tau`` is a scalar or one
    value per (row, group).

    With the entries' magnitudes sorted, ``a_1 >= a_2 >= ...``, the kept set is the
    longest prefix with ``a_s > 2 tau (a_1 + ... + a_s) / (1 + 2 tau s)``, and ``theta``
    is that bound at its last element.
    """
    blocks = _column_groups(weight, groups)
    tau = torch.as_tensor(tau, dtype=blocks.dtype, device=blocks.device)
    tau = tau.expand(blocks.shape[:2]).unsqueeze(-1)
    magnitude = blocks.abs()
    ranked = magnitude.sort(dim=-1, descending=True).values
    count = torch.arange(1, ranked.shape[-1] + 1, dtype=blocks.dtype, device=blocks.device)
    bound = 2 * tau * ranked.cumsum(-1) / (1 + 2 * tau * count)
    kept = (ranked > bound).sum(-1, keepdim=True).clamp_min(1)
    theta = bound.gather(-1, kept - 1)
    return (blocks.sign() * (magnitude - theta).clamp_min(0)).reshape(weight.shape)


def selection_norms(weight: torch.Tensor, kind: str, groups: int = 1) -> torch.Tensor:
    """The sizes of what a term can switch off, flat: each column's L2 norm for the group
    LASSO (its groups), each entry's magnitude for the exclusive group LASSO (whose
    groups all stay alive while the entries inside them compete)."""
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    if kind == 'group_lasso':
        return rows.norm(dim=0)
    return _column_groups(rows, groups).abs().permute(1, 0, 2).reshape(-1)


#: Regularisers by the name configs use, and their proximal operators.
REGULARIZERS: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    'group_lasso': group_lasso,
    'exclusive_group_lasso': exclusive_group_lasso,
}
PROXIMAL = {
    'group_lasso': prox_group_lasso,
    'exclusive_group_lasso': prox_exclusive_group_lasso,
}


def _step_sizes(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> torch.Tensor:
    """The step size the optimizer applies to each entry of ``param``: ``lr`` for SGD,
    ``lr / (sqrt(v_hat) + eps)`` for Adam/AMSGrad (``v_hat`` bias-corrected) and
    ``lr / (sqrt(v) + eps)`` for RMSprop."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g['params']))
    state = optimizer.state.get(param, {})
    second = next((state[k] for k in ('max_exp_avg_sq', 'exp_avg_sq', 'square_avg')
                   if k in state), None)
    if second is None:
        return torch.full_like(param, group['lr'])
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


class SparsityHook:
    """Weighted sparsity terms on named parameters. The engine reports them every step
    (``hook()``) and minimises them with :meth:`proximal_step` after each optimizer step.

    It works on any model's named parameters (e.g. osnet's ``fc.0.weight``), also
    inside ``DataParallel``/``DistributedDataParallel`` (the ``module.`` prefix is
    optional). Terms with weight 0 are skipped entirely and cost nothing.

    Example::

        hook = SparsityHook(model, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso', 5e-4)])
        total, values = hook()   # the weighted sum (None when every weight is 0), each term
        optimizer.step()
        hook.proximal_step(optimizer)
    """

    def __init__(self, model: nn.Module, terms: Sequence[SparsityTerm]) -> None:
        params = dict(model.named_parameters())
        stripped = {k[len('module.'):]: v for k, v in params.items() if k.startswith('module.')}
        self.terms: List[Tuple[SparsityTerm, nn.Parameter]] = []
        self.names = [t.name for t in terms]
        for term in terms:
            if term.kind not in REGULARIZERS:
                raise ConfigError(f'unknown regulariser kind {term.kind!r} for {term.name}; '
                                  f'choose one of {sorted(REGULARIZERS)}')
            if term.weight < 0:
                raise ConfigError(f'{term.name}: the regulariser weight must be >= 0, '
                                  f'got {term.weight}')
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
    def proximal_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Applies each term's proximal operator to its parameter, with the step size the
        optimizer just used there (averaged over each group); call it right after
        ``optimizer.step()``."""
        for term, param in self.terms:
            steps = _step_sizes(optimizer, param).float().reshape(param.shape[0], -1)
            if term.kind == 'group_lasso':
                steps = steps.mean(dim=0)
            else:
                steps = _column_groups(steps, term.groups).mean(dim=-1)
            shrunk = PROXIMAL[term.kind](param.float(), term.weight * steps, term.groups)
            param.copy_(shrunk.to(param.dtype))

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
                  weight_local: float = LAMBDA_LOCAL) -> Optional[SparsityHook]:
    """A hook with :func:`jlml_terms`; None when no term has a weight above 0."""
    hook = SparsityHook(model, jlml_terms(model, weight_global, weight_local))
    return hook if hook else None
