"""``jlml-bench``: measured numbers, side by side in one process.

    jlml-bench speed --models jlml,resnet50,osnet_x1_0,hacnn --height 160 --width 64 --batch 32
    jlml-bench data --root reid-data --dataset cuhk01_seeded --workers 0,1,2
    jlml-bench evaluator --queries 3368 --gallery 15913 --ids 751 --cams 6
    jlml-bench profile --model jlml --height 160 --width 64 --batch 32

``speed`` times training steps (the engine's own step: forward, the losses, backward,
optimizer step, sparsity terms) and inference of each model, interleaved model by model within every repeat so that drift in the
machine's speed hits all of them alike; it reports the median and each model's ratio
to a reference model. ``jlml@looped`` is JLML with its stripe streams run one by one in
a Python loop (the paper's drawing), for the before/after of batching them.
``data`` times torchreid's train loader alone. ``evaluator`` times the plugin's
evaluator against torchreid's Python fallback and, where it is built, its Cython one.
``profile`` prints torch.profiler's table of the operators that take the time of one
model's training steps.
Each writes JSON with the raw timings and the environment.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from . import _torchreid
from ._cli import command_parser, main_wrapper
from ._files import atomic_open
from .engine import JLMLEngine
from .precision import AMP_MODES
from .errors import ConfigError
from .metrics import evaluate_rank
from .report import environment
from .models import MODELS
from .models.reference import LoopedLocalBranch
from .regularizers import jlml_sparsity

__all__ = ['build_bench_model', 'time_call', 'speed', 'loader_speed', 'evaluator_speed', 'profile',
           'main']

_tr = _torchreid


def build_bench_model(name: str, num_classes: int) -> torch.nn.Module:
    """A model by torchreid name; ``jlml@looped`` runs JLML's stripes in a Python loop."""
    base, _, variant = name.partition('@')
    if variant not in ('', 'looped') or (variant and base not in MODELS):
        raise ConfigError(f'unknown model variant {name!r}; only JLML models take @looped')
    if base not in _tr.model_factory():
        raise ConfigError(f'unknown model {base!r}; choose from: '
                          f'{", ".join(sorted(_tr.model_factory()))}')
    model = _tr.models.build_model(base, num_classes, pretrained=False, use_gpu=False)
    if variant == 'looped':
        model.local_branch = LoopedLocalBranch(model.local_branch)
    return model


def time_call(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _engine(model: torch.nn.Module, num_classes: int, amp: str,
            channels_last: bool) -> JLMLEngine:
    """The engine ``jlml-train`` would run the model with: identity losses as named by the
    model, JLML's sparsity terms and their proximal step, AMP. Only its training step is
    used, so it needs no data: a stand-in data manager gives the class count."""
    data = SimpleNamespace(train_loader=None, test_loader=None, num_train_pids=num_classes)
    regularizer = jlml_sparsity(model) if hasattr(model, 'sparsity_params') else None
    engine = JLMLEngine(data, model, torch.optim.Adam(model.parameters(), lr=3e-4),
                        use_gpu=next(model.parameters()).is_cuda, regularizer=regularizer,
                        amp=amp, channels_last=channels_last)
    engine.epoch = engine.batch_idx = 0
    return engine


def speed(models: List[str], height: int, width: int, batch: int, warmup: int = 2,
          repeats: int = 5, iters: int = 3, reference: str = 'resnet50',
          device: str = 'cpu', channels_last: bool = False, amp: str = 'off',
          num_classes: int = 751) -> Dict[str, Dict]:
    """Training and inference images/s of each model; see the module docstring. A training
    step is the engine's own ``forward_backward`` (the one ``jlml-train`` runs)."""
    dev = torch.device(device)
    dtype = AMP_MODES[amp]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=gen).to(dev, memory_format=fmt)
    batch_data = {'img': images, 'pid': torch.randint(0, num_classes, (batch,), generator=gen)}
    setups = {}
    for name in models:
        model = build_bench_model(name, num_classes)
        params, flops = _tr.utils.compute_model_complexity(model, (1, 3, height, width))
        model = model.to(dev, memory_format=fmt)
        engine = _engine(model, num_classes, amp, channels_last)

        def train_step(model=model, engine=engine):
            model.train()
            for _ in range(iters):
                engine.forward_backward(batch_data)

        @torch.no_grad()
        def infer_step(model=model):
            model.eval()
            for _ in range(iters):
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    model(images)

        setups[name] = dict(train=train_step, infer=infer_step, params=params, flops=flops)
        for _ in range(warmup):
            train_step()
            infer_step()
    times = {name: {'train': [], 'infer': []} for name in models}
    for _ in range(repeats):
        for name in models:  # interleaved: drift hits every model alike
            for mode in ('train', 'infer'):
                times[name][mode].append(time_call(setups[name][mode], dev))
    results = {}
    for name in models:
        median = {mode: statistics.median(times[name][mode]) for mode in ('train', 'infer')}
        results[name] = dict(
            train_images_per_s=batch * iters / median['train'],
            infer_images_per_s=batch * iters / median['infer'],
            params=setups[name]['params'], gflops=setups[name]['flops'] / 1e9,
            seconds=times[name])
    if reference in results:
        for row in results.values():
            row['train_ratio'] = row['train_images_per_s'] / results[reference]['train_images_per_s']
            row['infer_ratio'] = row['infer_images_per_s'] / results[reference]['infer_images_per_s']
    return results


