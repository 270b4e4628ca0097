"""What the sparsity terms selected, in one checkpoint or along a path (``jlml-sparsity``).

For each term of a checkpoint (by default JLML's two: the group LASSO on the global
feature layer, the exclusive group LASSO on the local one) it prints how many of the
units the norm can switch off are exactly zero and how many are under ``1e-3`` of the
largest ("off"), and plots their sizes, sorted, relative to the largest (PNG, log scale).
The units are the global layer's input columns (its groups) and the local layer's
entries, per stripe (its groups all stay alive by design; the entries inside each compete).

With ``--board``, it draws the **selection path** of a leaderboard's runs that differ in
one config ``--key`` (a lambda, say), like glmnet's regularisation path: against the key,
each run's R1 + mAP (with its 95% interval where per-query records exist) and, per term,
the fraction of units exactly zero and under ``1e-3`` of the largest, from the
``selection`` each leaderboard record carries; and the best point's paired lead over each
other point, with its interval, so a choice along the path comes with its evidence.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._files import atomic_open
from . import report, stats
from ..checkpoint import latest_checkpoint, load_checkpoint, model_state
from ..errors import CheckpointError, ConfigError
from ..models import MODELS, build
from ..regularizers import SparsityTerm, jlml_terms, selection_norms

__all__ = ['OFF_RATIO', 'checkpoint_terms', 'selection_summary', 'selection_record',
           'selection_path', 'plot_path', 'plot_selection', 'write_path',
           'write_checkpoint_selection']

#: A unit below this fraction of the largest one counts as switched off.
OFF_RATIO = 1e-3


def checkpoint_terms(checkpoint: Dict[str, Any]) -> List[SparsityTerm]:
    """The terms a checkpoint was trained with (its ``meta``). On a JLML model, each of
    JLML's two feature layers that no term trained is added with its term at weight 0:
    every run of a path then reports both layers, and its lambda = 0 point is the
    reference of either term's path."""
    meta = checkpoint.get('meta') or {}
    terms = [SparsityTerm(**t) for t in meta.get('sparsity') or []]
    name = meta.get('model_name', '')
    if name in MODELS:
        trained = {term.name: term for term in terms}
        untrained = jlml_terms(build(name, 1, **meta.get('model_kwargs', {})), 0.0, 0.0)
        terms = [trained.pop(t.name, t) for t in untrained] + list(trained.values())
    if terms:
        return terms
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
            entry['zeros_per_group'] = (norms == 0).reshape(term.groups, -1).sum(1).tolist()
            curves = {f'stripe {g + 1}': part for g, part in
                      enumerate(norms.reshape(term.groups, -1))}
        else:
            curves = {'columns': norms}
        entry['curves'] = {label: part.sort(descending=True).values / (largest or 1.0)
                           for label, part in curves.items()}
        summary[term.name] = entry
    return summary


def selection_record(save_dir: str) -> Optional[Dict[str, Dict[str, Any]]]:
    """The selection of a finished run's newest checkpoint, without the curves (what a
    leaderboard record keeps), or None for a model without sparsity terms."""
    path = latest_checkpoint(save_dir)
    checkpoint = load_checkpoint(path) if path else {}
    try:
        terms = checkpoint_terms(checkpoint)
    except CheckpointError:
        return None
    summary = selection_summary(model_state(checkpoint), terms)
    for entry in summary.values():
        entry.pop('curves')
    return summary


