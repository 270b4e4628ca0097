"""JLML's multi-loss training on torchreid's engine.

:class:`JLMLEngine` subclasses torchreid's ``ImageSoftmaxEngine`` and changes what JLML
changes: the objective. Per step it computes

    L = sum_b w_b * CE_b(logits_b) + sum_t lambda_t * R_t

with one identity loss per branch (torchreid's label-smoothing ``CrossEntropyLoss``) and
the terms of a :class:`~jlml_plugin.regularizers.SparsityRegularizer`, which are reported and
then minimised by their proximal step after each optimizer step. Models that name no
losses (torchreid's baselines) get torchreid's own rule: one CE, averaged over a tuple
of heads. :class:`JLMLTripletEngine` adds torchreid's batch-hard ``TripletLoss`` per
branch.

The loop is torchreid's (``run`` takes its arguments: train, evaluate when due, save),
with each concern it adds in a piece of its own:

* :mod:`jlml_plugin.precision`: AMP (bf16/fp16 autocast, GradScaler) and the stop on a
  NaN/inf loss;
* :mod:`jlml_plugin.hooks`: progress, TensorBoard, evaluation when due, periodic
  checkpoints, throughput counters: one hook each;
* :mod:`jlml_plugin.evaluation`: fp32 features and the exact evaluator with mINP;
* :mod:`jlml_plugin.checkpoint`: atomic, resumable checkpoints with RNG state
  (torchreid's F1/F2 fixed: ``rank1`` is a float and ``scheduler=None`` works).

Under DistributedDataParallel, rank 0 logs, evaluates and saves. :meth:`JLMLEngine.run`
returns a :class:`TrainingResult`; nothing is read back from the engine afterwards.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from . import _torchreid
from .checkpoint import resume, save_checkpoint, training_state
from .distributed import (DistributedIdentitySampler, barrier, get_world_size,
                          is_main_process, unwrap)
from .errors import ConfigError
from .evaluation import draw_ranked_lists, evaluate_target
from .hooks import EvalHook, Hook, Throughput, default_hooks
from .metrics import RankResult
from .precision import MixedPrecision, NonFiniteGuard
from .regularizers import SparsityRegularizer

__all__ = ['ENGINES', 'register_engine', 'JLMLEngine', 'JLMLTripletEngine', 'TrainingResult',
           'check_loss_weights', 'check_run_options', 'check_triplet']

_tr = _torchreid


@dataclass
class TrainingResult:
    """What :meth:`JLMLEngine.run` returns."""
    #: The last evaluation's result per target (empty if nothing was evaluated).
    results: Dict[str, RankResult]
    #: The last trained epoch's mean losses and accuracies (``acc_*`` in %).
    train_summary: Dict[str, float] = field(default_factory=dict)
    #: Training images and seconds over the whole run, resumes included.
    train_images: int = 0
    train_seconds: float = 0.0
    #: Wall time of the run's segments before it was last resumed (0 if it never was).
    wall_seconds_before_resume: float = 0.0

    @property
    def train_images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0


#: The engine of each ``loss.name``: a new loss kind is one engine class under
#: :func:`register_engine`, with its rules in its ``check_config``.
ENGINES: Dict[str, type] = {}


def register_engine(loss_name: str):
    """Registers an engine class as the one ``loss.name <loss_name>`` trains with."""
    def register(cls):
        ENGINES[loss_name] = cls
        return cls
    return register


@register_engine('softmax')
class JLMLEngine(_tr.engine.ImageSoftmaxEngine):
    """Softmax multi-loss engine with sparsity regularisers and their proximal step.

    Args beyond torchreid's ``ImageSoftmaxEngine`` (whose ``scheduler`` may be None):
        loss_weights: weight of each named identity loss (``{'global': w_g, 'local': w_l}``;
            a name not given weighs 1).
        regularizer: sparsity terms, reported every step and minimised by their proximal
            step after each optimizer step.
        amp: ``'off'``, ``'bf16'`` or ``'fp16'``; channels_last: feed NHWC images.
        meta: saved in every checkpoint (what rebuilds the model, for export).
        single_shot: also report torchreid's cuhk03 single-gallery-shot CMC.
        hooks: the loop's :class:`~jlml_plugin.hooks.Hook` s, in order (default:
            :func:`~jlml_plugin.hooks.default_hooks`: progress, TensorBoard, evaluation,
            checkpoints); the throughput counter always runs first.
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu: bool = True,
                 label_smooth: bool = True, loss_weights: Optional[Dict[str, float]] = None,
                 regularizer: Optional[SparsityRegularizer] = None, amp: str = 'off',
                 channels_last: bool = False, meta: Optional[Dict[str, Any]] = None,
                 single_shot: bool = False, hooks: Optional[List[Hook]] = None) -> None:
        super().__init__(datamanager, model, optimizer, scheduler=scheduler, use_gpu=use_gpu,
                         label_smooth=label_smooth)
        self.device = next(model.parameters()).device
        self.net = unwrap(model)
        #: One identity loss per name. A model that names none is a torchreid baseline.
        self.loss_names: Tuple[str, ...] = tuple(getattr(self.net, 'loss_names', ()))
        self.loss_weights = dict(loss_weights or {})
        check_loss_weights(self.loss_weights)
        self.regularizer = regularizer
        self.precision = MixedPrecision(amp, self.device.type)
        self.guard = NonFiniteGuard.for_amp(amp)
        self.channels_last = channels_last
        self.meta = dict(meta or {})
        self.single_shot = single_shot
        self.main = is_main_process()
        self.throughput = Throughput()
        self.hooks: List[Hook] = [self.throughput, *(default_hooks(self.main) if hooks is None
                                                     else hooks)]

    @staticmethod
    def config_kwargs(cfg) -> Dict[str, Any]:
        """The constructor arguments this engine reads from a config (its own keys)."""
        return dict(use_gpu=cfg.use_gpu, label_smooth=cfg.loss.softmax.label_smooth,
                    loss_weights={'global': cfg.jlml.weight_global,
                                  'local': cfg.jlml.weight_local},
                    amp=cfg.train.amp, channels_last=cfg.train.channels_last,
                    single_shot=cfg.test.single_shot)

    @classmethod
    def check_config(cls, cfg) -> None:
        """The rules on this engine's keys, checked before anything is built."""
        check_loss_weights(cls.config_kwargs(cfg)['loss_weights'])
        check_run_options(cfg.test.visrank, cfg.test.evaluate)

    @classmethod
    def from_config(cls, cfg, datamanager, model, optimizer, **kwargs) -> 'JLMLEngine':
        """The engine for ``cfg`` (detectron2's ``from_config``); ``kwargs`` (scheduler,
        regularizer, meta, hooks) are what the config alone does not give."""
        return cls(datamanager, model, optimizer, **cls.config_kwargs(cfg), **kwargs)

    @staticmethod
    def run_kwargs(cfg) -> Dict[str, Any]:
        """:meth:`run`'s arguments from a config, as torchreid's main.py maps them."""
        return dict(
            save_dir=cfg.data.save_dir, max_epoch=cfg.train.max_epoch,
            start_epoch=cfg.train.start_epoch, fixbase_epoch=cfg.train.fixbase_epoch,
            open_layers=cfg.train.open_layers, start_eval=cfg.test.start_eval,
            eval_freq=cfg.test.eval_freq, test_only=cfg.test.evaluate,
            print_freq=cfg.train.print_freq, dist_metric=cfg.test.dist_metric,
            normalize_feature=cfg.test.normalize_feature, visrank=cfg.test.visrank,
            visrank_topk=cfg.test.visrank_topk, use_metric_cuhk03=cfg.cuhk03.use_metric_cuhk03,
            ranks=cfg.test.ranks, rerank=cfg.test.rerank)

    def _call_hooks(self, point: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    # -------------------------------------------------------------------------- losses

    def identity_losses(self, logits, pids) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted identity losses and their log entries."""
        if not self.loss_names:  # a torchreid baseline: its own rule, averaged over heads
            loss = self.compute_loss(self.criterion, _float(logits), pids)
            first = logits[0] if isinstance(logits, (tuple, list)) else logits
            return loss, {'loss_id': loss.item(), 'acc': _tr.metrics.accuracy(first, pids)[0].item()}
        logits = _named(logits, self.loss_names, 'logits')
        total, summary = 0.0, {}
        for name, y in zip(self.loss_names, logits):
            ce = self.criterion(y.float(), pids)
            total = total + self.loss_weights.get(name, 1.0) * ce
            summary[f'loss_{name}'] = ce.item()
            summary[f'acc_{name}'] = _tr.metrics.accuracy(y, pids)[0].item()
        return total, summary

    def compute_losses(self, outputs, pids) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The loss of one step before regularisation; subclasses add their terms."""
        return self.identity_losses(outputs, pids)

    def forward_backward(self, data) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        imgs, pids = imgs.to(self.device, non_blocking=True), pids.to(self.device, non_blocking=True)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            outputs = self.model(imgs)
        loss, summary = self.compute_losses(outputs, pids)
        value = loss.item()
        if self.regularizer:  # reported here, minimised by the proximal step below
            reg_total, reg_values = self.regularizer.report()
            value += reg_total
            summary.update(reg_values)
        self.guard.check(value, f'epoch {self.epoch + 1}, step {self.batch_idx + 1}')
        stepped = self.precision.step(loss, self.optimizer)
        if self.regularizer and stepped:  # the proximal step follows an optimizer step
            summary.update(self.regularizer.proximal_step(self.optimizer))
        summary['loss'] = value
        return summary

    # ------------------------------------------------------------------------ training

    def run(self, save_dir: str = 'log', max_epoch: int = 0, start_epoch: int = 0,
            print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0,
            eval_freq: int = -1, test_only: bool = False, dist_metric: str = 'euclidean',
            normalize_feature: bool = False, visrank: bool = False, visrank_topk: int = 10,
            use_metric_cuhk03: bool = False, ranks=(1, 5, 10, 20),
            rerank: bool = False) -> TrainingResult:
        """torchreid's ``Engine.run``: its arguments, with what happens besides training done
        by the hooks (evaluations by :class:`~jlml_plugin.hooks.EvalHook`, checkpoints by
        :class:`~jlml_plugin.hooks.PeriodicCheckpoint`); returns the outcome, with the
        last evaluation's results if an ``EvalHook`` ran."""
        check_run_options(visrank, test_only)
        self.save_dir, self.eval_freq, self.start_eval = save_dir, eval_freq, start_eval
        self.test_kwargs = dict(dist_metric=dist_metric, normalize_feature=normalize_feature,
                                visrank=visrank, visrank_topk=visrank_topk, save_dir=save_dir,
                                use_metric_cuhk03=use_metric_cuhk03, ranks=list(ranks),
                                rerank=rerank)
        if test_only:
            return TrainingResult(self.test(**self.test_kwargs))
        time_start = time.time()
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self._call_hooks('before_train', save_dir)
        summary = {}
        if self.main:
            print(f'=> Start training (epochs {start_epoch + 1}-{max_epoch})')
        for self.epoch in range(start_epoch, max_epoch):
            summary = self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch,
                                 open_layers=open_layers)
        if self.main:
            print(f'Elapsed {datetime.timedelta(seconds=round(time.time() - time_start))}')
        self._call_hooks('after_train')
        evaluations = [h.results for h in self.hooks if isinstance(h, EvalHook)]
        return TrainingResult(evaluations[0] if evaluations else {}, summary,
                              self.throughput.images, self.throughput.seconds,
                              self.throughput.wall_seconds_before_resume)

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0,
              open_layers=None) -> Dict[str, float]:
        """One epoch; returns its mean losses and accuracies."""
        losses = _tr.utils.MetricMeter()
        self.print_freq = print_freq
        self.set_model_mode('train')
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers, model=self.net)
        sampler = getattr(self.train_loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):  # a distributed sampler reshuffles per epoch
            sampler.set_epoch(self.epoch)
        self.num_batches = len(self.train_loader)
        self._call_hooks('before_epoch')
        end = time.time()
        for self.batch_idx, data in enumerate(self.train_loader):
            losses.update(self.forward_backward(data))
            self._call_hooks('after_step', _means(losses), len(data['img']) * get_world_size(),
                             time.time() - end)
            end = time.time()
        summary = _means(losses)
        self.update_lr()
        self._call_hooks('after_epoch', summary)
        return summary

    def resume(self, path: str, checkpoint: Optional[Dict[str, Any]] = None) -> int:
        """Restores a checkpoint (weights, optimizer, scheduler, scaler, RNG states) from
        ``path``, or from ``checkpoint``, its contents already loaded, and hands it to the
        hooks (the throughput counters, the last Rank-1); returns the epoch to continue from."""
        checkpoint = resume(path, self.model, self.optimizer, self.scheduler,
                            self.precision.scaler, checkpoint)
        self._call_hooks('after_resume', checkpoint)
        return int(checkpoint['epoch'])

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False,
                   keep: int = 0) -> None:
        """torchreid's checkpoint plus what resuming needs, atomically, on rank 0 only; the
        newest ``keep`` are kept (0: all)."""
        if self.main:
            state = training_state(self.net, self.optimizer, self.scheduler, epoch, rank1,
                                   scaler=self.precision.state_dict(), meta=self.meta,
                                   counters=self.throughput.state_dict())
            path = save_checkpoint(state, os.path.join(save_dir, 'model'), keep)
            print(f'Checkpoint saved to "{path}"')

    # ----------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def test(self, dist_metric: str = 'euclidean', normalize_feature: bool = False,
             visrank: bool = False, visrank_topk: int = 10, save_dir: str = '',
             use_metric_cuhk03: bool = False, ranks=(1, 5, 10, 20),
             rerank: bool = False) -> Dict[str, RankResult]:
        """torchreid's ``test`` on every target, returning each target's whole result
        (torchreid's returns the last Rank-1), then the hooks' ``after_eval``. The model's
        ``test_views`` (JLML: each branch's half, both halves normalised) are scored beside
        its test feature. Rank 0 evaluates; other ranks wait."""
        self.set_model_mode('eval')
        results = {}
        for name, loaders in self.test_loader.items() if self.main else ():
            results[name], distmat = evaluate_target(
                name, loaders, self.extract_features, self.device, dist_metric,
                normalize_feature, rerank, ranks, use_metric_cuhk03, self.single_shot,
                views=getattr(self.net, 'test_views', dict)())
            if visrank:
                draw_ranked_lists(distmat, self.datamanager, name, save_dir, visrank_topk)
        self._call_hooks('after_eval', results)
        barrier()
        return results

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        """Test features in fp32, whatever ``amp`` trains with: reported metrics must not
        depend on the training precision."""
        if self.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        return self.net(input).float()


