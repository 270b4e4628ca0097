"""Score a JLML checkpoint's global, local and joined features, raw and L2-normalised.

    python examples/branch_features.py --checkpoint log/jlml_cuhk01/model/model.pth.tar-30 \
        --root reid-data --dataset cuhk01_val

JLML's test feature is [global 512 | local 512]; this evaluates each half alone, the
joined feature (what torchreid's evaluation uses), the joined feature L2-normalised, and
each half normalised before joining, all with the Euclidean distance. Use a validation
set (``cuhk01_val``) when the answer will steer a design choice.
"""
import argparse

import torch
import torch.nn.functional as F

import jlml_plugin
from jlml_plugin import torchreid
from jlml_plugin.export import load_feature_model


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
    args = parser.parse_args()

    model, meta = load_feature_model(args.checkpoint)
    _, height, width = meta['input_size']
    datamanager = torchreid.data.ImageDataManager(
        root=args.root, sources=args.dataset, height=height, width=width, split_id=args.split_id,
        norm_mean=meta['mean'], norm_std=meta['std'], workers=0, use_gpu=False,
        batch_size_test=100)
    loaders = datamanager.test_loader[args.dataset]
    qf, q_pids, q_camids = extract(model, loaders['query'])
    gf, g_pids, g_camids = extract(model, loaders['gallery'])

    half = qf.shape[1] // 2
    views = {
        'global': lambda f: f[:, :half],
        'local': lambda f: f[:, half:],
        'joined (the test feature)': lambda f: f,
        'joined, L2-normalised': lambda f: F.normalize(f),
        'each half normalised, joined': lambda f: torch.cat([F.normalize(f[:, :half]),
                                                             F.normalize(f[:, half:])], 1),
    }
    print(f'{args.dataset} split {args.split_id}: {len(qf)} queries x {len(gf)} gallery')
    for name, view in views.items():
        distmat = torchreid.metrics.compute_distance_matrix(view(qf), view(gf), 'euclidean')
        result = jlml_plugin.evaluate_rank(distmat.numpy(), q_pids, g_pids, q_camids, g_camids)
        print(f'{name:<30} R1 {result.cmc[0]:.1%}  mAP {result.mAP:.1%}')


if __name__ == '__main__':
    main()
