"""One registry for the plugin's models: ``@register_variant(...)`` on a builder puts it in
:data:`MODELS`, in torchreid's model factory and, with its metadata, in
:data:`default_cfgs` (timm's convention), which tools and tests read instead of keeping
lists of their own. :func:`build` is the one place any model is built from its name."""
from __future__ import annotations

from typing import Callable, Dict

import torch

from .. import _torchreid
from ..errors import ConfigError

__all__ = ['MODELS', 'default_cfgs', 'register_variant', 'build', 'check_model', 'check_height']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Every registered builder, by torchreid model name.
MODELS: Dict[str, Callable] = {}
#: Each builder's metadata: input size, normalisation, test feature size, number of
#: identity classifiers (one loss each), the stem's stride (each stripe's height in
#: pixels must be a multiple of it), whether the config's ``jlml`` tower keys
#: (``ARCH_KEYS``) shape it, pretrained weights and where they come from.
default_cfgs: Dict[str, dict] = {}


def register_variant(**metadata) -> Callable[[Callable], Callable]:
    """Registers the decorated builder under its function name; ``metadata`` overrides
    the defaults (160x64 input, ImageNet mean/std, 1024-D feature, 2 classifiers, stem
    stride 4, towers from the config, no pretrained weights). The builder must take torchreid's signature
    ``(num_classes, loss='softmax', pretrained=..., use_gpu=..., **kwargs)``."""
    cfg = dict(input_size=(3, 160, 64), mean=IMAGENET_MEAN, std=IMAGENET_STD,
               feature_dim=1024, classifiers=2, stem_stride=4, arch_from_config=True,
               pretrained_url='')
    cfg.update(metadata)

    def register(builder: Callable) -> Callable:
        name = builder.__name__
        MODELS[name] = builder
        default_cfgs[name] = cfg
        _torchreid.register_model(name, builder)
        return builder
    return register


def check_model(name: str) -> None:
    """A model torchreid's factory holds (every plugin variant is registered there)."""
    factory = _torchreid.model_factory()
    if name not in factory:
        raise ConfigError(f'unknown model {name!r}; choose from: {", ".join(sorted(factory))}')


def check_height(name: str, height: int, num_stripes: int) -> None:
    """A JLML variant cuts its stem's output into ``num_stripes`` equal stripes, so the
    input height must be a multiple of stem stride x stripes; other models take any."""
    if name in MODELS:
        multiple = default_cfgs[name]['stem_stride'] * num_stripes
        if height % multiple:
            raise ConfigError(f'data.height {height} cannot be split into jlml.num_stripes '
                              f'{num_stripes} stripes: use a multiple of {multiple}')


def build(name: str, num_classes: int, loss: str = 'softmax', pretrained: bool = False,
          use_gpu: bool = False, **kwargs) -> torch.nn.Module:
    """Any model torchreid knows, by name: a plugin builder with its keyword arguments (its
    ``jlml`` keys), any other through torchreid's ``build_model``, which takes none."""
    check_model(name)
    if name in MODELS:
        return MODELS[name](num_classes, loss=loss, pretrained=pretrained, use_gpu=use_gpu,
                            **kwargs)
    if kwargs:
        raise ConfigError(f'{name} is a torchreid model and takes none of {sorted(kwargs)}')
    return _torchreid.models.build_model(name, num_classes, loss=loss, pretrained=pretrained,
                                         use_gpu=use_gpu)
