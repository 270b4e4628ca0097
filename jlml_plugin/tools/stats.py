"""Uncertainty of leaderboard figures: a bootstrap over test identities, paired by query.

A re-id test set is a sample of people, and each person is queried more than once (two
queries per identity on CUHK01), so queries are not independent. Every interval here
resamples **identities**: each draw picks as many identities as there are, with
replacement, and keeps all of a picked identity's queries, in every split it is tested
in. CUHK01's partitions overlap (a person is a test identity of about half of them, with
the same images), so an identity's queries in two splits are one unit, not two; the
statistic pools all queries.

A comparison of two models is **paired**: both were evaluated on the same queries, so the
per-query difference of their outcomes is resampled, not each model on its own. Runs of
one model with several seeds are first averaged query by query.

:func:`bootstrap_mean` is the engine of both; :func:`verdict` reads an interval.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['Interval', 'bootstrap_mean', 'verdict', 'query_scores', 'runs_by_split',
           'model_interval', 'paired_interval', 'METRICS']

#: What a query contributes to each metric; the mean over queries is the metric.
METRICS = {
    'rank1': lambda first_rank, ap: (first_rank == 1).astype(float),
    'mAP': lambda first_rank, ap: ap,
    'rank1+mAP': lambda first_rank, ap: (first_rank == 1) + ap,
}
DRAWS = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A pooled mean with its bootstrap percentile interval."""
    mean: float
    low: float
    high: float

    def scaled(self, factor: float) -> 'Interval':
        return Interval(self.mean * factor, self.low * factor, self.high * factor)


def bootstrap_mean(splits: Sequence[Tuple[np.ndarray, np.ndarray]], draws: int = DRAWS,
                   level: float = LEVEL, seed: int = 0) -> Interval:
    """The mean of ``values`` over every query of every split, with a ``level`` percentile
    interval from ``draws`` resamples of the identities (an identity found in several
    splits is one unit: it is drawn, or not, with all its queries in all of them).

    ``splits``: one ``(identities, values)`` pair per split, one entry per query.
    """
    identities = np.concatenate([np.asarray(ids) for ids, _ in splits]) if splits else []
    values = np.concatenate([np.asarray(v, dtype=float) for _, v in splits]) if splits else []
    if len(values) == 0:
        raise ValueError('no queries to bootstrap')
    _, owner = np.unique(identities, return_inverse=True)
    sums = np.bincount(owner, weights=values)
    counts = np.bincount(owner).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.multinomial(len(sums), np.full(len(sums), 1 / len(sums)), size=draws)
    tail = (1 - level) / 2
    low, high = np.quantile((picks @ sums) / (picks @ counts), [tail, 1 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def verdict(interval: Interval) -> str:
    """``holds`` when the interval lies above zero, ``fails`` when below, else ``not shown``."""
    if interval.low > 0:
        return 'holds'
    if interval.high < 0:
        return 'fails'
    return 'not shown'


def query_scores(runs: List[Dict[str, list]], metric: str) -> Tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """(query index, identity, score) of one model on one split, its seeds' runs averaged
    query by query. ``runs``: per-query records (:meth:`~jlml_plugin.metrics.PerQuery.as_dict`)
    of the same queries."""
    index = np.asarray(runs[0]['index'])
    pid = np.asarray(runs[0]['pid'])
    scores = []
    for run in runs:
        if not np.array_equal(run['index'], index) or not np.array_equal(run['pid'], pid):
            raise ValueError('runs of one split must score the same queries')
        scores.append(METRICS[metric](np.asarray(run['first_rank']), np.asarray(run['ap'])))
    return index, pid, np.mean(scores, axis=0)


def runs_by_split(queries: Iterable[Dict], label: str) -> Dict[int, List[Dict]]:
    """A label's per-query records grouped by split (one entry per seed)."""
    out: Dict[int, List[Dict]] = {}
    for entry in queries:
        if entry['label'] == label:
            out.setdefault(entry['split_id'], []).append(entry)
    return out


def model_interval(queries: List[Dict], label: str, metric: str,
                   splits: Optional[Sequence[int]] = None) -> Optional[Interval]:
    """``label``'s pooled ``metric`` over ``splits`` (default: all it ran), with its
    interval; None without per-query records."""
    runs = runs_by_split(queries, label)
    parts = [query_scores(runs[s], metric)[1:] for s in sorted(runs)
             if splits is None or s in splits]
    return bootstrap_mean(parts) if parts else None


def paired_interval(queries: List[Dict], a: str, b: str, metric: str,
                    splits: Optional[Sequence[int]] = None) -> Optional[Interval]:
    """``a`` minus ``b`` in ``metric``, query by query, pooled over the splits both ran
    (of ``splits``, if given), with its interval; None where they share no split."""
    runs_a, runs_b = runs_by_split(queries, a), runs_by_split(queries, b)
    parts = []
    for split in sorted(set(runs_a) & set(runs_b)):
        if splits is not None and split not in splits:
            continue
        index, pid, score_a = query_scores(runs_a[split], metric)
        index_b, _, score_b = query_scores(runs_b[split], metric)
        if not np.array_equal(index, index_b):
            raise ValueError(f'{a} and {b} scored different queries on split {split}')
        parts.append((pid, score_a - score_b))
    return bootstrap_mean(parts) if parts else None
