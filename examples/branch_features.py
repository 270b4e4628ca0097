"""Score a JLML checkpoint's test-feature choices: each branch alone, joined, normalised,
after or before the feature layer's ReLU.

    python examples/branch_features.py --checkpoint log/jlml_cuhk01/model/model.pth.tar-30 \
        --root reid-data --dataset cuhk01_val --output results/val/jlml.json

JLML's test feature is [global 512 | local 512]. For the feature after its ReLU (the
default) and before it (``jlml.pre_relu_feature``), this evaluates each half alone, the
joined feature, the joined feature L2-normalised, and each half normalised before joining
(``jlml.normalize_branches``), all with the Euclidean distance. None of these changes
training, so one checkpoint scores them all. Use a validation set (``cuhk01_val``) when
the answer will steer a design choice; ``--output`` keeps the scores as a JSON record,
with each view's per-query outcomes (identity, rank of the first true match, AP), so two
views or two runs can be paired (results/sparsity/branch_pairs.py).
"""
import argparse
import json

import torch

import jlml_plugin
from jlml_plugin import torchreid
from jlml_plugin.evaluation import l2norm
from jlml_plugin.features import load_feature_model

def views(model):
    """The readings scored, by the names this script's records use: the model's own test
    views (the evaluator scores them beside every run) plus the joined feature, raw and
    L2-normalised."""
    model.normalize_branches = False  # the views normalise where they say so
    own = model.test_views()
    return {'global': own['global'], 'local': own['local'], 'joined': lambda f: f,
            'joined, L2-normalised': l2norm, 'each half normalised, joined': own['halves_l2norm']}


def extract(model, loader):
    features, pids, camids = [], [], []
    with torch.no_grad():
        for batch in loader:
            features.append(model(batch['img']))
            pids.append(batch['pid'])
            camids.append(batch['camid'])
    return torch.cat(features), torch.cat(pids).numpy(), torch.cat(camids).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--root', required=True)
    parser.add_argument('--dataset', default='synthreid')
    parser.add_argument('--split-id', type=int, default=0)
    parser.add_argument('--output', default='', help='JSON file for the scores')
    args = parser.parse_args()

    model, meta = load_feature_model(args.checkpoint)
    _, height, width = meta['input_size']
    datamanager = torchreid.data.ImageDataManager(
        root=args.root, sources=args.dataset, height=height, width=width, split_id=args.split_id,
        norm_mean=meta['mean'], norm_std=meta['std'], workers=0, use_gpu=False,
        batch_size_test=100)
    loaders = datamanager.test_loader[args.dataset]
    readings = views(model)
    scores, queries = {}, {}
    for where, pre_relu in (('after ReLU', False), ('before ReLU', True)):
        model.pre_relu_feature = pre_relu
        qf, q_pids, q_camids = extract(model, loaders['query'])
        gf, g_pids, g_camids = extract(model, loaders['gallery'])
        if not scores:
            print(f'{args.dataset} split {args.split_id}: {len(qf)} queries x {len(gf)} gallery')
        for name, read in readings.items():
            distmat = torchreid.metrics.compute_distance_matrix(read(qf), read(gf), 'euclidean')
            result = jlml_plugin.evaluate_rank(distmat.numpy(), q_pids, g_pids, q_camids,
                                               g_camids)
            label = f'{name}, {where}'
            scores[label] = result.as_dict((1, 5, 10))
            queries[label] = result.per_query.as_dict()  # to pair views or runs by query
            print(f'{label:<42} R1 {result.cmc[0]:.1%}  mAP {result.mAP:.1%}')
    if args.output:
        with open(args.output, 'w') as f:
            json.dump(dict(checkpoint=args.checkpoint, dataset=args.dataset,
                           split_id=args.split_id, scores=scores, queries=queries), f)


if __name__ == '__main__':
    main()