def selection_path(records: List[Dict[str, Any]], queries: List[Dict[str, Any]], key: str
                   ) -> Dict[str, Any]:
    """The path along ``key``: ``points``, one per record with ``key`` in its config and a
    ``selection``, sorted by the key, and ``best``, the label of the point with the highest
    R1 + mAP, the smaller value on a tie (the rule the sparsity_path configs state before
    their runs). Each point has its value, R1 + mAP (and interval), per term the units,
    exact zeros and off, and ``best_minus_this``: the best point minus this one in R1 and
    mAP, paired by query, with the interval and verdict of
    :func:`jlml_plugin.tools.report.compare` (None at the best point, or without per-query
    records)."""
    points = []
    for record in records:
        if key not in record.get('config', {}) or not record.get('selection'):
            continue
        interval = stats.model_interval(queries, record['label'], 'rank1+mAP',
                                        [record['split_id']])
        points.append(dict(
            label=record['label'], value=record['config'][key],
            score=record['rank1'] + record['mAP'],
            interval=[interval.low, interval.high] if interval else None,
            terms={name: {k: e[k] for k in ('units', 'exact_zeros', 'off')}
                   for name, e in record['selection'].items()}))
    points.sort(key=lambda p: p['value'])
    # max keeps the first of equal scores: with the points sorted, the smaller value.
    best = max(points, key=lambda p: p['score'])['label'] if points else None
    for point in points:
        point['best_minus_this'] = None
        if point['label'] != best:
            row, = report.compare(records, queries, [(best, point['label'], '')])
            if row['rank1']:
                point['best_minus_this'] = {m: row[m] for m in report.COMPARED}
    return dict(key=key, best=best, points=points)


def plot_path(points: List[Dict[str, Any]], key: str, path: str) -> None:
    """R1 + mAP (top) and each term's fraction of units exactly 0 (solid) and under
    ``OFF_RATIO`` of the largest (dashed), against ``key`` on a symmetric log axis."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    x = [p['value'] for p in points]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    scores = [p['score'] * 100 for p in points]
    errors = [[(p['score'] - p['interval'][0]) * 100 if p['interval'] else 0 for p in points],
              [(p['interval'][1] - p['score']) * 100 if p['interval'] else 0 for p in points]]
    top.errorbar(x, scores, yerr=errors, marker='o', capsize=3)
    top.set_ylabel('R1 + mAP (points), 95% interval')
    top.grid(alpha=0.3)
    for name in sorted({n for p in points for n in p['terms']}):
        have = [(p['value'], p['terms'][name]) for p in points if name in p['terms']]
        line, = bottom.plot([v for v, _ in have], [t['exact_zeros'] / t['units'] for _, t in have],
                            marker='o', label=f'{name}: exactly 0')
        bottom.plot([v for v, _ in have], [t['off'] / t['units'] for _, t in have], '--',
                    marker='x', color=line.get_color(), label=f'{name}: < {OFF_RATIO:g} x largest')
    bottom.set_ylabel('fraction of units switched off')
    bottom.set_xlabel(key)
    bottom.set_xscale('symlog', linthresh=min([v for v in x if v > 0] or [1]) / 2)
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


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


def write_path(board: str, key: str, labels: List[str], png: str = '') -> Tuple[Dict[str, Any], str]:
    """The selection path of a board's runs along ``key`` (those in ``labels``; all if
    none): its plot (``png``, by default ``<board>/path_<key>.png``) and JSON beside it.
    Returns the path (:func:`selection_path`) and the plot's path."""
    records = [r for r in report.load_records(board) if not labels or r['label'] in labels]
    path = selection_path(records, report.load_queries(board), key)
    if len(path['points']) < 2:
        raise ConfigError(f'{board}: {len(path["points"])} records with {key} in their config '
                          f'and a selection; a path needs 2 or more (records before 2026-12-03 '
                          f'carry no selection)')
    png = png or os.path.join(board, f'path_{key}.png')
    plot_path(path['points'], key, png)
    with atomic_open(os.path.splitext(png)[0] + '.json', 'w') as f:
        json.dump(path, f, indent=1)
    return path, png


def write_checkpoint_selection(checkpoint: str, png: str = '') -> Tuple[Dict[str, Dict[str, Any]], str]:
    """What each sparsity term of a checkpoint selected: the plot (``png``, by default
    ``<checkpoint>.sparsity.png``) and JSON beside it. Returns the summary and the plot's
    path."""
    if not os.path.isfile(checkpoint):
        raise CheckpointError(f'no checkpoint at {checkpoint}')
    loaded = load_checkpoint(checkpoint)
    summary = selection_summary(model_state(loaded), checkpoint_terms(loaded))
    png = png or checkpoint + '.sparsity.png'
    plot_selection(summary, png, os.path.basename(checkpoint))
    with atomic_open(os.path.splitext(png)[0] + '.json', 'w') as f:
        json.dump({name: {k: v for k, v in e.items() if k != 'curves'}
                   for name, e in summary.items()}, f, indent=1)
    return summary, png
