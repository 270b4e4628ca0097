"""The sparsity hook is not JLML-specific: a group LASSO on osnet's feature layer.

    python examples/sparsity_on_osnet.py --root ~/.cache/jlml_plugin --dataset synthreid --epochs 5

It trains torchreid's osnet_x0_25 with JLMLEngine, adding lambda * ||W||_2,1 on the
weight of osnet's `fc` layer (parameter `fc.0.weight`), and reports how many input
features of that layer were switched off (column norm below 1e-3 of the largest).
"""
import argparse

import torch

from jlml_plugin import SparsityRegularizer, SparsityTerm, group_lasso, torchreid
from jlml_plugin.engine import JLMLEngine
from jlml_plugin.hooks import default_hooks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', required=True)
    parser.add_argument('--dataset', default='synthreid')
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--weight', type=float, default=5e-3, help='lambda')
    parser.add_argument('--save-dir', default='log/osnet_sparsity')
    args = parser.parse_args()

    datamanager = torchreid.data.ImageDataManager(
        root=args.root, sources=args.dataset, height=args.height, width=args.width,
        batch_size_train=16, workers=0, use_gpu=False)
    model = torchreid.models.build_model('osnet_x0_25', datamanager.num_train_pids,
                                         pretrained=False, use_gpu=False)
    hook = SparsityRegularizer(model, [SparsityTerm('reg_fc', 'fc.0.weight', 'group_lasso',
                                             args.weight)])
    weight = model.fc[0].weight
    before = group_lasso(weight).item()
    optimizer = torchreid.optim.build_optimizer(model, optim='adam', lr=1e-3)
    engine = JLMLEngine(datamanager, model, optimizer, use_gpu=False, regularizer=hook,
                        hooks=default_hooks(checkpoint_period=0))
    engine.run(save_dir=args.save_dir, max_epoch=args.epochs, ranks=[1])
    with torch.no_grad():
        norms = weight.norm(dim=0)
        off = int((norms < 1e-3 * norms.max()).sum())
    print(f'||fc.0.weight||_2,1: {before:.2f} -> {group_lasso(weight).item():.2f}; '
          f'{off} of {weight.shape[1]} input features switched off')


if __name__ == '__main__':
    main()
