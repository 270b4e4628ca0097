"""One target's evaluation: features of query and gallery, distances, the exact evaluator.

:class:`~jlml_plugin.engine.JLMLEngine` calls :func:`evaluate_target` for each target;
the features come from the engine's ``extract_features`` (fp32, whatever the training
precision). Distances are torchreid's, re-ranking is torchreid's, and the ranking metrics
are :func:`jlml_plugin.metrics.evaluate_rank` (exact ties, with mINP).
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from . import _torchreid as _tr
from .metrics import RankResult, evaluate_rank
from .progress import progress

__all__ = ['extract_all', 'evaluate_target', 'print_result', 'draw_ranked_lists',
           'SINGLE_SHOT_RANKS', 'FeatureView', 'l2norm']

#: The ranks reported for the single-gallery-shot CMC.
SINGLE_SHOT_RANKS = (1, 5, 10, 20)
#: A reading of the test features: (N, D) features in, (N, D') features out.
FeatureView = Callable[[torch.Tensor], torch.Tensor]


def l2norm(features: torch.Tensor) -> torch.Tensor:
    """The ``l2norm`` view: each whole feature vector L2-normalised."""
    return F.normalize(features, p=2, dim=1)


@torch.no_grad()
def extract_all(loader, extract: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                what: str) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features, identities and cameras of every image in ``loader``, with progress."""
    feats, pids, camids = [], [], []
    bar = progress(len(loader), f'extracting {what} features', every=max(len(loader) // 4, 1),
                   unit='batch')
    for data in loader:
        feats.append(extract(data['img'].to(device, non_blocking=True)).cpu())
        pids.append(data['pid'])
        camids.append(data['camid'])
        bar.update()
    bar.close()
    return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()


def evaluate_target(name: str, loaders, extract: Callable[[torch.Tensor], torch.Tensor],
                    device: torch.device, dist_metric: str = 'euclidean',
                    normalize_feature: bool = False, rerank: bool = False,
                    ranks: Sequence[int] = (1, 5, 10, 20), use_metric_cuhk03: bool = False,
                    single_shot: bool = False, views: Optional[Mapping[str, FeatureView]] = None
                    ) -> Tuple[RankResult, np.ndarray]:
    """Evaluates target ``name`` (``loaders``: its ``query`` and ``gallery`` loaders) and
    prints the result; returns it with the distance matrix. ``single_shot`` adds
    torchreid's cuhk03 metric (one gallery image per identity, 10 draws) to
    ``result.extra``.

    ``result.views`` scores other readings of the same features, each as the main one is
    (re-ranking included), with its per-query outcomes: ``views`` (name: a function of
    the feature matrix, e.g. a model's :meth:`test_views`), and, unless the features are
    already L2-normalised, ``l2norm``: the whole vectors L2-normalised, which weighs every
    dimension's scale out of the distance (how a feature layer's scale, which sparsity
    terms change, moves the score)."""
    print(f'##### Evaluating {name} #####')
    qf, q_pids, q_camids = extract_all(loaders['query'], extract, device, 'query')
    gf, g_pids, g_camids = extract_all(loaders['gallery'], extract, device, 'gallery')

    def distances(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
        distmat = _tr.metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
        if not rerank:
            return distmat
        return _tr.utils.re_ranking(
            distmat, _tr.metrics.compute_distance_matrix(qf, qf, dist_metric).numpy(),
            _tr.metrics.compute_distance_matrix(gf, gf, dist_metric).numpy())

    def score(distmat: np.ndarray, max_rank: int) -> RankResult:
        return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                             use_metric_cuhk03=use_metric_cuhk03)

    if normalize_feature:
        qf, gf = l2norm(qf), l2norm(gf)
    if rerank:
        print('Applying person re-ranking ...')
    distmat = distances(qf, gf)
    result = score(distmat, max(50, *ranks))
    readings = {} if normalize_feature else {'l2norm': l2norm}
    readings.update(views or {})
    result.views = {view: score(distances(read(qf), read(gf)), 1)
                    for view, read in readings.items()}
    if single_shot and not use_metric_cuhk03:
        single = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                               use_metric_cuhk03=True)
        result.extra.update({f'single_shot_rank{r}': single.rank(r) for r in SINGLE_SHOT_RANKS})
    print_result(name, result, ranks,
                 f'{qf.size(0)} query x {gf.size(0)} gallery, {qf.size(1)}-D features')
    return result, distmat


def print_result(name: str, result: RankResult, ranks: Sequence[int], shape: str) -> None:
    """torchreid's result block (mAP, CMC), plus mINP and the single-shot CMC if any."""
    print(f'** Results ({name}: {shape}) **')
    print(f'mAP: {result.mAP:.1%}  mINP: {result.mINP:.1%}')
    print('CMC curve')
    for r in ranks:
        print(f'Rank-{r:<3}: {result.rank(r):.1%}')
    for view, scored in result.views.items():
        print(f'View {view}: Rank-1 {scored.rank(1):.1%}  mAP {scored.mAP:.1%}')
    if 'single_shot_rank1' in result.extra:
        print('Single-shot (one gallery image per identity, 10 draws): ' + ', '.join(
            f'Rank-{r} {result.extra[f"single_shot_rank{r}"]:.1%}' for r in SINGLE_SHOT_RANKS))


def draw_ranked_lists(distmat: np.ndarray, datamanager, name: str, save_dir: str,
                      topk: int) -> None:
    """torchreid's ranked-list images (``test.visrank``) in ``save_dir/visrank_<name>``."""
    _tr.utils.visualize_ranked_results(
        distmat, datamanager.fetch_test_loaders(name), datamanager.data_type,
        width=datamanager.width, height=datamanager.height,
        save_dir=os.path.join(save_dir, 'visrank_' + name), topk=topk)
