"""JLML's multi-loss training on torchreid's engine.

:class:`JLMLEngine` subclasses torchreid's ``ImageSoftmaxEngine``. Per step it computes

    L = sum_b w_b * CE_b(logits_b) + sum_t lambda_t * R_t

with one identity loss per branch (torchreid's label-smoothing ``CrossEntropyLoss``) and
the terms of a :class:`~jlml_plugin.regularizers.SparsityHook`. Every term is returned
and logged (``loss_global``, ``loss_local``, ``acc_global``, ``acc_local``,
``reg_global``, ``reg_local`` and the total ``loss``) to the console and TensorBoard.
Models that do not name their losses (torchreid's baselines) get torchreid's own rule:
one CE, averaged over a tuple of heads. :class:`JLMLTripletEngine` adds torchreid's
batch-hard ``TripletLoss`` per branch.

Beyond torchreid's engine it adds: AMP (bf16/fp16 autocast, GradScaler for fp16), a stop
with a clear error on a NaN/inf loss, atomic resumable checkpoints every epoch with RNG
state (torchreid's F1/F2 fixed: ``rank1`` is a float and ``scheduler=None`` works),
progress bars with ETA, the exact evaluator with mINP, and DistributedDataParallel
awareness (rank 0 logs, evaluates and saves).
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.nn import functional as F
from torch.utils.tensorboard import SummaryWriter

from . import _torchreid
from .checkpoint import rng_state, save_checkpoint
from .distributed import (DistributedIdentitySampler, barrier, get_world_size,
                          is_main_process, unwrap)
from .errors import ConfigError, NonFiniteLossError
from .metrics import RankResult, evaluate_rank
from .progress import Progress
from .regularizers import SparsityHook

__all__ = ['JLMLEngine', 'JLMLTripletEngine', 'AMP_MODES', 'MAX_SKIPPED_STEPS']

AMP_MODES = {'off': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
#: With fp16, this many non-finite losses in a row (each step skipped by GradScaler) stop
#: training; one alone is the scaler's routine overflow.
MAX_SKIPPED_STEPS = 20

_tr = _torchreid


class JLMLEngine(_tr.engine.ImageSoftmaxEngine):
    """Softmax multi-loss engine with a sparsity-regulariser hook.

    Args:
        datamanager, model, optimizer, scheduler, use_gpu, label_smooth: as torchreid's
            ``ImageSoftmaxEngine`` (``scheduler=None`` is fine).
        loss_weights: weight of each named identity loss (``{'global': w_g, 'local': w_l}``);
            a name not given weighs 1.
        regularizer: sparsity terms, reported every step and minimised by their proximal
            step after each optimizer step (None: none).
        amp: ``'off'``, ``'bf16'`` or ``'fp16'``.
        channels_last: feed images in NHWC memory format.
        checkpoint_freq: save a resumable checkpoint every N epochs (0: only when torchreid
            would, after evaluations and at the end).
        keep_checkpoints: how many of the newest checkpoints to keep (0: all).
        meta: saved in every checkpoint (model name and arguments, for export).
        single_shot: also report the single-gallery-shot CMC (torchreid's cuhk03 metric:
            one gallery image per identity, 10 draws) next to the standard one.
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu: bool = True,
                 label_smooth: bool = True, loss_weights: Optional[Dict[str, float]] = None,
                 regularizer: Optional[SparsityHook] = None, amp: str = 'off',
                 channels_last: bool = False, checkpoint_freq: int = 1,
                 keep_checkpoints: int = 2, meta: Optional[Dict[str, Any]] = None,
                 single_shot: bool = False) -> None:
        super().__init__(datamanager, model, optimizer, scheduler=scheduler, use_gpu=use_gpu,
                         label_smooth=label_smooth)
        if amp not in AMP_MODES:
            raise ConfigError(f'train.amp must be one of {list(AMP_MODES)}, got {amp!r}')
        self.device = next(model.parameters()).device
        self.net = unwrap(model)
        self.loss_names: Tuple[str, ...] = tuple(getattr(self.net, 'loss_names', ()))
        self.loss_weights = dict(loss_weights or {})
        self.regularizer = regularizer
        self.amp_dtype = AMP_MODES[amp]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp == 'fp16' else None
        self.nonfinite_steps = 0
        self.channels_last = channels_last
        self.checkpoint_freq = checkpoint_freq
        self.keep_checkpoints = keep_checkpoints
        self.meta = dict(meta or {})
        self.single_shot = single_shot
        self.main = is_main_process()
        self.results: Dict[str, RankResult] = {}
        self.last_rank1 = 0.0
        self.train_images = 0
        self.train_seconds = 0.0
        #: The last trained epoch's mean losses and accuracies (``acc_*`` in %).
        self.last_epoch_summary: Dict[str, float] = {}

    # -------------------------------------------------------------------------- losses

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def identity_losses(self, logits, pids) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted identity losses and their log entries."""
        named = isinstance(logits, (tuple, list)) and len(logits) == len(self.loss_names)
        if not named and len(self.loss_names) == 1 and torch.is_tensor(logits):
            logits, named = (logits,), True
        if not named:  # a torchreid baseline: its own rule, averaged over a tuple of heads
            loss = self.compute_loss(self.criterion, _float(logits), pids)
            acc = _tr.metrics.accuracy(logits[0] if isinstance(logits, (tuple, list))
                                       else logits, pids)[0]
            return loss, {'loss_id': loss.item(), 'acc': acc.item()}
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
        imgs = imgs.to(self.device, non_blocking=True)
        pids = pids.to(self.device, non_blocking=True)
        if self.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            outputs = self.model(imgs)
        loss, summary = self.compute_losses(outputs, pids)
        value = loss.item()
        if self.regularizer:  # reported here, minimised by the proximal step below
            with torch.no_grad():
                reg_total, reg_values = self.regularizer()
            value += reg_total.item()
            summary.update({name: v.item() for name, v in reg_values.items()})
        finite = math.isfinite(value)
        # fp16: GradScaler skips a step whose gradients overflow and lowers its scale, so a
        # non-finite loss there is routine; only a run of them means training diverged.
        self.nonfinite_steps = 0 if finite else self.nonfinite_steps + 1
        if not finite and (self.scaler is None or self.nonfinite_steps >= MAX_SKIPPED_STEPS):
            run = (f'{self.nonfinite_steps} steps in a row up to ' if self.scaler is not None
                   else '')
            raise NonFiniteLossError(
                f'the loss became {value} at {run}epoch {self.epoch + 1}, step '
                f'{self.batch_idx + 1}; training stopped and the last good checkpoint is kept '
                f'(try a lower train.lr{" or train.amp off" if self.amp_dtype is not None else ""})')
        self.optimizer.zero_grad(set_to_none=True)
        stepped = finite
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            stepped = self.scaler.get_scale() >= scale  # it backs off exactly when it skips
        else:
            loss.backward()
            self.optimizer.step()
        if self.regularizer and stepped:  # the proximal step follows an optimizer step
            self.regularizer.proximal_step(self.optimizer)
        summary['loss'] = value
        return summary

    # ------------------------------------------------------------------------ training

    def run(self, save_dir: str = 'log', max_epoch: int = 0, start_epoch: int = 0,
            print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0,
            eval_freq: int = -1, test_only: bool = False, dist_metric: str = 'euclidean',
            normalize_feature: bool = False, visrank: bool = False, visrank_topk: int = 10,
            use_metric_cuhk03: bool = False, ranks=(1, 5, 10, 20),
            rerank: bool = False) -> Dict[str, RankResult]:
        """torchreid's ``Engine.run`` (same arguments and schedule of evaluations), plus a
        checkpoint every ``checkpoint_freq`` epochs. Returns the last results per target."""
        if visrank and not test_only:
            raise ConfigError('test.visrank needs test.evaluate True (torchreid draws ranked '
                              'lists only in test-only runs)')
        test_kwargs = dict(dist_metric=dist_metric, normalize_feature=normalize_feature,
                           visrank=visrank, visrank_topk=visrank_topk, save_dir=save_dir,
                           use_metric_cuhk03=use_metric_cuhk03, ranks=list(ranks))
        if test_only:
            self._test(rerank=rerank, **test_kwargs)
            return self.results
        if self.writer is None and self.main:
            self.writer = SummaryWriter(log_dir=save_dir)
        time_start = time.time()
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        if self.main:
            print(f'=> Start training (epochs {start_epoch + 1}-{max_epoch})')
        for self.epoch in range(start_epoch, max_epoch):
            self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch,
                       open_layers=open_layers)
            last = self.epoch + 1 == max_epoch
            periodic = (self.epoch + 1 >= start_eval and eval_freq > 0
                        and (self.epoch + 1) % eval_freq == 0)
            if periodic or last:
                if self.main and last:
                    print('=> Final test')
                self._test(**test_kwargs)
            if periodic or last or (self.checkpoint_freq > 0
                                    and (self.epoch + 1) % self.checkpoint_freq == 0):
                self.save_model(self.epoch, self.last_rank1, save_dir)
        if start_epoch >= max_epoch > 0:  # resumed a finished run: just report it
            self._test(**test_kwargs)
        if self.main:
            print(f'Elapsed {datetime.timedelta(seconds=round(time.time() - time_start))}')
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return self.results

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> None:
        losses = _tr.utils.MetricMeter()
        batch_time = _tr.utils.AverageMeter()
        self.set_model_mode('train')
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers, model=self.net)
        sampler = getattr(self.train_loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(self.epoch)
        self.num_batches = len(self.train_loader)
        bar = Progress(self.num_batches, f'epoch {self.epoch + 1}/{self.max_epoch}',
                       every=print_freq, enabled=self.main, unit='batch')
        end = time.time()
        for self.batch_idx, data in enumerate(self.train_loader):
            summary = self.forward_backward(data)
            batch_time.update(time.time() - end)
            self.train_images += len(data['img']) * get_world_size()
            losses.update(summary)
            left = (self.num_batches - self.batch_idx - 1
                    + (self.max_epoch - self.epoch - 1) * self.num_batches)
            eta = datetime.timedelta(seconds=int(batch_time.avg * left))
            bar.update(1, f'{_short(losses)} lr {self.get_current_lr():.2e} total-eta {eta}')
            if self.writer is not None:
                n_iter = self.epoch * self.num_batches + self.batch_idx
                self.writer.add_scalar('Train/time', batch_time.avg, n_iter)
                for name, meter in losses.meters.items():
                    self.writer.add_scalar('Train/' + name, meter.avg, n_iter)
                self.writer.add_scalar('Train/lr', self.get_current_lr(), n_iter)
            end = time.time()
        bar.close()
        self.train_seconds += batch_time.sum
        self.last_epoch_summary = {name: meter.avg for name, meter in losses.meters.items()}
        if self.main:
            rate = self.num_batches * self.train_loader.batch_size * get_world_size() / batch_time.sum
            print(f'epoch {self.epoch + 1}/{self.max_epoch}: {_short(losses)} lr '
                  f'{self.get_current_lr():.2e} | {rate:.1f} img/s, '
                  f'{datetime.timedelta(seconds=int(batch_time.sum))}')
        self.update_lr()

    def restore_counters(self, checkpoint: Dict[str, Any]) -> None:
        """After a resume: the last Rank-1 and the throughput so far, as saved."""
        self.last_rank1 = float(checkpoint.get('rank1', 0.0))
        counters = checkpoint.get('counters') or {}
        self.train_images = int(counters.get('train_images', 0))
        self.train_seconds = float(counters.get('train_seconds', 0.0))

    @property
    def train_images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0

    # ---------------------------------------------------------------------- checkpoints

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> None:
        """torchreid's checkpoint, written atomically by rank 0 only, with a float rank1
        (F1), the state needed to resume exactly, and the throughput counters. Without a
        scheduler the key is left out, as torchreid's ``resume_from_checkpoint`` loads
        one whenever the key is there and it is given a scheduler (F2)."""
        if not self.main:
            return
        for name in self.get_model_names():
            sched = self._scheds[name]
            state = {
                'state_dict': unwrap(self._models[name]).state_dict(),
                'epoch': epoch + 1,
                'rank1': float(rank1),
                'optimizer': self._optims[name].state_dict(),
                'scaler': self.scaler.state_dict() if self.scaler is not None else None,
                'rng': rng_state(),
                'meta': self.meta,
                'counters': dict(train_images=self.train_images,
                                 train_seconds=self.train_seconds),
            }
            if sched is not None:
                state['scheduler'] = sched.state_dict()
            path = save_checkpoint(state, os.path.join(save_dir, name), self.keep_checkpoints)
            print(f'Checkpoint saved to "{path}"')

    # ----------------------------------------------------------------------- evaluation

    def _test(self, **kwargs) -> None:
        """Evaluates on rank 0 (with the unwrapped model) while other ranks wait."""
        if self.main:
            self.last_rank1 = float(self.test(**kwargs))
        barrier()

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        """Test features in fp32, whatever ``amp`` trains with: reported metrics must not
        depend on the training precision."""
        if self.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        return self.net(input).float()

    def _features(self, loader, what: str):
        feats, pids, camids = [], [], []
        bar = Progress(len(loader), f'extracting {what} features', every=max(len(loader) // 4, 1),
                       unit='batch')
        for data in loader:
            imgs, pid, camid = self.parse_data_for_eval(data)
            feats.append(self.extract_features(imgs.to(self.device, non_blocking=True)).cpu())
            pids.append(pid)
            camids.append(camid)
            bar.update()
        bar.close()
        return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()

    @torch.no_grad()
    def _evaluate(self, dataset_name: str = '', query_loader=None, gallery_loader=None,
                  dist_metric: str = 'euclidean', normalize_feature: bool = False,
                  visrank: bool = False, visrank_topk: int = 10, save_dir: str = '',
                  use_metric_cuhk03: bool = False, ranks: List[int] = (1, 5, 10, 20),
                  rerank: bool = False) -> Tuple[float, float]:
        qf, q_pids, q_camids = self._features(query_loader, 'query')
        gf, g_pids, g_camids = self._features(gallery_loader, 'gallery')
        if normalize_feature:
            qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
        distmat = _tr.metrics.compute_distance_matrix(qf, gf, dist_metric).numpy()
        if rerank:
            print('Applying person re-ranking ...')
            distmat = _tr.utils.re_ranking(
                distmat, _tr.metrics.compute_distance_matrix(qf, qf, dist_metric).numpy(),
                _tr.metrics.compute_distance_matrix(gf, gf, dist_metric).numpy())
        result = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                               max_rank=max(50, *ranks), use_metric_cuhk03=use_metric_cuhk03)
        if self.single_shot and not use_metric_cuhk03:
            single = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                                   use_metric_cuhk03=True)
            result.extra.update({f'single_shot_rank{r}': single.rank(r) for r in (1, 5, 10, 20)})
        self.results[dataset_name] = result
        print(f'** Results ({dataset_name}: {qf.size(0)} query x {gf.size(0)} gallery, '
              f'{qf.size(1)}-D features) **')
        print(f'mAP: {result.mAP:.1%}  mINP: {result.mINP:.1%}')
        print('CMC curve')
        for r in ranks:
            print(f'Rank-{r:<3}: {result.rank(r):.1%}')
        if 'single_shot_rank1' in result.extra:
            print('Single-shot (one gallery image per identity, 10 draws): ' + ', '.join(
                f'Rank-{r} {result.extra[f"single_shot_rank{r}"]:.1%}' for r in (1, 5, 10, 20)))
        if self.writer is not None:
            self.writer.add_scalar(f'Test/{dataset_name}/mINP', result.mINP, self.epoch)
        if visrank:
            _tr.utils.visualize_ranked_results(
                distmat, self.datamanager.fetch_test_loaders(dataset_name),
                self.datamanager.data_type, width=self.datamanager.width,
                height=self.datamanager.height,
                save_dir=os.path.join(save_dir, 'visrank_' + dataset_name), topk=visrank_topk)
        return result.rank(1), result.mAP


class JLMLTripletEngine(JLMLEngine):
    """:class:`JLMLEngine` plus torchreid's batch-hard ``TripletLoss`` on each branch's
    feature: ``L = weight_x * sum_b w_b CE_b + weight_t * sum_b w_b T_b + regularisers``.

    Needs identity-balanced batches (``sampler.train_sampler RandomIdentitySampler``).
    """

    def __init__(self, datamanager, model, optimizer, margin: float = 0.3,
                 weight_t: float = 1.0, weight_x: float = 1.0, **kwargs) -> None:
        super().__init__(datamanager, model, optimizer, **kwargs)
        sampler = getattr(self.train_loader, 'sampler', None)
        if not isinstance(sampler, (_tr.data.sampler.RandomIdentitySampler,
                                    DistributedIdentitySampler)):
            raise ConfigError('the triplet loss needs identity-balanced batches: set '
                              'sampler.train_sampler RandomIdentitySampler')
        if weight_t <= 0 and weight_x <= 0:
            raise ConfigError('loss.triplet.weight_t and weight_x are both 0: nothing to train')
        self.weight_t, self.weight_x = weight_t, weight_x
        self.criterion_t = _tr.losses.TripletLoss(margin=margin)

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
                feats = feats if isinstance(feats, (tuple, list)) else (feats,)
                for name, f in zip(self.loss_names, feats):
                    loss_t = self.criterion_t(f.float(), pids)
                    total = total + self.weight_t * self.loss_weights.get(name, 1.0) * loss_t
                    summary[f'loss_t_{name}'] = loss_t.item()
        return total, summary


def _float(logits):
    return tuple(y.float() for y in logits) if isinstance(logits, (tuple, list)) else logits.float()


def _short(meter) -> str:
    return ' '.join(f'{name} {m.avg:.3f}' for name, m in meter.meters.items())
