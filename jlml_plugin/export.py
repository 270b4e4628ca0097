"""``jlml-export``: a trained checkpoint as an ONNX or TorchScript feature extractor.

    jlml-export --checkpoint log/jlml/model/model.pth.tar-60 --format onnx --output jlml.onnx --check

The exported model takes a float32 NCHW batch (any batch size) of RGB images scaled to
[0, 1] and normalised with the training mean and std, ``(x - mean) / std``: the
normalisation is *not* inside the model, exactly as torchreid's FeatureExtractor
feeds it. It returns the test feature (1024-D for JLML). Input size, mean, std, feature
size and model name are written into the file (ONNX ``metadata_props``; TorchScript
extra file ``jlml_meta.json``). Classifiers are not exported, so a checkpoint trained
on any number of identities exports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ._cli import command_parser, main_wrapper
from ._files import atomic_open
from .errors import ConfigError
from .features import load_feature_model

__all__ = ['export_onnx', 'export_torchscript', 'max_abs_difference',
           'main']

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


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser('jlml-export', __doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a jlml-train (or torchreid) checkpoint')
    parser.add_argument('--format', choices=['onnx', 'torchscript'], default='onnx')
    parser.add_argument('--output', required=True)
    parser.add_argument('--model', default='', help='model name, if the checkpoint lacks it')
    parser.add_argument('--height', type=int, default=0)
    parser.add_argument('--width', type=int, default=0)
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--check', action='store_true',
                        help='compare with PyTorch on random inputs (max |diff| < 1e-4)')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    size = (args.height, args.width) if args.height and args.width else None
    model, meta = load_feature_model(args.checkpoint, args.model, size)
    if args.format == 'onnx':
        export_onnx(model, meta, args.output, args.opset)
    else:
        export_torchscript(model, meta, args.output)
    print(f'wrote {args.output}: {meta["model_name"]}, input 3x{meta["input_size"][1]}x'
          f'{meta["input_size"][2]} (dynamic batch), {meta["feature_dim"]}-D features; '
          f'normalise inputs with mean {meta["mean"]} std {meta["std"]}')
    if args.check:
        diff = max_abs_difference(model, meta, args.output, args.format)
        verdict = 'ok' if diff < 1e-4 else 'FAILED'
        print(f'check: max |{args.format} - pytorch| = {diff:.2e} ({verdict}, limit 1e-4)')
        if diff >= 1e-4:
            return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-export', run, argv)


if __name__ == '__main__':
    sys.exit(main())
