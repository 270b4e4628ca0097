"""``jlml-train``: torchreid's ``scripts/main.py``, for JLML and every torchreid model.

    jlml-train                                   # JLML on the built-in synthetic set
    jlml-train --config-file configs/jlml_cuhk01.yaml --root /data/reid
    jlml-train --config-file X.yaml -s market1501 -t market1501 model.name osnet_x1_0
    torchrun --nproc_per_node=4 -m jlml_plugin.cli.train --config-file X.yaml

Semantics follow torchreid's main.py: defaults, then ``--config-file``, then ``--root``,
``-s/--sources``, ``-t/--targets`` and ``--transforms``, then ``KEY VALUE`` overrides.
Unlike main.py, the overrides may follow ``-s``/``-t``/``--transforms`` directly: the
first known config key ends those lists (torchreid's F10).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import List, Optional, Tuple

from .. import _torchreid
from .._files import atomic_write_text
from ..config import flatten, get_cfg, load_config, shipped_config
from ..distributed import shutdown
from ..progress import log_to
from ..runner import RunResult, train, validate
from .common import command_parser, main_wrapper

DEFAULT_CONFIG = 'jlml_synthetic.yaml'
_SINGLE_VALUE = {'--config-file', '--root'}
_LISTS = {'-s', '--sources', '-t', '--targets', '--transforms'}
_FLAGS = _LISTS | {'--resume', '--debug', '-h', '--help'}
_KEY_SHAPE = re.compile(r'^[A-Za-z_]\w*(\.\w+)+$')


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        'jlml-train', 'Train and evaluate JLML (or any torchreid model) from a torchreid-style '
                      'yacs config.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='Without --config-file it trains JLML on the built-in synthetic set '
               f'({DEFAULT_CONFIG}).\nExample: jlml-train --config-file configs/jlml_cuhk01.yaml '
               '--root reid-data train.max_epoch 30')
    parser.add_argument('--config-file', default='', help='YAML config (torchreid schema + jlml)')
    parser.add_argument('-s', '--sources', nargs='+', help='source datasets (data.sources)')
    parser.add_argument('-t', '--targets', nargs='+', help='target datasets (data.targets)')
    parser.add_argument('--transforms', nargs='+', help='training augmentations (data.transforms)')
    parser.add_argument('--root', default='', help='datasets folder (data.root)')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the newest checkpoint under data.save_dir')
    parser.add_argument('opts', nargs=argparse.REMAINDER, metavar='KEY VALUE',
                        help='config overrides, e.g. train.lr 0.001 model.name osnet_x1_0')
    return parser


def split_overrides(argv: List[str], keys) -> Tuple[List[str], List[str]]:
    """Separates options from ``KEY VALUE`` overrides, wherever each appears.

    A config key (or any ``section.key``-shaped token) starts a pair, also right after
    ``-s``/``-t``/``--transforms``, whose lists would otherwise swallow it (F10).
    """
    options, overrides = [], []
    in_list = False
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _SINGLE_VALUE:
            options += argv[i:i + 2]
            in_list, i = False, i + 2
        elif token.startswith('-') and token in _FLAGS:
            options.append(token)
            in_list, i = token in _LISTS, i + 1
        elif token in keys or _KEY_SHAPE.match(token) or not in_list:
            overrides += argv[i:i + 2]
            in_list, i = False, i + 2
        else:
            options.append(token)
            i += 1
    return options, overrides


def config_from_args(argv: List[str]):
    """The merged config and the parsed options of a ``jlml-train`` command line."""
    options, overrides = split_overrides(argv, flatten(get_cfg()))
    args = build_parser().parse_args(options)
    overrides = args.opts + overrides
    if args.config_file:
        config_file = args.config_file
        cfg = load_config(config_file)
    else:
        cfg = load_config(shipped_config(DEFAULT_CONFIG))
    if args.root:
        cfg.data.root = args.root
    for key in ('sources', 'targets', 'transforms'):
        if getattr(args, key):
            cfg.data[key] = getattr(args, key)
    return load_config(None, overrides, base=cfg), args


def write_results(cfg, result: RunResult) -> None:
    """``<save_dir>/results.json``: what the run printed last, as a record (each target's
    metrics, the training speed and wall time)."""
    record = dict(targets={name: r.as_record(tuple(cfg.test.ranks))
                           for name, r in result.training.results.items()},
                  **result.summary(cfg))
    path = os.path.join(cfg.data.save_dir, 'results.json')
    atomic_write_text(path, json.dumps(record, indent=1) + '\n')
    print(f'Results written to {path}')


def run(argv: List[str]) -> int:
    cfg, args = config_from_args(argv)
    validate(cfg)
    cfg.freeze()
    tee = None
    if int(os.environ.get('RANK', '0')) == 0:  # under torchrun, other ranks stay quiet
        tee = log_to(cfg.data.save_dir, 'test' if cfg.test.evaluate else 'train')
        print(f'jlml-train with {_torchreid.describe()}')
        print(f'Config:\n{cfg}')
    try:
        result = train(cfg, resume_latest=args.resume)
        if tee is not None:
            write_results(cfg, result)
        shutdown()  # after success only: a failed rank must not wait at a barrier
    finally:
        if tee is not None:
            sys.stdout = tee.console
            tee.close()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-train', run, argv)


if __name__ == '__main__':
    sys.exit(main())
