"""An exact, vectorised re-id evaluator: CMC, mAP and mINP under torchreid's protocol.

Protocol (torchreid's ``eval_market1501``): for each query, gallery items with the
query's identity *and* camera are removed; a query whose identity then has no gallery
item is skipped. Ranking is by ascending distance, ties broken by gallery order (a
stable sort), so results are reproducible; torchreid's own tie order is arbitrary.

* CMC@k: the fraction of valid queries whose first correct match is within the top k.
  It is defined for every k, also beyond the gallery size (where torchreid's Python
  evaluator crashes, F3/F4), so the curve always has ``max_rank`` entries.
* mAP: the mean over valid queries of average precision over all correct matches.
* mINP (Ye et al., TPAMI 2021): the mean of ``#correct / rank of the last correct match``.

With ``use_metric_cuhk03`` the CMC follows torchreid's single-gallery-shot protocol: one
gallery image is drawn per identity, 10 times, and the curves averaged. The draws come
from seeded generators (one per query), so the result is reproducible; it equals torchreid exactly when
each gallery identity keeps one image per query. mAP and mINP use the whole gallery,
as torchreid does.

Work is done in blocks of queries, so memory stays bounded for any gallery size.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

__all__ = ['PerQuery', 'RankResult', 'evaluate_rank', 'evaluate_torchreid']


@dataclass
class PerQuery:
    """Each valid query's outcome, in query order: enough to recompute Rank-k and mAP, and
    to pair two models query by query (:mod:`jlml_plugin.tools.stats`)."""
    index: np.ndarray       # position in the query list
    pid: np.ndarray         # identity
    first_rank: np.ndarray  # 1-based rank of the first correct match (all-gallery CMC)
    ap: np.ndarray          # average precision

    def as_dict(self) -> Dict[str, list]:
        return dict(index=self.index.tolist(), pid=self.pid.tolist(),
                    first_rank=self.first_rank.tolist(),
                    ap=[round(float(v), 6) for v in self.ap])


@dataclass
class RankResult:
    """What one evaluation measures; ``cmc[k-1]`` is Rank-k."""
    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    extra: Dict[str, float] = field(default_factory=dict)
    per_query: Optional[PerQuery] = None
    #: Other readings of the same test features (e.g. ``l2norm``), each scored as this one.
    views: Dict[str, 'RankResult'] = field(default_factory=dict)

    def rank(self, k: int) -> float:
        return float(self.cmc[k - 1])

    def as_dict(self, ranks=(1, 5, 10, 20)) -> Dict[str, float]:
        out = {f'rank{k}': self.rank(k) for k in ranks if k <= len(self.cmc)}
        out.update(mAP=self.mAP, mINP=self.mINP, **self.extra)
        for name, view in self.views.items():
            out.update({f'{name}_rank1': view.rank(1), f'{name}_mAP': view.mAP})
        return out

    def as_record(self, ranks=(1, 5, 10, 20)) -> Dict[str, Any]:
        """:meth:`as_dict` with the CMC curve to rank 50, as results files keep it."""
        return dict(self.as_dict(ranks), cmc=[float(v) for v in self.cmc[:50]])

    def per_query_record(self) -> Dict[str, Any]:
        """The per-query outcomes (:meth:`PerQuery.as_dict`) and, under ``views``, each
        view's ``first_rank`` and ``ap`` for the same queries, so a comparison can be made
        in any view from the records alone."""
        out: Dict[str, Any] = self.per_query.as_dict()
        if self.views:
            out['views'] = {}
            for name, view in self.views.items():
                outcomes = view.per_query.as_dict()
                out['views'][name] = {key: outcomes[key] for key in ('first_rank', 'ap')}
        return out


def _as_1d(name: str, values, n: int) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.shape[0] != n:
        raise ValueError(f'{name} has {array.shape[0]} entries but the distance matrix '
                         f'needs {n}')
    return array


def _stabilise(order: np.ndarray, ranked: np.ndarray) -> None:
    """Puts runs of equal distances in gallery order, in place.

    numpy's SIMD quicksort is several times faster than its stable sort, and ties are
    short runs: re-sorting only the tied entries makes the result that of a stable sort.
    """
    equal = ranked[:, 1:] == ranked[:, :-1]
    if not equal.any():
        return
    in_run = np.zeros(ranked.shape, dtype=bool)
    in_run[:, 1:] = equal
    in_run[:, :-1] |= equal
    rows, cols = np.nonzero(in_run)
    starts_run = np.ones(len(rows), dtype=bool)
    inside = cols > 0
    starts_run[inside] = ~equal[rows[inside], cols[inside] - 1]
    run_id = np.cumsum(starts_run)
    values = order[rows, cols]
    order[rows, cols] = values[np.lexsort((values, run_id))]


def _block_ranks(dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray,
                 g_pids: np.ndarray, g_camids: np.ndarray):
    """Sorts one block of queries and finds each correct match's 1-based rank among the
    gallery items kept for its query. Returns (order, junk mask in rank order, rows and
    ranks of the correct matches, row-major)."""
    order = np.argsort(dist, axis=1)
    _stabilise(order, np.sort(dist, axis=1))
    same_pid = g_pids[order] == q_pids[:, None]
    same_cam = g_camids[order] == q_camids[:, None]
    junk = same_pid & same_cam
    hit_rows, hit_cols = np.nonzero(same_pid & ~same_cam)
    num_g = dist.shape[1]
    junk_keys = np.flatnonzero(junk)  # row * num_g + col, increasing
    hit_keys = hit_rows * num_g + hit_cols
    junk_before = (np.searchsorted(junk_keys, hit_keys)
                   - np.searchsorted(junk_keys, hit_rows * num_g))
    return order, junk, hit_rows, hit_cols + 1 - junk_before


def _cuhk03_first_ranks(order: np.ndarray, junk: np.ndarray, g_pids: np.ndarray,
                        q_pids: np.ndarray, valid: np.ndarray, max_rank: int,
                        query_index: np.ndarray, seed: int, repeats: int) -> np.ndarray:
    """Summed CMC over ``repeats`` draws of one kept gallery image per identity.

    Each query draws from its own generator, seeded by ``(seed, query index)``, so the
    result does not depend on how queries are split into blocks or threads.
    """
    rows = np.flatnonzero(valid)
    generators = [np.random.default_rng([seed, int(q)]) for q in query_index[rows]]
    sorted_pids = g_pids[order[rows]]
    kept = ~junk[rows]
    is_pos = sorted_pids == q_pids[rows, None]
    # Identity index of each ranked item, so a per-identity maximum is one scatter.
    ids, inverse = np.unique(sorted_pids, return_inverse=True)
    inverse = inverse.reshape(sorted_pids.shape)
    row_index = np.arange(len(rows))[:, None]
    cmc = np.zeros(max_rank)
    for _ in range(repeats):
        draws = np.stack([g.random(sorted_pids.shape[1]) for g in generators])
        keys = np.where(kept, draws, -1.0)
        best = np.full((len(rows), len(ids)), -1.0)
        np.maximum.at(best, (np.broadcast_to(row_index, inverse.shape), inverse), keys)
        chosen = kept & (keys == best[row_index, inverse])
        first_pos = np.argmax(chosen & is_pos, axis=1)
        rank0 = (np.cumsum(chosen, axis=1)[np.arange(len(rows)), first_pos] - 1)
        cmc += np.bincount(np.minimum(rank0, max_rank), minlength=max_rank + 1)[:max_rank]
    return cmc / repeats


def _block_stats(dist, q_pids, q_camids, g_pids, g_camids, max_rank, use_metric_cuhk03,
                 query_index, seed, cuhk03_repeats) -> Tuple[np.ndarray, float, PerQuery]:
    """First-match histogram, INP sum and the valid queries' outcomes of one query block."""
    first_hist = np.zeros(max_rank + 1)
    order, junk, rows, ranks = _block_ranks(dist, q_pids, q_camids, g_pids, g_camids)
    n_rows = order.shape[0]
    num_rel = np.bincount(rows, minlength=n_rows)
    valid = num_rel > 0
    row_start = np.concatenate(([0], np.cumsum(num_rel)))[:-1]
    hit_index = np.arange(len(rows)) - row_start[rows] + 1  # 1-based among a row's hits
    ap = (np.bincount(rows, weights=hit_index / ranks, minlength=n_rows)[valid]
          / num_rel[valid])
    first_rank = ranks[row_start[valid]]
    outcome = PerQuery(query_index[valid], q_pids[valid], first_rank, ap)
    if not valid.any():
        return first_hist, 0.0, outcome
    inp_sum = (num_rel[valid] / ranks[row_start[valid] + num_rel[valid] - 1]).sum()
    if use_metric_cuhk03:
        first_hist[:max_rank] = _cuhk03_first_ranks(order, junk, g_pids, q_pids, valid,
                                                    max_rank, query_index, seed, cuhk03_repeats)
    else:
        first_hist += np.bincount(np.minimum(first_rank - 1, max_rank), minlength=max_rank + 1)
    return first_hist, float(inp_sum), outcome


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  use_metric_cuhk03: bool = False, *, block_size: int = 256,
                  num_threads: Optional[int] = None, seed: int = 0,
                  cuhk03_repeats: int = 10) -> RankResult:
    """CMC, mAP and mINP of a query x gallery distance matrix (smaller is closer).

    Query blocks run on ``num_threads`` threads (default: torch's intra-op thread
    count); the result depends on neither the block size nor the thread count.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f'distmat must be 2-D (num_query x num_gallery), got {distmat.shape}')
    if not np.issubdtype(distmat.dtype, np.floating):
        distmat = distmat.astype(np.float64)
    num_q, num_g = distmat.shape
    q_pids, q_camids = (_as_1d(n, v, num_q) for n, v in (('q_pids', q_pids), ('q_camids', q_camids)))
    g_pids, g_camids = (_as_1d(n, v, num_g) for n, v in (('g_pids', g_pids), ('g_camids', g_camids)))

    def run_block(index: int):
        start, stop = index * block_size, min((index + 1) * block_size, num_q)
        return _block_stats(distmat[start:stop], q_pids[start:stop], q_camids[start:stop],
                            g_pids, g_camids, max_rank, use_metric_cuhk03,
                            np.arange(start, stop), seed, cuhk03_repeats)

    num_blocks = -(-num_q // block_size)
    threads = min(num_blocks, num_threads or torch.get_num_threads())
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:  # numpy's sorts and scans release the GIL
            stats = list(pool.map(run_block, range(num_blocks)))
    else:
        stats = [run_block(i) for i in range(num_blocks)]
    first_hist = sum(s[0] for s in stats)
    per_query = PerQuery(*(np.concatenate([getattr(s[2], f) for s in stats])
                           for f in ('index', 'pid', 'first_rank', 'ap')))
    num_valid = len(per_query.index)
    if num_valid == 0:
        raise ValueError('no query identity appears in the gallery under another camera; '
                         'every query needs a gallery image of its identity from a different '
                         'camid')
    cmc = np.cumsum(first_hist[:max_rank]) / num_valid
    return RankResult(cmc=cmc.astype(np.float32), mAP=float(per_query.ap.mean()),
                      mINP=sum(s[1] for s in stats) / num_valid, num_valid_queries=num_valid,
                      per_query=per_query)


def evaluate_torchreid(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                       use_metric_cuhk03) -> Tuple[np.ndarray, float]:
    """:func:`evaluate_rank` with the signature and ``(cmc, mAP)`` result of torchreid's
    ``evaluate_py``, which ``import jlml_plugin`` replaces with it."""
    result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                           use_metric_cuhk03)
    return result.cmc, np.float32(result.mAP)
