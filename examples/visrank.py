"""Draw ranked results (query, then its top-k gallery matches) with torchreid's visrank.

    python examples/visrank.py --checkpoint log/jlml_synthreid/model/model.pth.tar-10 \
        --root ~/.cache/jlml_plugin --dataset synthreid --save-dir log/visrank

Green borders are correct matches, red ones wrong. One picture per query is written to
<save-dir>/visrank_<dataset>/.
"""
import argparse

from jlml_plugin import torchreid
from jlml_plugin.engine import JLMLEngine
from jlml_plugin.features import load_feature_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--root', required=True)
    parser.add_argument('--dataset', default='synthreid')
    parser.add_argument('--save-dir', default='log/visrank')
    parser.add_argument('--topk', type=int, default=5)
    args = parser.parse_args()

    model, meta = load_feature_model(args.checkpoint)  # the model its metadata describes
    _, height, width = meta['input_size']
    datamanager = torchreid.data.ImageDataManager(
        root=args.root, sources=args.dataset, height=height, width=width,
        norm_mean=meta['mean'], norm_std=meta['std'], workers=0, use_gpu=False)
    optimizer = torchreid.optim.build_optimizer(model)
    engine = JLMLEngine(datamanager, model, optimizer, use_gpu=False)
    engine.run(test_only=True, visrank=True, visrank_topk=args.topk, save_dir=args.save_dir)


if __name__ == '__main__':
    main()
