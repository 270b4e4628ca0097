"""Rebuilding a trained model from its checkpoint, for features.

Every path that turns a checkpoint back into a model comes through
:func:`load_feature_model`: the model is rebuilt from the checkpoint's metadata (name,
keyword arguments such as ``feat_dim``, input size, normalisation), every weight but the
classifiers must load (a partial load is an error that names what is missing), and an
input size other than the trained one is a warning. :class:`CheckpointFeatureExtractor`
is torchreid's ``FeatureExtractor`` on such a model: torchreid's own one rebuilds the
model from its name alone, so a non-default JLML (``jlml.feat_dim 128``) would load
only in part, and its default 256x128 input runs a 160x64-trained JLML without a word.
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import torch
from torchvision import transforms as T

from . import _torchreid
from .checkpoint import model_state
from .errors import CheckpointError, ConfigError
from .models import build

__all__ = ['load_feature_model', 'CheckpointFeatureExtractor']

_HEAD_PREFIXES = ('classifier',)


def load_feature_model(path: str, model_name: str = '',
                       input_size: Optional[Tuple[int, int]] = None
                       ) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The eval-mode model of a checkpoint, without its classifiers, and its metadata."""
    checkpoint = _torchreid.load_checkpoint(path)
    meta = dict(checkpoint.get('meta') or {})
    name = model_name or meta.get('model_name', '')
    if not name:
        raise ConfigError(f'{path} does not say which model it holds; pass --model NAME')
    kwargs = meta.get('model_kwargs', {}) if name == meta.get('model_name') else {}
    model = build(name, 1, **kwargs)
    state = model_state(checkpoint)
    target = model.state_dict()
    mismatched = [k for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)
                  and (k not in target or target[k].shape != v.shape)]
    missing = [k for k in target if not k.startswith(_HEAD_PREFIXES) and k not in state]
    if mismatched or missing:
        raise CheckpointError(f'{path} does not fit {name} as its metadata builds it: '
                              f'{len(missing)} missing, {len(mismatched)} mismatched '
                              f'({", ".join((missing + mismatched)[:4])}); pass the --model '
                              f'it was trained as')
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)},
                          strict=False)
    model.eval()
    trained = tuple(meta.get('input_size', [3, 0, 0])[1:])
    height, width = input_size or trained
    if not height or not width:
        raise ConfigError(f'{path} does not record its input size; pass --height and --width')
    if all(trained) and (height, width) != trained:
        # Any height that splits into the stripes runs, so nothing else would say so.
        warnings.warn(f'{path} was trained on {trained[0]}x{trained[1]} images; '
                      f'extracting at {height}x{width} gives other features', stacklevel=2)
    with torch.no_grad():
        feature_dim = model(torch.zeros(1, 3, height, width)).shape[1]
    meta.update(model_name=name, input_size=[3, height, width], feature_dim=int(feature_dim),
                mean=meta.get('mean', [0.485, 0.456, 0.406]),
                std=meta.get('std', [0.229, 0.224, 0.225]),
                input_format='float32 NCHW RGB in [0, 1], normalised as (x - mean) / std',
                distance='euclidean')
    meta.pop('model_kwargs', None)
    return model, meta


class CheckpointFeatureExtractor(_torchreid.utils.FeatureExtractor):
    """torchreid's ``FeatureExtractor`` (paths, arrays or tensors in, features out) on
    :func:`load_feature_model`'s model, with the checkpoint's input size and
    normalisation unless given."""

    def __init__(self, checkpoint: str, image_size: Optional[Tuple[int, int]] = None,
                 device: str = 'cpu') -> None:
        # torchreid's __init__ would build and partly load a default model; set what its
        # __call__ reads instead.
        self.model, self.meta = load_feature_model(checkpoint, input_size=image_size)
        self.preprocess = T.Compose([T.Resize(tuple(self.meta['input_size'][1:])), T.ToTensor(),
                                     T.Normalize(mean=self.meta['mean'], std=self.meta['std'])])
        self.to_pil = T.ToPILImage()
        self.device = torch.device(device)
        self.model.to(self.device)
