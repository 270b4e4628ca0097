"""Timings behind ``jlml-bench`` and the GPU kit: training and inference speed (the engine's
own step), the train loader, the evaluator, and torch.profiler's hot spots. Each returns
plain data; :mod:`jlml_plugin.cli.bench` prints and writes it.
"""
from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch.utils import benchmark

from .. import _torchreid
from ..engine import JLMLEngine
from ..errors import ConfigError
from ..hooks import EvalHook, PeriodicCheckpoint
from ..metrics import evaluate_rank
from ..models import MODELS, build
from ..models.reference import LoopedLocalBranch
from ..precision import AMP_MODES, to_channels_last
from ..regularizers import jlml_sparsity
from ..runner import Trainer

__all__ = ['build_bench_model', 'seconds_per_call', 'speed', 'loop_speed', 'loader_speed',
           'evaluator_speed', 'profile']

_tr = _torchreid


def build_bench_model(name: str, num_classes: int) -> torch.nn.Module:
    """A model by torchreid name; ``jlml@looped`` runs JLML's stripes in a Python loop."""
    base, _, variant = name.partition('@')
    if variant not in ('', 'looped') or (variant and base not in MODELS):
        raise ConfigError(f'unknown model variant {name!r}; only JLML models take @looped')
    model = build(base, num_classes)
    if variant == 'looped':
        model.local_branch = LoopedLocalBranch(model.local_branch)
    return model


def seconds_per_call(fn: Callable[[], Any], number: int = 1) -> float:
    """Seconds per call of ``fn`` over ``number`` calls after two warm-up calls, by
    torch.utils.benchmark's Timer (which synchronises CUDA), at the current thread count
    (the Timer's own default is one thread)."""
    timer = benchmark.Timer(stmt='fn()', globals={'fn': fn}, num_threads=torch.get_num_threads())
    return timer.timeit(number).median


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
          num_classes: int = 751, compile: bool = False) -> Dict[str, Dict]:
    """Training and inference images/s of each model: the median over ``repeats`` timings
    (models interleaved), each of ``iters`` steps after the Timer's two warm-up steps,
    after ``warmup`` steps per model. A training step is the engine's own
    ``forward_backward`` (the one ``jlml-train`` runs); with ``compile``, its model is
    ``torch.compile``'d (the warm-up pays the compilation)."""
    dev = torch.device(device)
    dtype = AMP_MODES[amp]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=gen).to(dev, memory_format=fmt)
    batch_data = {'img': images, 'pid': torch.randint(0, num_classes, (batch,), generator=gen)}
    setups = {}
    cuda = dev.type == 'cuda'
    for name in models:
        if cuda:  # this model's own peak: what it adds to the models already set up
            torch.cuda.reset_peak_memory_stats(dev)
            held = torch.cuda.memory_allocated(dev)
        model = build_bench_model(name, num_classes)
        params, flops = _tr.utils.compute_model_complexity(model, (1, 3, height, width))
        model = to_channels_last(model.to(dev)) if channels_last else model.to(dev)
        engine = _engine(model, num_classes, amp, channels_last)
        if compile:
            engine.model = torch.compile(model)

        def train_step(model=model, engine=engine):
            model.train()
            engine.forward_backward(batch_data)

        @torch.no_grad()
        def infer_step(model=model, run=engine.model):
            model.eval()
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                run(images)

        setups[name] = dict(train=train_step, infer=infer_step, params=params, flops=flops)
        for _ in range(warmup):
            train_step()
            infer_step()
        # Peak GPU memory of the weights, optimizer state and the warm-up's training and
        # inference steps (None on the CPU).
        setups[name]['peak_mb'] = ((torch.cuda.max_memory_allocated(dev) - held) / 2**20
                                   if cuda else None)
    times = {name: {'train': [], 'infer': []} for name in models}  # seconds per step
    for _ in range(repeats):
        for name in models:  # interleaved: drift hits every model alike
            for mode in ('train', 'infer'):
                times[name][mode].append(seconds_per_call(setups[name][mode], iters))
    results = {}
    for name in models:
        median = {mode: statistics.median(times[name][mode]) for mode in ('train', 'infer')}
        results[name] = dict(
            train_images_per_s=batch / median['train'],
            infer_images_per_s=batch / median['infer'],
            params=setups[name]['params'], gflops=setups[name]['flops'] / 1e9,
            peak_memory_mb=setups[name]['peak_mb'], seconds=times[name])
    if reference in results:
        for row in results.values():
            row['train_ratio'] = row['train_images_per_s'] / results[reference]['train_images_per_s']
            row['infer_ratio'] = row['infer_images_per_s'] / results[reference]['infer_images_per_s']
    return results


class _TimedLoader:
    """A loader whose batches are timed: ``seconds`` is the time spent waiting for them."""

    def __init__(self, loader) -> None:
        self.loader, self.seconds = loader, 0.0
        self.sampler = getattr(loader, 'sampler', None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield batch


def loop_speed(cfg, epochs: int = 1) -> Dict[str, float]:
    """The real training loop against its step, in one process and so under the same
    threads and contention: images/s of ``epochs`` epochs of the engine's ``train()`` with
    the config's data, model, engine and hooks (as ``jlml-train`` builds them), of the
    waits for batches inside it, then of as many ``forward_backward`` steps on one cached
    batch (the step ``jlml-bench speed`` times), and of the train loader alone."""
    datamanager = Trainer.build_datamanager(cfg)
    model = Trainer.build_model(cfg, datamanager.num_train_pids)
    model, regularizer = Trainer.place_model(cfg, model, torch.device('cpu'), distributed=False)
    engine = Trainer.build_engine(cfg, datamanager, model, regularizer)
    # What a run's own images/s counts: its steps, not its evaluations and checkpoints.
    engine.hooks = [h for h in engine.hooks if not isinstance(h, (EvalHook, PeriodicCheckpoint))]
    engine.train_loader = timed = _TimedLoader(datamanager.train_loader)
    engine.start_epoch, engine.max_epoch = 0, epochs
    engine._call_hooks('before_train', cfg.data.save_dir)
    start = time.perf_counter()
    for engine.epoch in range(epochs):
        engine.train(print_freq=cfg.train.print_freq)
    loop = time.perf_counter() - start
    engine._call_hooks('after_train')
    images = engine.throughput.images
    batches = len(timed) * epochs
    batch = next(iter(datamanager.train_loader))
    start = time.perf_counter()
    for _ in range(batches):
        engine.forward_backward(batch)
    step = time.perf_counter() - start
    start, loaded = time.perf_counter(), 0
    for data in datamanager.train_loader:
        loaded += len(data['img'])
    loader = time.perf_counter() - start
    return dict(batches=batches, images=images, loop_seconds=loop, data_wait_seconds=timed.seconds,
                step_seconds=step, loop_images_per_s=images / loop,
                step_images_per_s=batches * len(batch['img']) / step,
                loop_over_step=(images / loop) / (batches * len(batch['img']) / step),
                loader_alone_images_per_s=loaded / loader)


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
    outputs = {name: fn() for name, fn in evaluators.items()}
    seconds = {name: [] for name in evaluators}
    for _ in range(repeats):
        for name, fn in evaluators.items():  # interleaved: drift hits every evaluator alike
            seconds[name].append(seconds_per_call(fn))
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
    model = build_bench_model(model_name, 751).train()
    model = to_channels_last(model) if channels_last else model
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
