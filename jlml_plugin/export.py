"""A trained checkpoint as an ONNX or TorchScript feature extractor (``jlml-export``).

The exported model takes a float32 NCHW batch (any batch size) of RGB images scaled to
[0, 1] and normalised with the training mean and std, ``(x - mean) / std``: the
normalisation is *not* inside the model, exactly as torchreid's FeatureExtractor
feeds it. It returns the test feature (1024-D for JLML). Input size, mean, std, feature
size and model name are written into the file (ONNX ``metadata_props``; TorchScript
extra file ``jlml_meta.json``). Classifiers are not exported, so a checkpoint trained
on any number of identities exports.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

import numpy as np
import torch

from ._files import atomic_open
from .errors import ConfigError

__all__ = ['export_onnx', 'export_torchscript', 'max_abs_difference']


def _example(meta: Dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    _, h, w = meta['input_size']
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: torch.nn.Module, meta: Dict[str, Any], output: str,
                opset: int = 17) -> None:
    onnx = _require('onnx')
    folder = os.path.dirname(os.path.abspath(output))
    tmp = os.path.join(folder, f'.tmp-{os.getpid()}-{os.path.basename(output)}')
    try:
        # The TorchScript-based exporter: no onnxscript needed, dynamic batch via dynamic_axes.
        torch.onnx.export(model, (_example(meta, 2),), tmp, dynamo=False, opset_version=opset,
                          input_names=['images'], output_names=['features'],
                          dynamic_axes={'images': {0: 'batch'}, 'features': {0: 'batch'}})
        proto = onnx.load(tmp)
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.checker.check_model(proto)
        with atomic_open(output, 'wb') as f:
            f.write(proto.SerializeToString())
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def export_torchscript(model: torch.nn.Module, meta: Dict[str, Any], output: str) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(model, (_example(meta, 2),), check_trace=False)
    with atomic_open(output, 'wb') as f:
        torch.jit.save(traced, f, _extra_files={'jlml_meta.json': json.dumps(meta)})


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs {module}, which is not installed: "
                          f"pip install 'jlml-plugin[export]'") from exc


def max_abs_difference(model: torch.nn.Module, meta: Dict[str, Any], output: str,
                       fmt: str, batches=(1, 3)) -> float:
    """Largest |exported - PyTorch| feature difference over random inputs."""
    worst = 0.0
    if fmt == 'onnx':
        ort = _require('onnxruntime')
        session = ort.InferenceSession(output, providers=['CPUExecutionProvider'])
        def run(x):
            return session.run(None, {'images': x.numpy()})[0]
    else:
        loaded = torch.jit.load(output)

        def run(x):
            # The graph executor's profiling passes cost seconds and change no result.
            with torch.no_grad(), torch.jit.optimized_execution(False):
                return loaded(x).numpy()
    for i, batch in enumerate(batches):
        x = _example(meta, batch, seed=100 + i)
        with torch.no_grad():
            expected = model(x).numpy()
        worst = max(worst, float(np.abs(run(x) - expected).max()))
    return worst