def loader_speed(root: str, dataset: str, height: int, width: int, batch: int,
                 workers: List[int], transforms: List[str], batches: int = 40) -> Dict[str, float]:
    """Images/s of torchreid's train loader alone, per ``data.workers`` setting."""
    out = {}
    for n in workers:
        dm = _tr.data.ImageDataManager(root=root, sources=dataset, height=height, width=width,
                                       transforms=transforms, batch_size_train=batch,
                                       workers=n, use_gpu=False)
        loader = iter(dm.train_loader)
        next(loader)  # worker start-up is not throughput
        count, start = 0, time.perf_counter()
        for _ in range(min(batches, len(dm.train_loader) - 1)):
            count += len(next(loader)['img'])
        out[str(n)] = count / (time.perf_counter() - start)
    return out


def evaluator_speed(queries: int, gallery: int, ids: int, cams: int, repeats: int = 3,
                    include_python: bool = True) -> Dict[str, Dict]:
    """Seconds per evaluation of a random ``queries x gallery`` problem, per evaluator."""
    rng = np.random.default_rng(0)
    problem = (rng.random((queries, gallery)).astype(np.float32), rng.integers(0, ids, queries),
               rng.integers(0, ids, gallery), rng.integers(0, cams, queries),
               rng.integers(0, cams, gallery))
    def plugin():
        result = evaluate_rank(*problem)
        return result.cmc, result.mAP

    evaluators = {'jlml_plugin': plugin}
    if include_python:
        python = _tr.reference_evaluators()['market1501']
        evaluators['torchreid_python'] = lambda: python(*problem, 50)
    cython = _tr.cython_evaluator()
    if cython is not None:
        evaluators['torchreid_cython'] = lambda: cython(*problem, 50, False)
    seconds = {name: [] for name in evaluators}
    outputs = {}
    for _ in range(repeats):
        for name, fn in evaluators.items():
            start = time.perf_counter()
            outputs[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    ours = outputs['jlml_plugin']
    out = {}
    for name, runs in seconds.items():
        cmc, mAP = outputs[name]
        # Random float32 distances can tie, and tie order differs between evaluators.
        difference = max(float(np.abs(np.asarray(cmc[:50]) - ours[0][:50]).max()),
                         abs(float(mAP) - ours[1]))
        out[name] = dict(seconds=statistics.median(runs), runs=runs, mAP=float(mAP),
                         rank1=float(cmc[0]), max_abs_difference_to_plugin=difference)
    for row in out.values():
        row['speedup_of_jlml_plugin'] = row['seconds'] / out['jlml_plugin']['seconds']
    return out


def profile(model_name: str, height: int, width: int, batch: int, steps: int = 3,
            channels_last: bool = False, rows: int = 15) -> str:
    """torch.profiler's operator table (by self CPU time) for ``steps`` of the engine's
    training step."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_bench_model(model_name, 751).to(memory_format=fmt).train()
    engine = _engine(model, 751, 'off', channels_last)
    batch_data = {'img': torch.randn(batch, 3, height, width).to(memory_format=fmt),
                  'pid': torch.randint(0, 751, (batch,))}

    def step():
        engine.forward_backward(batch_data)

    step()  # warm-up: kernel selection is not steady-state time
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)


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
    sp.add_argument('--output', default='', help='JSON file')
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
                        args.iters, args.reference, args.device, args.channels_last, args.amp)
        print(f'{args.height}x{args.width}, batch {args.batch}, {env["torch_threads"]} threads, '
              f'{args.device}, amp {args.amp}, channels_last {args.channels_last}')
        print(f'{"model":<18}{"params(M)":>10}{"GFLOPs":>8}{"train img/s":>13}{"ratio":>7}'
              f'{"infer img/s":>13}{"ratio":>7}')
        for name, row in results.items():
            print(f'{name:<18}{row["params"] / 1e6:>10.2f}{row["gflops"]:>8.3f}'
                  f'{row["train_images_per_s"]:>13.1f}{row.get("train_ratio", float("nan")):>7.2f}'
                  f'{row["infer_images_per_s"]:>13.1f}{row.get("infer_ratio", float("nan")):>7.2f}')
        _write(args.output, dict(command='speed', args=vars(args), env=env, results=results))
    elif args.command == 'data':
        workers = [int(w) for w in args.workers.split(',')]
        results = loader_speed(args.root, args.dataset, args.height, args.width, args.batch,
                               workers, args.transforms.split(','), args.batches)
        for n, rate in results.items():
            print(f'data.workers {n}: {rate:.1f} images/s')
        _write(args.output, dict(command='data', args=vars(args), env=env, results=results))
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
