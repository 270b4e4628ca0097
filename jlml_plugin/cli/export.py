"""``jlml-export``: a trained checkpoint as an ONNX or TorchScript feature extractor.

    jlml-export --checkpoint log/jlml/model/model.pth.tar-60 --format onnx --output jlml.onnx --check

The work is :mod:`jlml_plugin.export`'s; this is its command line.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..export import export_onnx, export_torchscript, max_abs_difference
from ..features import load_feature_model
from .common import command_parser, main_wrapper

__all__ = ['main']


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
