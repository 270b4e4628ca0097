"""``jlml-sparsity``: what the structured-sparsity terms selected in a checkpoint.

    jlml-sparsity --checkpoint log/jlml_cuhk01/model/model.pth.tar-30

For each term (by default JLML's two: the group LASSO on the global feature layer, the
exclusive group LASSO on the local one) it prints how many of the units the norm can
switch off are (near) zero, and plots their sizes, sorted, relative to the largest
(PNG, log scale). The units are the global layer's input columns (its groups) and the
local layer's entries, per stripe (its groups all stay alive by design; the entries
inside each compete). A unit counts as off below ``1e-3`` of the largest.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import Any, Dict, List, Optional

import torch

from ._cli import command_parser, main_wrapper
from ._files import atomic_open
from .checkpoint import load_checkpoint, model_state
from .errors import CheckpointError
from .models import MODELS
from .regularizers import SparsityTerm, jlml_terms, selection_norms

__all__ = ['OFF_RATIO', 'checkpoint_terms', 'selection_summary', 'plot_selection', 'main']

#: A unit below this fraction of the largest one counts as switched off.
OFF_RATIO = 1e-3


def checkpoint_terms(checkpoint: Dict[str, Any]) -> List[SparsityTerm]:
    """The terms a checkpoint was trained with (its ``meta``), or JLML's two for a JLML
    checkpoint trained with none (lambda = 0), so the two can be compared."""
    meta = checkpoint.get('meta') or {}
    terms = [SparsityTerm(**t) for t in meta.get('sparsity') or []]
    if terms:
        return terms
    name = meta.get('model_name', '')
    if name in MODELS:
        return jlml_terms(MODELS[name](1, **meta.get('model_kwargs', {})), 0.0, 0.0)
    raise CheckpointError('the checkpoint names no sparsity terms and no JLML model; '
                          'train it with jlml.reg_*.param set, or pass a JLML checkpoint')


def selection_summary(state_dict: Dict[str, torch.Tensor],
                      terms: List[SparsityTerm]) -> Dict[str, Dict[str, Any]]:
    """Per term: how many units are exactly 0 and how many are under ``OFF_RATIO`` of the
    largest (overall, and per stripe for the exclusive group LASSO), and ``curves``:
    the unit sizes over the largest, sorted, per stripe where there are stripes."""
    state = model_state(state_dict)
    summary = {}
    for term in terms:
        if term.param not in state:
            raise CheckpointError(f'{term.name}: the checkpoint has no parameter {term.param!r}')
        norms = selection_norms(state[term.param], term.kind, term.groups)
        largest = float(norms.max())
        off = norms <= OFF_RATIO * largest
        entry = dict(term=asdict(term), units=norms.numel(), exact_zeros=int((norms == 0).sum()),
                     off=int(off.sum()), off_fraction=float(off.float().mean()), largest=largest)
        if term.kind == 'exclusive_group_lasso':
            entry['off_fraction_per_group'] = off.reshape(term.groups, -1).float().mean(1).tolist()
            curves = {f'stripe {g + 1}': part for g, part in
                      enumerate(norms.reshape(term.groups, -1))}
        else:
            curves = {'columns': norms}
        entry['curves'] = {label: part.sort(descending=True).values / (largest or 1.0)
                           for label, part in curves.items()}
        summary[term.name] = entry
    return summary


def plot_selection(summary: Dict[str, Dict[str, Any]], path: str, title: str = '') -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], summary.items()):
        # Zeros cannot sit on a log axis: they are drawn at the floor, and counted in the title.
        floor = OFF_RATIO / 100
        for label, values in entry['curves'].items():
            ax.plot(values.clamp_min(floor).numpy(), lw=1.2, label=label)
        ax.axhline(OFF_RATIO, color='grey', ls='--', lw=1, label=f'{OFF_RATIO:g} x largest')
        ax.set_yscale('log')
        ax.set_ylim(floor / 2, 2)
        unit = 'input columns (L2 norm)' if entry['term']['kind'] == 'group_lasso' \
            else 'entries (|w|)'
        ax.set_xlabel(f'{unit}, sorted')
        ax.set_ylabel('size / largest')
        ax.set_title(f'{name} ({entry["term"]["kind"]}, {entry["term"]["param"]})\n'
                     f'{entry["off"]}/{entry["units"]} off ({entry["off_fraction"]:.1%}), '
                     f'{entry["exact_zeros"]} exactly 0', fontsize=9)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def build_parser():
    parser = command_parser('jlml-sparsity', __doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a checkpoint written by jlml-train')
    parser.add_argument('--output', default='',
                        help='PNG to write (default: <checkpoint>.sparsity.png); '
                             'the JSON summary goes beside it')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise CheckpointError(f'no checkpoint at {args.checkpoint}')
    checkpoint = load_checkpoint(args.checkpoint)
    summary = selection_summary(model_state(checkpoint), checkpoint_terms(checkpoint))
    png = args.output or args.checkpoint + '.sparsity.png'
    plot_selection(summary, png, os.path.basename(args.checkpoint))
    with atomic_open(os.path.splitext(png)[0] + '.json', 'w') as f:
        json.dump({name: {k: v for k, v in e.items() if k != 'curves'}
                   for name, e in summary.items()}, f, indent=1)
    print(f'{"term":<11} {"kind":<22} {"units":>7} {"exactly 0":>10} {"off (<1e-3)":>12}')
    for name, e in summary.items():
        print(f'{name:<11} {e["term"]["kind"]:<22} {e["units"]:>7} {e["exact_zeros"]:>10} '
              f'{e["off_fraction"]:>12.1%}')
        if 'off_fraction_per_group' in e:
            print(f'{"":<11} off per stripe: '
                  + ', '.join(f'{v:.1%}' for v in e['off_fraction_per_group']))
    print(f'plot: {png}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-sparsity', run, argv)


if __name__ == '__main__':
    sys.exit(main())
