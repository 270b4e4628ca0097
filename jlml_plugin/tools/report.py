"""Leaderboard results: one JSON record per (model, split), aggregated into tables and plots.

Records live in ``results.jsonl`` (rewritten atomically on every append). From them,
:func:`write_report` writes ``results.csv`` (one row per run), ``summary.json`` (mean
and std over splits per model), ``leaderboard.md`` (torchreid MODEL_ZOO style) and
``cmc.png`` (each model's mean CMC curve).
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter, OrderedDict
from typing import Any, Collection, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from . import stats
from .._files import atomic_open, atomic_write_text, exclusive_lock

__all__ = ['load_records', 'load_queries', 'load_diverged', 'append_diverged',
           'run_key', 'append_record', 'unrecorded', 'summarize', 'write_report', 'plot_cmc',
           'markdown_table', 'per_split_table', 'intervals_table', 'compare',
           'comparisons_table', 'plot_forest', 'in_view']

RECORDS = 'results.jsonl'
#: Each run's per-query outcomes (:class:`~jlml_plugin.metrics.PerQuery`), one line per
#: run, beside its record: what paired comparisons are computed from.
QUERIES = 'queries.jsonl'
#: Where a run's earlier record (and its queries) go when its rerun lands (the leaderboard
#: reruns a run only when its record is stale).
SUPERSEDED = 'superseded.jsonl'
SUPERSEDED_QUERIES = 'superseded_queries.jsonl'
#: Tuning runs whose loss stopped being a number: label, split, seed and the error.
DIVERGED = 'diverged.jsonl'
CSV_FIELDS = ['label', 'model', 'split_id', 'rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP',
              'single_shot_rank1', 'l2norm_rank1', 'l2norm_mAP', 'params', 'gflops', 'input', 'epochs', 'train_images_per_s', 'train_seconds',
              'wall_seconds', 'finished_at']
METRICS = ['rank1', 'rank5', 'rank10', 'rank20', 'mAP', 'mINP', 'single_shot_rank1',
           'l2norm_rank1', 'l2norm_mAP', 'train_images_per_s', 'wall_seconds']


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: str, records: List[Dict[str, Any]]) -> None:
    atomic_write_text(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in records))


def load_records(folder: str) -> List[Dict[str, Any]]:
    return _read_jsonl(os.path.join(folder, RECORDS))


def load_queries(folder: str) -> List[Dict[str, Any]]:
    """Per-query outcomes, one entry per run (``label``, ``split_id``, ``seed`` and the
    :meth:`~jlml_plugin.metrics.PerQuery.as_dict` lists)."""
    return _read_jsonl(os.path.join(folder, QUERIES))


def _folder_lock(folder: str):
    """Serialises writers of one results folder (several leaderboard runners may share it)."""
    return exclusive_lock(os.path.join(folder, '.lock'))


def load_diverged(folder: str) -> List[Dict[str, Any]]:
    return _read_jsonl(os.path.join(folder, DIVERGED))


def append_diverged(folder: str, entry: Dict[str, Any]) -> None:
    """Records a run that diverged (``label``, ``split_id``, ``seed``, ``error``)."""
    with _folder_lock(folder):
        _write_jsonl(os.path.join(folder, DIVERGED), load_diverged(folder) + [entry])


def run_key(record: Dict[str, Any]) -> tuple:
    """What identifies a run: label, split and seed (records before seeds were recorded
    trained with the protocol's seed 1)."""
    return record['label'], record['split_id'], record.get('seed', 1)


def append_record(folder: str, record: Dict[str, Any],
                  queries: Optional[Dict[str, Any]] = None) -> None:
    """Adds one finished run (and its per-query outcomes); each file is replaced whole, so
    it is never half-written, and under the folder's lock, so a concurrent append is never
    lost. An earlier record of the same run moves to ``SUPERSEDED`` (its queries to
    ``SUPERSEDED_QUERIES``), so each run counts once."""
    files = [(RECORDS, SUPERSEDED, record)]
    if queries is not None:
        files.append((QUERIES, SUPERSEDED_QUERIES, dict(
            label=record['label'], split_id=record['split_id'], seed=record.get('seed', 1),
            **queries)))
    with _folder_lock(folder):
        for name, superseded, entry in files:
            kept, replaced = [], []
            for old in _read_jsonl(os.path.join(folder, name)):
                (replaced if run_key(old) == run_key(entry) else kept).append(old)
            if replaced:
                _write_jsonl(os.path.join(folder, superseded),
                             _read_jsonl(os.path.join(folder, superseded)) + replaced)
            _write_jsonl(os.path.join(folder, name), kept + [entry])


def unrecorded(planned: Collection[tuple], records: List[Dict[str, Any]],
               diverged: List[Dict[str, Any]]) -> Set[tuple]:
    """The ``planned`` runs (label, split, seed) with no record yet; a tuning run that
    diverged counts as recorded (it is done, with no score)."""
    return set(planned) - {run_key(r) for r in records + diverged}


def summarize(records: List[Dict[str, Any]], order: Optional[List[str]] = None
              ) -> List[Dict[str, Any]]:
    """Mean and std over splits of each label's runs, in ``order`` (then first seen)."""
    groups: Dict[str, List[Dict[str, Any]]] = OrderedDict()
    for label in order or []:
        groups[label] = []
    for record in records:
        groups.setdefault(record['label'], []).append(record)
    rows = []
    for label, runs in groups.items():
        if not runs:
            continue
        row = dict(label=label, model=runs[0]['model'], params=runs[0]['params'],
                   gflops=runs[0]['gflops'], input=runs[0]['input'], epochs=runs[0]['epochs'],
                   splits=sorted(r['split_id'] for r in runs), group=runs[0].get('group', ''))
        for key in METRICS:
            if any(key not in r for r in runs):
                continue
            values = np.array([r[key] for r in runs], dtype=float)
            row[key] = float(values.mean())
            row[key + '_std'] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row['cmc'] = np.mean([r['cmc'] for r in runs], axis=0).tolist()
        rows.append(row)
    return rows


def _pm(row: Dict[str, Any], key: str, scale: float = 100.0, digits: int = 1) -> str:
    mean = f'{row[key] * scale:.{digits}f}'
    return f'{mean} ± {row[key + "_std"] * scale:.{digits}f}' if len(row['splits']) > 1 else mean


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """torchreid MODEL_ZOO-style table: R1 (mAP) first, then the rest; where every row has
    them, the single-shot R1 and the score of the L2-normalised feature."""
    single = all('single_shot_rank1' in row for row in rows)
    unit = all('l2norm_rank1' in row for row in rows)
    out = ['| Model | Params (M) | GFLOPs | Input | R1 (mAP) | R5 | R10 | mINP | '
           + ('R1 single-shot | ' if single else '')
           + ('R1 (mAP), L2-normalised | ' if unit else '') + 'train img/s | wall time | splits |',
           '|---|---|---|---|---|---|---|---|' + ('---|' if single else '') + ('---|' if unit else '')
           + '---|---|---|']
    for row in rows:
        minutes = row['wall_seconds'] / 60
        out.append(
            f"| {row['label']} | {row['params'] / 1e6:.1f} | {row['gflops']:.2f} | {row['input']} "
            f"| {_pm(row, 'rank1')} ({_pm(row, 'mAP')}) | {_pm(row, 'rank5')} "
            f"| {_pm(row, 'rank10')} | {_pm(row, 'mINP')} "
            + (f"| {_pm(row, 'single_shot_rank1')} " if single else '')
            + (f"| {_pm(row, 'l2norm_rank1')} ({_pm(row, 'l2norm_mAP')}) " if unit else '')
            + f"| {row['train_images_per_s']:.1f} | {minutes:.0f} min "
            f"| {len(row['splits'])} ({_split_counts(row['splits'])}) |")
    return '\n'.join(out) + '\n'


def _seeds_mark(seeds: int) -> str:
    """' ×2' after a figure of two seeds; nothing after a figure of one."""
    return f' ×{seeds}' if seeds > 1 else ''


def _split_counts(splits: List[int]) -> str:
    """'0, 2, 4' for one run per split; '0 ×2, 2' where a split ran with several seeds."""
    return ', '.join(f'{split}{_seeds_mark(n)}' for split, n in sorted(Counter(splits).items()))


def _split_means(records: List[Dict[str, Any]]) -> Dict[tuple, Dict[str, float]]:
    """R1 and mAP of each (label, split), averaged over its seeds, with the seed count."""
    runs: Dict[tuple, List[Dict[str, Any]]] = OrderedDict()
    for record in records:
        runs.setdefault((record['label'], record['split_id']), []).append(record)
    return {key: dict(rank1=float(np.mean([r['rank1'] for r in group])),
                      mAP=float(np.mean([r['mAP'] for r in group])), seeds=len(group))
            for key, group in runs.items()}


def per_split_table(records: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> str:
    """R1 (mAP) of every split, its seeds averaged (``×2``: two seeds): the spread behind
    each mean ± std."""
    splits = sorted({split for row in rows for split in row['splits']})
    means = _split_means(records)
    out = ['| Model | ' + ' | '.join(f'split {s}' for s in splits) + ' |',
           '|---|' + '---|' * len(splits)]
    for row in rows:
        cells = [means.get((row['label'], split)) for split in splits]
        out.append(f"| {row['label']} | " + ' | '.join(
            f"{m['rank1'] * 100:.1f} ({m['mAP'] * 100:.1f})"
            + _seeds_mark(m['seeds']) if m else '–'
            for m in cells) + ' |')
    return '\n'.join(out) + '\n'


#: The metrics a comparison reports, as :data:`jlml_plugin.tools.stats.METRICS` names them.
COMPARED = ('rank1', 'mAP')
_METRIC_NAMES = {'rank1': 'R1', 'mAP': 'mAP', 'rank1+mAP': 'R1 + mAP'}


def compare(records: List[Dict[str, Any]], queries: List[Dict[str, Any]],
            pairs: List[Tuple[str, str, str]], metrics: Sequence[str] = COMPARED,
            pending: Collection[tuple] = ()) -> List[Dict[str, Any]]:
    """Each ``(a, b, claim)``: ``a`` minus ``b`` in each metric (in points), per split from
    the records (R1 (mAP), seeds averaged) and pooled over the splits both ran, with the
    paired 95% interval over test identities (:mod:`jlml_plugin.tools.stats`) and its verdict.
    The pooled figures need per-query records of both; without them they are None.

    ``pending``: the runs (label, split, seed) a board plans and has not recorded yet. A
    pair with one of them gets its interval so far but no verdict: a board read part way
    must not state a finding that its missing splits or seeds could overturn."""
    means = _split_means(records)
    rows = []
    for a, b, claim in pairs:
        splits = sorted(s for (label, s) in means if label == a and (b, s) in means)
        row = dict(a=a, b=b, claim=claim, splits=splits, per_split={
            str(s): {k: (means[a, s][k] - means[b, s][k]) * 100 for k in ('rank1', 'mAP')}
            for s in splits})
        to_come = sum(1 for label, _, _ in pending if label in (a, b))
        for metric in metrics:
            interval = stats.paired_interval(queries, a, b, metric, splits)
            row[metric] = None if interval is None else dict(
                vars(interval.scaled(100)), verdict=_verdict(interval, to_come))
        rows.append(row)
    return rows


NO_VERDICT = 'no verdict yet'


def _verdict(interval: stats.Interval, to_come: int) -> str:
    """The interval's verdict, or none while ``to_come`` planned runs of the pair are missing."""
    if to_come:
        return f"{NO_VERDICT}: {to_come} run{'s' if to_come > 1 else ''} to come"
    return stats.verdict(interval)


def _cell(pooled: Optional[Dict[str, Any]]) -> str:
    if pooled is None:
        return 'no per-query records'
    return (f"{pooled['mean']:+.1f} [{pooled['low']:+.1f}, {pooled['high']:+.1f}] "
            f"{pooled['verdict']}")


def comparisons_table(rows: List[Dict[str, Any]], what: str,
                      metrics: Sequence[str] = COMPARED) -> str:
    """One row per comparison: the pooled difference with its interval and verdict in each
    metric, then each split's difference, R1 (mAP)."""
    splits = sorted({s for row in rows for s in row['splits']})
    header = ['claim', f'{what} pair', *(f'{_METRIC_NAMES[m]} difference [95% CI]' for m in metrics),
              *(f'split {s}' for s in splits)]
    out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        cells = [row['per_split'].get(str(s)) for s in splits]
        out.append('| ' + ' | '.join([row['claim'], f"{row['a']} − {row['b']}",
                                      *(_cell(row[m]) for m in metrics),
                                      *(f"{c['rank1']:+.1f} ({c['mAP']:+.1f})" if c else '–'
                                        for c in cells)]) + ' |')
    return '\n'.join(out) + '\n'


def plot_forest(rows: List[Dict[str, Any]], path: str, title: str = '') -> None:
    """A forest plot: one row per comparison (each with its pooled interval), its point and
    95% interval in R1 (left) and mAP (right), zero marked."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 1.2 + 0.45 * len(rows)), sharey=True)
    y = np.arange(len(rows))[::-1]
    for ax, metric in zip(axes, ('rank1', 'mAP')):
        for yi, row in zip(y, rows):
            pooled = row[metric]
            colour = {'holds': 'tab:green', 'fails': 'tab:red'}.get(pooled['verdict'], 'tab:grey')
            ax.plot([pooled['low'], pooled['high']], [yi, yi], color=colour, linewidth=2)
            ax.plot(pooled['mean'], yi, 'o', color=colour)
        ax.axvline(0, color='black', linewidth=0.8)
        ax.set_xlabel(f"{'R1' if metric == 'rank1' else 'mAP'} difference (points), 95% interval")
        ax.grid(axis='x', alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([f"{row['a']} − {row['b']}" for row in rows], fontsize=8)
    fig.suptitle(title or 'Paired differences, identities resampled', fontsize=10)
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def plot_cmc(rows: List[Dict[str, Any]], path: str, max_rank: int = 20,
             title: str = 'CMC') -> None:
    """Each row's mean CMC curve over ranks 1..``max_rank``, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        cmc = np.asarray(row['cmc'][:max_rank]) * 100
        style = '-' if row.get('group', '') != 'ablation' else '--'
        ax.plot(np.arange(1, len(cmc) + 1), cmc, style, marker='o', markersize=3,
                label=f"{row['label']} (R1 {cmc[0]:.1f})")
    ax.set_xlabel('rank')
    ax.set_ylabel('matching rate (%)')
    ax.set_title(title)
    ax.set_xlim(1, max_rank)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=110)
    plt.close(fig)


def intervals_table(queries: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> str:
    """Each model's R1 and mAP pooled over its splits and seeds, with the 95% interval
    over test identities; models without per-query records are left out."""
    out = ['| Model | runs | R1 [95% CI] | mAP [95% CI] |', '|---|---|---|---|']
    for row in rows:
        pooled = [stats.model_interval(queries, row['label'], m) for m in ('rank1', 'mAP')]
        if pooled[0] is None:
            continue
        runs = sum(1 for q in queries if q['label'] == row['label'])
        out.append(f"| {row['label']} | {runs} | " + ' | '.join(
            f'{p.mean * 100:.1f} [{p.low * 100:.1f}, {p.high * 100:.1f}]' for p in pooled) + ' |')
    return '\n'.join(out) + '\n' if len(out) > 2 else ''


def in_view(records: List[Dict[str, Any]], queries: List[Dict[str, Any]], view: str
            ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The records and per-query records as if ``view`` were every run's test feature: a
    view is another reading of the same features that a run scored beside its own
    (:attr:`jlml_plugin.metrics.RankResult.views`, e.g. ``l2norm``). Each run's R1, mAP
    and per-query outcomes become the view's; runs that did not score it are left out."""
    rank1 = f'{view}_rank1'
    return ([dict(r, rank1=r[rank1], mAP=r[f'{view}_mAP']) for r in records if rank1 in r],
            [dict(q, **q['views'][view]) for q in queries if view in q.get('views', {})])


def _comparisons(records: List[Dict[str, Any]], queries: List[Dict[str, Any]],
                 rankings: Sequence[Tuple[str, str, str]], claims: Sequence[Tuple[str, str, str]],
                 pending: Collection[tuple] = (), shared_only: bool = False
                 ) -> Dict[str, List[Dict[str, Any]]]:
    """The rankings and claims, by section (``pending``: as :func:`compare`); ``shared_only``:
    only those with a split both sides ran (in a view, the others are pairs that one side
    cannot be read in)."""
    sections = {'rankings': compare(records, queries, list(rankings), pending=pending),
                'claims': compare(records, queries, list(claims), pending=pending)}
    if shared_only:
        sections = {name: [row for row in rows if row['splits']] for name, rows in sections.items()}
    return sections


def _comparison_text(sections: Dict[str, List[Dict[str, Any]]], where: str = '') -> str:
    body = ''
    for name, what in (('rankings', 'model'), ('claims', 'ablation')):
        if sections[name]:
            body += (f'\n### {name}{where}: the first minus the second, paired by query\n\n'
                     f'{comparisons_table(sections[name], what)}')
    return body


def _draw_forest(sections: Dict[str, List[Dict[str, Any]]], path: str, title: str) -> None:
    paired = [row for rows in sections.values() for row in rows if row['rank1']]
    if paired:
        plot_forest(paired, path, title)


def write_report(folder: str, order: Optional[List[str]] = None, title: str = '',
                 header: str = '', rankings: Sequence[Tuple[str, str, str]] = (),
                 claims: Sequence[Tuple[str, str, str]] = (),
                 views: Optional[Dict[str, str]] = None, planned: Collection[tuple] = ()
                 ) -> List[Dict[str, Any]]:
    """Regenerates every report file in ``folder`` from its records: ``results.csv``,
    ``summary.json``, ``leaderboard.md``, ``cmc.png``, and where there are comparisons,
    ``comparisons.json`` and ``forest.png``. ``rankings`` (a model against each baseline)
    and ``claims`` (a model against each ablation) are ``(a, b, claim)``: ``a`` minus
    ``b``, paired by query. ``views`` (name: what it reads) states them again in each
    view (:func:`in_view`) where both sides scored it, with ``forest_<view>.png``.
    ``planned``: every run (label, split, seed) of the board; a comparison with one of them
    not yet recorded gets no verdict (:func:`compare`)."""
    with _folder_lock(folder):  # the files then agree with one state of the records
        records = load_records(folder)
        queries = load_queries(folder)
        diverged = load_diverged(folder)
        pending = unrecorded(planned, records, diverged)
        rows = summarize(records, order)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction='ignore',
                                lineterminator='\n')
        writer.writeheader()
        for record in records:
            writer.writerow(record)
        atomic_write_text(os.path.join(folder, 'results.csv'), text.getvalue())
        atomic_write_text(os.path.join(folder, 'summary.json'), json.dumps(rows, indent=1) + '\n')
        groups = OrderedDict()
        for row in rows:
            groups.setdefault(row['group'] or 'models', []).append(row)
        body = ''
        for name, group in groups.items():
            body += f'\n### {name}\n\n{markdown_table(group)}'
            if any(len(row['splits']) > 1 for row in group):
                body += f'\n### {name}, per split: R1 (mAP)\n\n{per_split_table(records, group)}'
            pooled = intervals_table(queries, group)
            if pooled:
                body += f'\n### {name}, pooled over splits and seeds\n\n{pooled}'
        sections: Dict[str, Any] = _comparisons(records, queries, rankings, claims, pending)
        body += _comparison_text(sections)
        _draw_forest(sections, os.path.join(folder, 'forest.png'), title)
        views = views or {}
        in_views = {view: _comparisons(*in_view(records, queries, view), rankings, claims,
                                       pending, shared_only=True) for view in views}
        for view, meaning in views.items():
            body += _comparison_text(in_views[view], f' in view {view} ({meaning})')
            _draw_forest(in_views[view], os.path.join(folder, f'forest_{view}.png'),
                         f'{title}, view {view}' if title else f'view {view}')
        if any(sections.values()) or any(any(s.values()) for s in in_views.values()):
            undecided = any(cell and cell['verdict'].startswith(NO_VERDICT)
                            for part in [sections, *in_views.values()] for rows in part.values()
                            for row in rows for cell in (row[m] for m in COMPARED))
            body += COMPARISONS_NOTE + (NO_VERDICT_NOTE if undecided else '')
            if in_views:
                sections['views'] = in_views
            atomic_write_text(os.path.join(folder, 'comparisons.json'),
                              json.dumps(sections, indent=1) + '\n')
        if diverged:
            body += '\n### diverged\n\n' + ''.join(
                f"- {d['label']} (split {d['split_id']}, seed {d['seed']}): {d['error']}\n"
                for d in diverged)
        atomic_write_text(os.path.join(folder, 'leaderboard.md'),
                          f'# {title or "Leaderboard"}\n\n{header}{body}')
        if rows:
            plot_cmc(rows, os.path.join(folder, 'cmc.png'), title=title or 'CMC')
        return rows


#: How to read the comparison tables, printed under them.
COMPARISONS_NOTE = """
Differences are in points. The interval is a paired bootstrap over test identities (all
queries of a person, in every split that tests them, are drawn together; a model's seeds are
averaged query by query), 10,000 draws, 95% percentile. **holds**: the interval lies above zero; **fails**:
below; **not shown**: it contains zero. The per-split columns are point differences.
"""
#: Added under it while a comparison waits for a run.
NO_VERDICT_NOTE = """**no verdict yet**: a run of either side that the board plans has not landed; the
interval covers the runs so far.
"""
