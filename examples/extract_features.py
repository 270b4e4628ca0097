"""Extract JLML features for a folder of images with torchreid's FeatureExtractor.

    python examples/extract_features.py --checkpoint log/jlml_synthreid/model/model.pth.tar-10 \
        --images ~/.cache/jlml_plugin/synthreid/synthreid-seed0/query --output features.npy

Any checkpoint jlml-train writes works, whatever number of identities it was trained on
(the classifiers are skipped). The model (with its trained ``feat_dim``, stripes and
widths), the image size and the normalisation come from the checkpoint:
``jlml_plugin.CheckpointFeatureExtractor`` is torchreid's FeatureExtractor on the model
the checkpoint describes (torchreid's own one would rebuild a default JLML by name).
"""
import argparse
import os

import numpy as np

import jlml_plugin


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--images', required=True, help='a folder of .jpg/.png images')
    parser.add_argument('--output', default='features.npy')
    parser.add_argument('--batch', type=int, default=64)
    args = parser.parse_args()

    extractor = jlml_plugin.CheckpointFeatureExtractor(args.checkpoint)
    paths = sorted(os.path.join(args.images, n) for n in os.listdir(args.images)
                   if n.lower().endswith(('.jpg', '.jpeg', '.png')))
    features = np.concatenate([extractor(paths[i:i + args.batch]).numpy()
                               for i in range(0, len(paths), args.batch)])
    np.save(args.output, features)
    print(f'{len(paths)} images -> {features.shape[1]}-D features in {args.output}')


if __name__ == '__main__':
    main()
