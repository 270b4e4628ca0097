"""JLML: Joint Learning of Multi-Loss classification, a JLML-style re-implementation.

Paper: W. Li, X. Zhu, S. Gong. "Person Re-Identification by Deep Joint Learning of
Multi-Loss Classification". IJCAI 2017. https://arxiv.org/abs/1705.04724

A shared low-level layer feeds two branches:

* the global branch, a residual tower over the whole feature map;
* the local branch, ``num_stripes`` streams of the same structure with independent
  weights, one per horizontal stripe of the shared feature map.

Each branch ends in its own ``feat_dim`` feature (BN + FC + ReLU) and its own identity
classifier; at test time the two features are joined and matched with the L2 distance.

The paper's layer table could not be obtained, so "JLML-ResNet39" here is our design in
its spirit (docs/fidelity.md): 1 shared conv + 12 bottleneck blocks (36 convs) + feature
FC + classifier = 39 weight layers on each path.

Speed: the stripe streams run as one tower of grouped convolutions over the stripes
stacked on the channel axis (stream ``s`` owns channel block ``s``), never as a Python
loop; :mod:`jlml_plugin.models.reference` holds the per-stripe loop it must equal.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Dict, Sequence, Tuple

import torch
from torch import nn

from .registry import default_cfgs, register_variant

__all__ = ['JLML', 'JLMLArch', 'jlml', 'jlml_global', 'jlml_local', 'jlml_single_loss',
           'jlml_independent', 'jlml_resnet50']


@dataclass(frozen=True)
class JLMLArch:
    """The residual towers: one stem, then bottleneck stages.

    Stages ``[:shared_stages]`` belong to the shared low-level part; each branch has its
    own copy of the remaining ones. ``global_widths``/``local_widths`` are the bottleneck
    mid-widths of those branch stages (each stage outputs ``expansion`` times its width);
    the local widths are per stripe stream.
    """
    stem_width: int = 64
    shared_widths: Tuple[int, ...] = ()
    shared_depths: Tuple[int, ...] = ()
    global_widths: Tuple[int, ...] = (32, 64, 128, 256)
    local_widths: Tuple[int, ...] = (16, 32, 64, 128)
    depths: Tuple[int, ...] = (2, 3, 4, 3)
    strides: Tuple[int, ...] = (1, 2, 2, 1)
    expansion: int = 4

    @property
    def shared_channels(self) -> int:
        return self.shared_widths[-1] * self.expansion if self.shared_widths else self.stem_width


RESNET39 = JLMLArch()
#: The JLMLArch fields a builder (and the config's ``jlml`` section) can set.
ARCH_KEYS = ('stem_width', 'shared_widths', 'shared_depths', 'global_widths', 'local_widths',
             'depths', 'strides')
RESNET50 = JLMLArch(stem_width=64, shared_widths=(64,), shared_depths=(3,),
                    global_widths=(128, 256, 512), local_widths=(128, 256, 512),
                    depths=(4, 6, 3), strides=(2, 2, 1))


# ------------------------------------------------------------------------------ blocks


class Bottleneck(nn.Module):
    """A ResNet bottleneck run over ``streams`` independent streams at once.

    The streams are stacked on the channel axis and every layer is grouped by stream,
    so stream ``s`` sees only its own channels and has its own weights and BN statistics.
    Channel counts are per stream.
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int = 1,
                 streams: int = 1) -> None:
        super().__init__()
        s = streams
        self.conv1 = nn.Conv2d(in_ch * s, width * s, 1, bias=False, groups=s)
        self.bn1 = nn.BatchNorm2d(width * s)
        self.conv2 = nn.Conv2d(width * s, width * s, 3, stride, 1, bias=False, groups=s)
        self.bn2 = nn.BatchNorm2d(width * s)
        self.conv3 = nn.Conv2d(width * s, out_ch * s, 1, bias=False, groups=s)
        self.bn3 = nn.BatchNorm2d(out_ch * s)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch * s, out_ch * s, 1, stride, bias=False, groups=s),
                nn.BatchNorm2d(out_ch * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _tower(in_ch: int, widths: Sequence[int], depths: Sequence[int], strides: Sequence[int],
           expansion: int, streams: int = 1) -> nn.Sequential:
    stages = []
    for width, depth, stride in zip(widths, depths, strides):
        blocks = []
        for i in range(depth):
            blocks.append(Bottleneck(in_ch, width, width * expansion,
                                     stride if i == 0 else 1, streams))
            in_ch = width * expansion
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


class Stem(nn.Module):
    """The shared low-level layer: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (+ shared stages)."""

    def __init__(self, arch: JLMLArch) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, arch.stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(arch.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stages = _tower(arch.stem_width, arch.shared_widths, arch.shared_depths,
                             (1,) * len(arch.shared_widths), arch.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class Embedding(nn.Module):
    """A branch's feature layer: BN without affine parameters, then FC (the feature
    before the ReLU, which :class:`JLML` applies).

    ``fc.weight`` is the matrix the structured-sparsity regularisers act on, so nothing
    may undo a rescaling of it (docs/regularizers.md): its inputs are batch-normalised
    to a fixed scale (no learnable gain that could grow while a column shrinks) and no
    normalisation stands after it. A column scaled by ``c`` scales what that pooled
    channel adds to the feature by ``c``; a zero column removes the channel.
    """

    def __init__(self, in_features: int, feat_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features, affine=False)
        self.fc = nn.Linear(in_features, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x))


class GlobalBranch(nn.Module):
    """Residual tower over the whole shared feature map, global pooling, feature layer
    (returns the feature before its ReLU)."""

    def __init__(self, arch: JLMLArch, feat_dim: int, own_stem: bool = False) -> None:
        super().__init__()
        self.stem = Stem(arch) if own_stem else None
        self.tower = _tower(arch.shared_channels, arch.global_widths, arch.depths,
                            arch.strides, arch.expansion)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = Embedding(arch.global_widths[-1] * arch.expansion, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.embed(self.pool(self.tower(x)).flatten(1))


class LocalBranch(nn.Module):
    """One stream per horizontal stripe, all batched as a grouped-convolution tower.

    The pooled stripe vectors are concatenated stripe by stripe (stripe ``s`` owns input
    columns ``[s*C, (s+1)*C)`` of ``embed.fc``) and mapped to one ``feat_dim`` feature.
    """

    def __init__(self, arch: JLMLArch, num_stripes: int, feat_dim: int,
                 own_stem: bool = False) -> None:
        super().__init__()
        self.num_stripes = num_stripes
        self.stem = Stem(arch) if own_stem else None
        self.tower = _tower(arch.shared_channels, arch.local_widths, arch.depths,
                            arch.strides, arch.expansion, streams=num_stripes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.stripe_dim = arch.local_widths[-1] * arch.expansion
        self.embed = Embedding(self.stripe_dim * num_stripes, feat_dim)

    def stack_stripes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, m*C, H/m, W): stripe ``s`` becomes channel block ``s``."""
        b, c, h, w = x.shape
        m = self.num_stripes
        if h % m:
            raise ValueError(
                f'JLML: a {h}-row feature map cannot be split into {m} equal stripes; the '
                f'input height must make the shared feature map divisible by {m} (for the '
                f'default stem, a multiple of {4 * m}, e.g. 160 or 256)')
        return x.reshape(b, c, m, h // m, w).transpose(1, 2).reshape(b, m * c, h // m, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.embed(self.pool(self.tower(self.stack_stripes(x))).flatten(1))


# ------------------------------------------------------------------------------- model


class JLML(nn.Module):
    """The JLML network and its ablation variants.

    Args:
        num_classes: number of training identities.
        loss: ``'softmax'`` or ``'triplet'`` (torchreid's convention).
        branches: ``('global', 'local')``, or one of them for the single-branch ablations.
        shared_stem: one shared low-level layer (True) or one per branch (False).
        joint_classifier: one classifier on the joined feature instead of one per branch.
        num_stripes: local-branch stripes ``m``.
        feat_dim: feature size of each branch.
        dropout: dropout between each feature and its classifier, in training.
        pre_relu_feature: the test (and triplet) feature is each branch's feature layer
            output before its ReLU (the classifiers still read it after the ReLU);
            chosen on cuhk01_val (BENCHMARKS.md).
        normalize_branches: L2-normalise each branch's test feature before joining them
            (as torchreid's HA-CNN does), so neither branch dominates the L2 distance.
        arch: the residual towers.

    Training returns ``(logits_global, logits_local)`` for ``'softmax'`` and
    ``((logits_global, logits_local), (feat_global, feat_local))`` for ``'triplet'``
    (a single tensor in place of each pair when there is one branch or one classifier);
    the triplet features are taken before dropout and normalisation.
    Evaluation returns the joined feature, ``(B, feat_dim * len(branches))``.
    """

    def __init__(self, num_classes: int, loss: str = 'softmax', *,
                 branches: Sequence[str] = ('global', 'local'), shared_stem: bool = True,
                 joint_classifier: bool = False, num_stripes: int = 4, feat_dim: int = 512,
                 dropout: float = 0.5, pre_relu_feature: bool = True,
                 normalize_branches: bool = False, feat_init_std: float = 0.0,
                 arch: JLMLArch = RESNET39) -> None:
        super().__init__()
        if loss not in ('softmax', 'triplet'):
            raise KeyError(f"Unsupported loss: {loss!r} (JLML supports 'softmax' and 'triplet')")
        branches = tuple(branches)
        if not branches or set(branches) - {'global', 'local'} or len(set(branches)) != len(branches):
            raise ValueError(f"JLML branches must be 'global' and/or 'local', got {branches}")
        if num_stripes < 1 or feat_dim < 1 or not 0 <= dropout < 1 or feat_init_std < 0:
            raise ValueError('JLML needs num_stripes >= 1, feat_dim >= 1, 0 <= dropout < 1 '
                             'and feat_init_std >= 0')
        self.loss = loss
        self.branch_names = branches
        self.num_stripes = num_stripes
        self.feature_dim = feat_dim * len(branches)
        self.joint_classifier = joint_classifier
        self.pre_relu_feature = pre_relu_feature
        self.normalize_branches = normalize_branches
        #: One identity loss per name; the engine weights and logs them by these names.
        self.loss_names: Tuple[str, ...] = ('joint',) if joint_classifier else branches
        own_stem = not shared_stem
        self.shared = None if own_stem else Stem(arch)
        self.global_branch = (GlobalBranch(arch, feat_dim, own_stem)
                              if 'global' in branches else None)
        self.local_branch = (LocalBranch(arch, num_stripes, feat_dim, own_stem)
                             if 'local' in branches else None)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Heads are top-level children so torchreid's staged_lr / fixbase_epoch can name them.
        if joint_classifier:
            self.head_names: Tuple[str, ...] = ('classifier',)
            self.classifier = nn.Linear(self.feature_dim, num_classes)
        else:
            self.head_names = tuple(f'classifier_{b[0]}' for b in branches)
            for head in self.head_names:
                setattr(self, head, nn.Linear(feat_dim, num_classes))
        _init_weights(self, feat_init_std)

    def sparsity_params(self) -> Dict[str, str]:
        """The feature-layer weights the paper's sparsity terms act on, by term name."""
        names = {}
        if self.global_branch is not None:
            names['reg_global'] = 'global_branch.embed.fc.weight'
        if self.local_branch is not None:
            names['reg_local'] = 'local_branch.embed.fc.weight'
        return names

    def _embeddings(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Each branch's feature layer output, before the ReLU, in ``branch_names`` order."""
        if self.shared is not None:
            x = self.shared(x)
        return tuple(getattr(self, f'{b}_branch')(x) for b in self.branch_names)

    def _features(self, embeddings: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
        """The per-branch features that are matched (and, for triplet, trained as such)."""
        return embeddings if self.pre_relu_feature else tuple(map(torch.relu, embeddings))

    def branch_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Each branch's test feature, in ``branch_names`` order (what eval joins)."""
        feats = self._features(self._embeddings(x))
        if self.normalize_branches:
            feats = tuple(nn.functional.normalize(f, dim=1) for f in feats)
        return feats

    def test_views(self) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Readings of the joined test feature that the evaluator scores beside it: each
        branch's half alone and, unless they already are, both halves L2-normalised before
        joining (``halves_l2norm``), which weighs the branches equally whatever scale
        training left their feature layers at (the sparsity terms set that scale)."""
        if len(self.branch_names) == 1:
            return {}
        width = self.feature_dim // 2
        views = {name: functools.partial(_half, start=i * width, width=width)
                 for i, name in enumerate(self.branch_names)}
        if not self.normalize_branches:
            views['halves_l2norm'] = functools.partial(halves_l2norm, width=width)
        return views

    def forward(self, x: torch.Tensor):
        if not self.training:
            feats = self.branch_features(x)
            return torch.cat(feats, 1) if len(feats) > 1 else feats[0]
        embeddings = self._embeddings(x)
        feats = self._features(embeddings)
        inputs = tuple(self.dropout(torch.relu(e)) for e in embeddings)
        if self.joint_classifier:
            inputs, feats = (torch.cat(inputs, 1),), (torch.cat(feats, 1),)
        logits = tuple(getattr(self, head)(f) for head, f in zip(self.head_names, inputs))
        if len(logits) == 1:
            logits, feats = logits[0], feats[0]
        return logits if self.loss == 'softmax' else (logits, feats)


def _half(features: torch.Tensor, start: int, width: int) -> torch.Tensor:
    return features[:, start:start + width]


def halves_l2norm(features: torch.Tensor, width: int) -> torch.Tensor:
    """A joined [global | local] feature with each half L2-normalised: what
    ``normalize_branches`` matches, computed from the joined feature."""
    return torch.cat([nn.functional.normalize(features[:, :width], dim=1),
                      nn.functional.normalize(features[:, width:], dim=1)], 1)


def he_fan_out_std(conv: nn.Conv2d) -> float:
    """He (fan-out) std of one stream of a possibly grouped conv: ``sqrt(2 / fan_out)``
    with fan_out = the output channels of *one* group times the kernel area. torch's
    ``kaiming_normal_`` counts every group's outputs, which would start each of the
    ``m`` stripe streams at ``1/sqrt(m)`` of the std an ungrouped stream gets."""
    kh, kw = conv.kernel_size
    return math.sqrt(2.0 / (conv.out_channels // conv.groups * kh * kw))


def _init_weights(model: nn.Module, feat_init_std: float = 0.0) -> None:
    """He (fan-out) init for convs, per stream in grouped ones, and for feature layers
    (or N(0, ``feat_init_std``) where it is above 0: a control for the sparsity terms);
    zero-init the last BN of each residual block so every block starts as the identity
    (helps training from scratch); N(0, 0.01) classifiers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0, he_fan_out_std(module))
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.bn3.weight)
        elif isinstance(module, Embedding) and feat_init_std > 0:
            nn.init.normal_(module.fc.weight, 0, feat_init_std)
        elif isinstance(module, Embedding):
            nn.init.kaiming_normal_(module.fc.weight, mode='fan_out', nonlinearity='relu')


# ---------------------------------------------------------------------- ImageNet trunk

#: torchvision's ImageNet ResNet-50 files, newest first; torchreid downloads the last one.
RESNET50_FILES = ('resnet50-0676ba61.pth', 'resnet50-11ad3fa6.pth', 'resnet50-19c8e357.pth')


def _find_resnet50_weights() -> str:
    folder = os.path.join(torch.hub.get_dir(), 'checkpoints')
    for name in RESNET50_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f'jlml_resnet50: no ImageNet ResNet-50 weights offline; put {RESNET50_FILES[0]} '
        f'(torchvision ResNet50_Weights.IMAGENET1K_V1) in {folder} or build with pretrained=False')


def _load_resnet50_trunk(model: JLML, path: str) -> None:
    """Copies torchvision ResNet-50 weights into the trunk; each stripe stream of the local
    branch gets its own copy of layer2-4."""
    source = torch.load(path, map_location='cpu', weights_only=True)
    target = model.state_dict()
    mapped = {}
    for key, value in source.items():
        if key.startswith(('conv1.', 'bn1.')):
            mapped['shared.' + key] = value
        elif key.startswith('layer1.'):
            mapped['shared.stages.0.' + key[len('layer1.'):]] = value
        elif key.startswith(('layer2.', 'layer3.', 'layer4.')):
            stage = int(key[5]) - 2
            rest = f'tower.{stage}.{key[7:]}'
            if model.global_branch is not None:
                mapped['global_branch.' + rest] = value
            if model.local_branch is not None:
                copies = [value] * model.num_stripes
                mapped['local_branch.' + rest] = value if value.dim() == 0 else torch.cat(copies)
    missing = [k for k in mapped if k not in target or target[k].shape != mapped[k].shape]
    if missing:
        raise RuntimeError(f'jlml_resnet50: ImageNet weights do not fit the trunk: {missing[:3]}')
    model.load_state_dict(mapped, strict=False)


# --------------------------------------------------------------------------- builders

_warned_no_pretrained = False


def _create_jlml(variant: str, num_classes: int, loss: str, pretrained: bool,
                 **kwargs) -> JLML:
    global _warned_no_pretrained
    arch_kwargs = {k: kwargs.pop(k) for k in list(kwargs)
                   if k in JLMLArch.__dataclass_fields__}
    arch = replace(kwargs.pop('arch', RESNET39), **{k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in arch_kwargs.items()})
    model = JLML(num_classes, loss, arch=arch, **kwargs)
    model.default_cfg = dict(default_cfgs[variant], architecture=variant)
    if pretrained and model.default_cfg['pretrained_url']:
        _load_resnet50_trunk(model, _find_resnet50_weights())
    elif pretrained and not _warned_no_pretrained:
        # torchreid's FeatureExtractor asks for pretrained weights whenever no model
        # path is given; there are none for JLML-ResNet39, and we never download.
        warnings.warn(f'{variant}: no pretrained weights exist for JLML-ResNet39; '
                      'using the documented initialisation (docs/fidelity.md)', stacklevel=3)
        _warned_no_pretrained = True
    return model


@register_variant()
def jlml(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
         use_gpu: bool = True, **kwargs) -> JLML:
    """JLML-ResNet39: shared stem, global branch and 4-stripe local branch, two losses.

    Keyword arguments reach :class:`JLML` (``num_stripes``, ``feat_dim``, ``dropout``, ...)
    and :class:`JLMLArch` (``stem_width``, ``global_widths``, ``local_widths``, ``depths``, ...).
    """
    return _create_jlml('jlml', num_classes, loss, pretrained, **kwargs)


@register_variant(feature_dim=512, classifiers=1)
def jlml_global(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
                use_gpu: bool = True, **kwargs) -> JLML:
    """Ablation: the global branch only."""
    return _create_jlml('jlml_global', num_classes, loss, pretrained,
                        branches=('global',), **kwargs)


@register_variant(feature_dim=512, classifiers=1)
def jlml_local(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
               use_gpu: bool = True, **kwargs) -> JLML:
    """Ablation: the local (stripe) branch only."""
    return _create_jlml('jlml_local', num_classes, loss, pretrained,
                        branches=('local',), **kwargs)


@register_variant(classifiers=1)
def jlml_single_loss(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
                     use_gpu: bool = True, **kwargs) -> JLML:
    """Ablation: both branches, one classifier (one loss) on the joined feature."""
    return _create_jlml('jlml_single_loss', num_classes, loss, pretrained,
                        joint_classifier=True, **kwargs)


@register_variant()
def jlml_independent(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
                     use_gpu: bool = True, **kwargs) -> JLML:
    """Ablation: no shared low-level layer; each branch has its own stem."""
    return _create_jlml('jlml_independent', num_classes, loss, pretrained,
                        shared_stem=False, **kwargs)


@register_variant(input_size=(3, 256, 128), arch_from_config=False,  # torchvision's trunk
                  pretrained_url='torchvision ResNet50_Weights.IMAGENET1K_V1')
def jlml_resnet50(num_classes: int, loss: str = 'softmax', pretrained: bool = False,
                  use_gpu: bool = True, **kwargs) -> JLML:
    """The two-branch design on a torchvision ResNet-50 trunk (shared conv1 + layer1).

    ``pretrained=True`` loads ImageNet weights from the torch hub cache and never
    downloads; when the file is missing it fails at once, saying where to put it.
    """
    return _create_jlml('jlml_resnet50', num_classes, loss, pretrained,
                        arch=kwargs.pop('arch', RESNET50), **kwargs)