@register_engine('triplet')
class JLMLTripletEngine(JLMLEngine):
    """:class:`JLMLEngine` plus torchreid's batch-hard ``TripletLoss`` on each branch's
    feature: ``L = weight_x * sum_b w_b CE_b + weight_t * sum_b w_b T_b + regularisers``.

    Needs identity-balanced batches (``sampler.train_sampler RandomIdentitySampler``).
    """

    def __init__(self, datamanager, model, optimizer, margin: float = 0.3,
                 weight_t: float = 1.0, weight_x: float = 1.0, **kwargs) -> None:
        super().__init__(datamanager, model, optimizer, **kwargs)
        sampler = getattr(self.train_loader, 'sampler', None)
        check_triplet(isinstance(sampler, (_tr.data.sampler.RandomIdentitySampler,
                                           DistributedIdentitySampler)), weight_t, weight_x)
        self.weight_t, self.weight_x = weight_t, weight_x
        self.criterion_t = _tr.losses.TripletLoss(margin=margin)

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        check_triplet(cfg.sampler.train_sampler == 'RandomIdentitySampler',
                      cfg.loss.triplet.weight_t, cfg.loss.triplet.weight_x,
                      cfg.train.fixbase_epoch)

    @staticmethod
    def config_kwargs(cfg) -> Dict[str, Any]:
        return dict(JLMLEngine.config_kwargs(cfg), margin=cfg.loss.triplet.margin,
                    weight_t=cfg.loss.triplet.weight_t, weight_x=cfg.loss.triplet.weight_x)

    def compute_losses(self, outputs, pids) -> Tuple[torch.Tensor, Dict[str, float]]:
        logits, feats = outputs
        total, summary = 0.0, {}
        if self.weight_x > 0:
            loss_x, summary = self.identity_losses(logits, pids)
            total = self.weight_x * loss_x
        if self.weight_t > 0:
            if not self.loss_names:  # a torchreid baseline: its own rule
                loss_t = self.compute_loss(self.criterion_t, _float(feats), pids)
                total = total + self.weight_t * loss_t
                summary['loss_t'] = loss_t.item()
            else:
                for name, f in zip(self.loss_names, _named(feats, self.loss_names, 'features')):
                    loss_t = self.criterion_t(f.float(), pids)
                    total = total + self.weight_t * self.loss_weights.get(name, 1.0) * loss_t
                    summary[f'loss_t_{name}'] = loss_t.item()
        return total, summary


