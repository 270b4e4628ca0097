"""The local branch as the paper draws it: one stream per stripe, run in a Python loop.

:class:`~jlml_plugin.models.jlml.LocalBranch` runs all stripe streams as one grouped
tower. This module rebuilds the same streams as separate ordinary towers, with weights
sliced from the grouped one, so tests can show the two compute the same thing and
``jlml-bench`` can show what batching saves. It is a reference, not a training path.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .jlml import LocalBranch

__all__ = ['LoopedLocalBranch']


def _stream_slice(module: nn.Module, stream: int, streams: int) -> nn.Module:
    """A copy of a grouped Conv2d / BatchNorm2d that holds only ``stream``'s weights."""
    if isinstance(module, nn.Conv2d):
        out_ch = module.out_channels // streams
        in_ch = module.in_channels // streams
        conv = nn.Conv2d(in_ch, out_ch, module.kernel_size, module.stride, module.padding,
                         bias=module.bias is not None, groups=module.groups // streams)
        conv.weight.data.copy_(module.weight.data[stream * out_ch:(stream + 1) * out_ch])
        return conv
    if isinstance(module, nn.BatchNorm2d):
        ch = module.num_features // streams
        bn = nn.BatchNorm2d(ch, module.eps, module.momentum)
        part = slice(stream * ch, (stream + 1) * ch)
        for name in ('weight', 'bias'):
            getattr(bn, name).data.copy_(getattr(module, name).data[part])
        for name in ('running_mean', 'running_var'):
            getattr(bn, name).copy_(getattr(module, name)[part])
        bn.num_batches_tracked.copy_(module.num_batches_tracked)
        return bn
    clone = copy.copy(module)
    clone._modules = {name: _stream_slice(child, stream, streams)
                      for name, child in module._modules.items()}
    return clone


class LoopedLocalBranch(nn.Module):
    """Per-stripe streams with independent copies of a :class:`LocalBranch`'s weights."""

    def __init__(self, branch: LocalBranch) -> None:
        super().__init__()
        m = branch.num_stripes
        self.num_stripes = m
        self.stem = branch.stem
        self.streams = nn.ModuleList(_stream_slice(branch.tower, s, m) for s in range(m))
        self.pool = branch.pool
        self.embed = branch.embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        stripes = x.chunk(self.num_stripes, dim=2)
        pooled = [self.pool(stream(stripe)).flatten(1)
                  for stream, stripe in zip(self.streams, stripes)]
        return self.embed(torch.cat(pooled, 1))
