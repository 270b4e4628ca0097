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
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError

__all__ = ['group_lasso', 'exclusive_group_lasso', 'REGULARIZERS', 'SparsityTerm',
           'SparsityHook', 'jlml_sparsity', 'LAMBDA_GLOBAL', 'LAMBDA_LOCAL']

#: Default weights (our choice; the paper's are unknown): each term is about 0.5 at
#: initialisation, the order of one identity loss (docs/regularizers.md).
LAMBDA_GLOBAL = 5e-4
LAMBDA_LOCAL = 5e-7


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
    return rows.abs().reshape(rows.shape[0], groups, -1).sum(dim=2).square().sum()


#: Regularisers by the name configs use.
REGULARIZERS: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    'group_lasso': group_lasso,
    'exclusive_group_lasso': exclusive_group_lasso,
}


@dataclass(frozen=True)
class SparsityTerm:
    """One regulariser on one named parameter: ``weight * REGULARIZERS[kind](param, groups)``."""
    name: str
    param: str
    kind: str = 'group_lasso'
    weight: float = 1e-4
    groups: int = 1


class SparsityHook:
    """Adds weighted sparsity terms to the loss; the engine calls it once per step.

    It works on any model's named parameters (e.g. osnet's ``fc.0.weight``), also
    inside ``DataParallel``/``DistributedDataParallel`` (the ``module.`` prefix is
    optional). Terms with weight 0 are skipped entirely and cost nothing.

    Example::

        hook = SparsityHook(model, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso', 5e-4)])
        total, values = hook()   # total is None when every weight is 0
        loss = loss + total
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


def jlml_sparsity(model: nn.Module, weight_global: float = LAMBDA_GLOBAL,
                  weight_local: float = LAMBDA_LOCAL) -> Optional[SparsityHook]:
    """The paper's two terms on a JLML model's feature layers: a group LASSO on the global
    branch, an exclusive group LASSO (one group per stripe) on the local branch.

    Branches the model lacks are skipped; None when no term is left.
    """
    net = getattr(model, 'module', model)
    params = net.sparsity_params()
    terms = []
    if 'reg_global' in params:
        terms.append(SparsityTerm('reg_global', params['reg_global'], 'group_lasso',
                                  weight_global))
    if 'reg_local' in params:
        terms.append(SparsityTerm('reg_local', params['reg_local'], 'exclusive_group_lasso',
                                  weight_local, net.num_stripes))
    hook = SparsityHook(model, terms)
    return hook if hook else None