def check_run_options(visrank: bool, test_only: bool) -> None:
    """``run()``'s one rule of its own: torchreid draws ranked lists only in test-only runs."""
    if visrank and not test_only:
        raise ConfigError('test.visrank needs test.evaluate True (torchreid draws ranked '
                          'lists only in test-only runs)')


def check_loss_weights(weights: Dict[str, float]) -> None:
    """Each branch's identity-loss weight (``jlml.weight_global``/``weight_local``) >= 0."""
    for name, weight in weights.items():
        if weight < 0:
            raise ConfigError(f'jlml.weight_{name} must be >= 0, got {weight}')


def check_triplet(identity_balanced: bool, weight_t: float, weight_x: float,
                  fixbase_epoch: int = 0) -> None:
    """What :class:`JLMLTripletEngine` needs: identity-balanced batches (each holds
    positives), a loss to train, and a classifier when the base is frozen first."""
    if not identity_balanced:
        raise ConfigError('the triplet loss needs identity-balanced batches: set '
                          'sampler.train_sampler RandomIdentitySampler')
    if weight_t <= 0 and weight_x <= 0:
        raise ConfigError('loss.triplet.weight_t and weight_x are both 0: nothing to train')
    if weight_x == 0 and fixbase_epoch > 0:
        raise ConfigError('train.fixbase_epoch must be 0 when loss.triplet.weight_x is 0 '
                          '(there is no classifier to train alone)')


def _named(outputs, names: Tuple[str, ...], what: str) -> Tuple[torch.Tensor, ...]:
    """A model's per-loss outputs as a tuple in ``names`` order (one bare tensor for a
    single name), or a clear error when the model returns another number of them."""
    outputs = (outputs,) if torch.is_tensor(outputs) else tuple(outputs)
    if len(outputs) != len(names):
        raise ValueError(f'the model names {len(names)} losses {names} but returned '
                         f'{len(outputs)} {what}')
    return outputs


def _means(meter) -> Dict[str, float]:
    return {name: m.avg for name, m in meter.meters.items()}


def _float(logits):
    return tuple(y.float() for y in logits) if isinstance(logits, (tuple, list)) else logits.float()
