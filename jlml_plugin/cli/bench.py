"""``jlml-bench``: measured numbers, side by side in one process.

    jlml-bench speed --models jlml,resnet50,osnet_x1_0,hacnn --height 160 --width 64 --batch 32
    jlml-bench loop --config-file configs/jlml_cuhk01.yaml --root reid-data [KEY VALUE ...]
    jlml-bench data --root reid-data --dataset cuhk01_seeded --workers 0,1,2
    jlml-bench evaluator --queries 3368 --gallery 15913 --ids 751 --cams 6
    jlml-bench profile --model jlml --height 160 --width 64 --batch 32
    jlml-bench gpu --output DIR [--smoke]          (the GPU kit: jlml_plugin.tools.gpukit)

``speed`` times training steps (the engine's own step: forward, the losses, backward,
optimizer step, sparsity terms) and inference of each model, interleaved model by model within every repeat so that drift in the
machine's speed hits all of them alike; it reports the median and each model's ratio
to a reference model. ``jlml@looped`` is JLML with its stripe streams run one by one in
a Python loop (the paper's drawing), for the before/after of batching them.
``loop`` times the real training loop of a config (data, hooks and all) against its step
alone, in one process, and the time it waits for batches. ``data`` times torchreid's train
loader alone. ``evaluator`` times the plugin's
evaluator against torchreid's Python fallback and, where it is built, its Cython one.
``profile`` prints torch.profiler's table of the operators that take the time of one
model's training steps. ``gpu`` runs every GPU check in one command (:mod:`jlml_plugin.tools.gpukit`).
Each writes JSON with the raw timings and the environment.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Dict, List, Optional

import torch

from .._files import atomic_open
from ..config import load_config, trained_config
from ..errors import ConfigError
from ..runner import environment, validate
from ..tools.gpukit import run_kit
from ..tools.timing import evaluator_speed, loader_speed, loop_speed, profile, speed
from .common import command_parser, main_wrapper

__all__ = ['main']


def _write(path: Optional[str], payload: Dict) -> None:
    if path:
        with atomic_open(path, 'w') as f:
            json.dump(payload, f, indent=1)
        print(f'wrote {path}')


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser('jlml-bench', __doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)
    sp = sub.add_parser('speed', help='training and inference images/s, side by side')
    sp.add_argument('--models', default='jlml,resnet50,osnet_x1_0,hacnn')
    sp.add_argument('--height', type=int, default=160)
    sp.add_argument('--width', type=int, default=64)
    sp.add_argument('--batch', type=int, default=32)
    sp.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    sp.add_argument('--warmup', type=int, default=2)
    sp.add_argument('--repeats', type=int, default=5)
    sp.add_argument('--iters', type=int, default=3, help='steps per timed repeat')
    sp.add_argument('--reference', default='resnet50')
    sp.add_argument('--device', default='cpu')
    sp.add_argument('--channels-last', action='store_true')
    sp.add_argument('--amp', default='off', choices=['off', 'bf16', 'fp16'])
    sp.add_argument('--compile', action='store_true', help='torch.compile each model')
    sp.add_argument('--output', default='', help='JSON file')
    lp = sub.add_parser('loop', help='the real training loop against its step, one process')
    lp.add_argument('--config-file', required=True, help='a jlml-train config')
    lp.add_argument('--root', default='', help='datasets folder (data.root)')
    lp.add_argument('--epochs', type=int, default=1)
    lp.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    lp.add_argument('--output', default='', help='JSON file')
    lp.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides')
    dp = sub.add_parser('data', help="torchreid's train loader images/s")
    dp.add_argument('--root', required=True)
    dp.add_argument('--dataset', default='cuhk01_seeded')
    dp.add_argument('--height', type=int, default=160)
    dp.add_argument('--width', type=int, default=64)
    dp.add_argument('--batch', type=int, default=32)
    dp.add_argument('--workers', default='0,1,2')
    dp.add_argument('--transforms', default='random_flip,random_crop')
    dp.add_argument('--batches', type=int, default=40)
    dp.add_argument('--output', default='')
    ep = sub.add_parser('evaluator', help='evaluator seconds, ours vs torchreid')
    ep.add_argument('--queries', type=int, default=3368)
    ep.add_argument('--gallery', type=int, default=15913)
    ep.add_argument('--ids', type=int, default=751)
    ep.add_argument('--cams', type=int, default=6)
    ep.add_argument('--repeats', type=int, default=3)
    ep.add_argument('--skip-python', action='store_true', help="skip torchreid's slow fallback")
    ep.add_argument('--output', default='')
    pp = sub.add_parser('profile', help="torch.profiler's hot spots of one model's training")
    pp.add_argument('--model', default='jlml')
    pp.add_argument('--height', type=int, default=160)
    pp.add_argument('--width', type=int, default=64)
    pp.add_argument('--batch', type=int, default=32)
    pp.add_argument('--steps', type=int, default=3)
    pp.add_argument('--threads', type=int, default=0)
    pp.add_argument('--channels-last', action='store_true')
    gp = sub.add_parser('gpu', help='the GPU kit: speed, DDP and a CUHK01 board in one run')
    gp.add_argument('--output', required=True, help='folder for gpu_kit.json / gpu_kit.md')
    gp.add_argument('--smoke', action='store_true', help='every step at toy size on the CPU')
    gp.add_argument('--data-root', default='.gpukit/reid-data',
                    help='folder holding cuhk01/campus (PNG or JPEG)')
    gp.add_argument('--budget', type=int, default=0,
                    help='seconds for the whole kit, the board cut at the end (0: 540 on a GPU, '
                         'no limit with --smoke)')
    gp.add_argument('--steps', default='speed,ddp,board')
    return parser


def run(argv: List[str]) -> int:
    args = build_parser().parse_args(argv)
    env = environment()
    if args.command == 'speed':
        if args.threads:
            torch.set_num_threads(args.threads)
            env['torch_threads'] = args.threads
        names = [m for m in args.models.split(',') if m]
        results = speed(names, args.height, args.width, args.batch, args.warmup, args.repeats,
                        args.iters, args.reference, args.device, args.channels_last, args.amp,
                        compile=args.compile)
        print(f'{args.height}x{args.width}, batch {args.batch}, {env["torch_threads"]} threads, '
              f'{args.device}, amp {args.amp}, channels_last {args.channels_last}, '
              f'compile {args.compile}')
        print(f'{"model":<18}{"params(M)":>10}{"GFLOPs":>8}{"train img/s":>13}{"ratio":>7}'
              f'{"infer img/s":>13}{"ratio":>7}')
        for name, row in results.items():
            print(f'{name:<18}{row["params"] / 1e6:>10.2f}{row["gflops"]:>8.3f}'
                  f'{row["train_images_per_s"]:>13.1f}{row.get("train_ratio", float("nan")):>7.2f}'
                  f'{row["infer_images_per_s"]:>13.1f}{row.get("infer_ratio", float("nan")):>7.2f}')
        _write(args.output, dict(command='speed', args=vars(args), env=env, results=results))
    elif args.command == 'loop':
        if args.threads:
            torch.set_num_threads(args.threads)
            env['torch_threads'] = args.threads
        cfg = load_config(args.config_file, args.opts + (['data.root', args.root] if args.root else []))
        cfg.data.save_dir = tempfile.mkdtemp(prefix='jlml-bench-loop-')
        validate(cfg)
        results = loop_speed(cfg, args.epochs)
        print(f"loop {results['loop_images_per_s']:.1f} img/s (of it, waiting for batches "
              f"{results['data_wait_seconds']:.1f} of {results['loop_seconds']:.1f} s); step alone "
              f"{results['step_images_per_s']:.1f} img/s; loop / step "
              f"{results['loop_over_step']:.1%}; the loader alone "
              f"{results['loader_alone_images_per_s']:.1f} img/s")
        _write(args.output, dict(command='loop', args=vars(args), env=env, results=results,
                                 config=trained_config(cfg)))
    elif args.command == 'data':
        workers = [int(w) for w in args.workers.split(',')]
        results = loader_speed(args.root, args.dataset, args.height, args.width, args.batch,
                               workers, args.transforms.split(','), args.batches)
        for n, rate in results.items():
            print(f'data.workers {n}: {rate:.1f} images/s')
        _write(args.output, dict(command='data', args=vars(args), env=env, results=results))
    elif args.command == 'gpu':
        steps = tuple(s for s in args.steps.split(',') if s)
        unknown = set(steps) - {'speed', 'ddp', 'board'}
        if unknown:
            raise ConfigError(f'unknown --steps {sorted(unknown)}; choose from speed, ddp, board')
        run_kit(args.output, args.smoke, args.data_root, args.budget or None, steps)
    elif args.command == 'profile':
        if args.threads:
            torch.set_num_threads(args.threads)
        print(profile(args.model, args.height, args.width, args.batch, args.steps,
                      args.channels_last))
    else:
        results = evaluator_speed(args.queries, args.gallery, args.ids, args.cams, args.repeats,
                                  include_python=not args.skip_python)
        print(f'{args.queries} queries x {args.gallery} gallery, {args.ids} ids, {args.cams} cams')
        for name, row in results.items():
            print(f'{name:<18}{row["seconds"]:>9.3f} s  {row["speedup_of_jlml_plugin"]:>7.1f}x '
                  f'the plugin\'s time  mAP {row["mAP"]:.6f}  R1 {row["rank1"]:.6f}  '
                  f'max |difference| {row["max_abs_difference_to_plugin"]:.1e}')
        _write(args.output, dict(command='evaluator', args=vars(args), env=env, results=results))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return main_wrapper('jlml-bench', run, argv)


if __name__ == '__main__':
    sys.exit(main())
