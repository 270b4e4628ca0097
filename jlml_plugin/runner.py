"""From a config to a finished run, the way torchreid's ``scripts/main.py`` does it.

:func:`validate` checks a whole config before any work starts (each rule lives beside the
code that reads its keys; it only calls them). :meth:`Trainer.train` then runs the
builders in order, each one step to read, test and override alone:
``build_datamanager`` (torchreid's), ``build_model`` (JLML models with the ``jlml`` keys,
any other through torchreid's ``build_model``), ``place_model`` (device, DDP, sparsity
terms), ``build_optimizer`` (torchreid's optimizer and scheduler), ``build_hooks`` and
``build_engine`` (the engine for ``loss.name``, which reads its own keys); then it
resumes and runs the engine. The ``jlml-train`` and
``jlml-leaderboard`` commands both come through here, so a baseline and JLML follow
exactly the same path.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml
from yacs.config import CfgNode as CN

from . import _torchreid
from .checkpoint import latest_readable_checkpoint
from .config import config_changes, flatten, get_cfg, load_config, trained_config
from .data import check_datasets
from .distributed import (DistInfo, barrier, distributed_train_loader, init_from_env,
                          is_main_process, launched_by_torchrun, per_rank_batch)
from .engine import ENGINES, JLMLEngine, TrainingResult
from .hooks import Hook, default_hooks
from .precision import check_amp, to_channels_last
from .errors import ConfigError
from . import models
from .models import MODELS, default_cfgs
from .models.jlml import ARCH_KEYS
from .regularizers import SparsityRegularizer, SparsityTerm, check_term
from ._files import atomic_write_text

__all__ = ['validate', 'Trainer', 'train', 'record_run', 'RunResult', 'model_kwargs',
           'environment']

_tr = _torchreid


def _use_gpu(cfg: CN) -> bool:
    """``use_gpu``, as torchreid reads it: only where a GPU is there."""
    return cfg.use_gpu and torch.cuda.is_available()


def _one_of(what: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f'unknown {what} {value!r}; choose one of: {", ".join(choices)}')


def validate(cfg: CN, check_data: bool = True) -> None:
    """Raises a one-line :class:`ConfigError` (or ``DataError``) for a config that
    cannot run, before anything is built. Each rule lives beside the code that reads its
    keys; this only calls them, and names the choices torchreid offers."""
    models.check_model(cfg.model.name)
    models.check_height(cfg.model.name, cfg.data.height, cfg.jlml.num_stripes)
    _one_of('loss.name', cfg.loss.name, sorted(ENGINES))
    ENGINES[cfg.loss.name].check_config(cfg)
    _one_of('data.type', cfg.data.type, ['image'])
    _one_of('sampler.train_sampler', cfg.sampler.train_sampler, _tr.available_samplers())
    _one_of('train.optim', cfg.train.optim, _tr.available_optimizers())
    _one_of('train.lr_scheduler', cfg.train.lr_scheduler, _tr.available_schedulers())
    _one_of('dist.backend', cfg.dist.backend, ['auto', 'nccl', 'gloo'])
    _one_of('test.dist_metric', cfg.test.dist_metric, ['euclidean', 'cosine'])
    check_optimizer(cfg)
    check_amp(cfg.train.amp, on_gpu=_use_gpu(cfg))
    for name in ('reg_global', 'reg_local'):
        check_term(f'jlml.{name}', cfg.jlml[name].kind, cfg.jlml[name].weight)
    if cfg.train.batch_size < 1 or cfg.test.batch_size < 1:
        raise ConfigError('train.batch_size and test.batch_size must be >= 1')
    if cfg.sampler.train_sampler == 'RandomIdentitySampler':
        per_rank_batch(cfg.train.batch_size, 1, cfg.sampler.num_instances)
    for key in ('load_weights', 'resume'):
        path = cfg.model[key]
        if path and not os.path.isfile(path):
            raise ConfigError(f'model.{key}: no file at {path}')
    if check_data:
        check_datasets(list(dict.fromkeys(cfg.data.sources + cfg.data.targets)), cfg.data.root,
                       cfg.data.split_id)


def model_kwargs(cfg: CN) -> Dict[str, Any]:
    """The ``jlml`` keys the config's JLML builder takes (``build_model`` cannot pass
    them); empty for other models."""
    if cfg.model.name not in MODELS:
        return {}
    j = cfg.jlml
    kwargs = dict(num_stripes=j.num_stripes, feat_dim=j.feat_dim, dropout=j.dropout,
                  pre_relu_feature=j.pre_relu_feature, normalize_branches=j.normalize_branches,
                  feat_init_std=j.feat_init_std)
    if default_cfgs[cfg.model.name]['arch_from_config']:
        kwargs.update({key: list(j[key]) if isinstance(j[key], (list, tuple)) else j[key]
                       for key in ARCH_KEYS})
    return kwargs


@dataclass
class RunResult:
    """What :func:`train` returns: the engine's result and what only the runner knows."""
    training: TrainingResult
    #: The whole run's, from building the data to the last evaluation, resumes included.
    wall_seconds: float
    num_params: int
    flops: int

    def summary(self, cfg: CN) -> Dict[str, Any]:
        """The run's cost, for a results file: epochs, training speed and time, wall time,
        size, and when it finished."""
        return dict(epochs=cfg.train.max_epoch,
                    train_images_per_s=self.training.train_images_per_second,
                    train_seconds=self.training.train_seconds, wall_seconds=self.wall_seconds,
                    params=self.num_params, gflops=self.flops / 1e9,
                    finished_at=time.strftime('%Y-%m-%dT%H:%M:%S'))


def record_run(cfg: CN) -> None:
    """Writes what makes the run reproducible into ``save_dir``, as detectron2's
    ``default_setup`` does: ``config.yaml``, the resolved config (``jlml-train
    --config-file <it>`` runs it again), and ``environment.json`` (versions, device)."""
    os.makedirs(cfg.data.save_dir, exist_ok=True)
    atomic_write_text(os.path.join(cfg.data.save_dir, 'config.yaml'), cfg.dump())
    atomic_write_text(os.path.join(cfg.data.save_dir, 'environment.json'),
                      json.dumps(environment(), indent=1))


def use_deterministic_kernels() -> None:
    """Deterministic kernels, in a way that also runs on CUDA: cuBLAS needs a fixed
    workspace (set before CUDA starts), cuDNN must not pick kernels by timing, and the
    few ops without a deterministic CUDA kernel (the backward of adaptive average
    pooling) warn instead of raising. On the CPU every op JLML uses is deterministic."""
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def check_resumable(cfg: CN) -> None:
    """Refuses to resume from ``cfg.data.save_dir`` when the ``config.yaml`` that its run
    saved there trains something other than ``cfg`` does."""
    saved_path = os.path.join(cfg.data.save_dir, 'config.yaml')
    if not os.path.isfile(saved_path):
        return
    try:
        saved = trained_config(load_config(saved_path, base=get_cfg()))
    except (KeyError, ValueError, yaml.YAMLError) as exc:  # a key this version lacks, bad YAML
        raise ConfigError(f'cannot resume in {cfg.data.save_dir}: its config.yaml does not load '
                          f'({exc}); start the run in a new data.save_dir') from exc
    changes = config_changes(saved, trained_config(cfg))
    if changes:
        raise ConfigError(f'cannot resume in {cfg.data.save_dir}: its checkpoint was trained '
                          f'with another config ({"; ".join(changes[:3])}'
                          f'{"; ..." if len(changes) > 3 else ""}); resume with the config it '
                          f'saved, or start in a new data.save_dir')


def _resume_from(cfg: CN, resume_latest: bool) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """The checkpoint to resume from: ``model.resume`` as named (loaded by the engine), or
    with ``resume_latest`` the newest readable one in ``save_dir`` with its contents."""
    if cfg.model.resume:
        return cfg.model.resume, None
    if resume_latest:
        return latest_readable_checkpoint(cfg.data.save_dir) or (None, None)
    return None, None


class Trainer:
    """From a config to a finished run, as detectron2's ``DefaultTrainer``: :meth:`train`
    calls the builders in order, and each is a classmethod that a subclass may override
    alone (a new data manager, model, optimizer, engine or hook list) without copying
    :meth:`train`::

        class MyTrainer(Trainer):
            @classmethod
            def build_hooks(cls, cfg):
                return super().build_hooks(cfg) + [MyHook()]

        MyTrainer.train(cfg)
    """

    #: The engine for each ``loss.name`` (each reads its own keys: ``from_config``).
    engines = ENGINES

    @classmethod
    def build_datamanager(cls, cfg: CN, main: bool = True, distributed: bool = False):
        """torchreid's ``ImageDataManager``; under DDP its train loader is split across
        ranks. Rank 0 builds first (synthreid draws its images on first use) while the
        others wait."""
        if main:
            datamanager = _tr.data.ImageDataManager(**imagedata_kwargs(cfg))
        barrier()
        if not main:
            datamanager = _tr.data.ImageDataManager(**imagedata_kwargs(cfg))
        if distributed:
            if cfg.train.fixbase_epoch > 0:
                raise ConfigError('train.fixbase_epoch is not supported under DDP (frozen '
                                  'layers change the set of gradients DDP reduces)')
            datamanager.train_loader = distributed_train_loader(
                datamanager.train_loader, cfg.sampler.train_sampler, cfg.train.batch_size,
                cfg.sampler.num_instances, cfg.train.seed)
        return datamanager

    @classmethod
    def build_model(cls, cfg: CN, num_classes: int) -> torch.nn.Module:
        """A JLML model with the config's ``jlml`` keys, or any torchreid model by name."""
        name = cfg.model.name
        try:
            return models.build(name, num_classes, loss=cfg.loss.name,
                                pretrained=cfg.model.pretrained, use_gpu=cfg.use_gpu,
                                **model_kwargs(cfg))
        except OSError as exc:  # URLError, gdown/requests connection errors
            if not cfg.model.pretrained:
                raise
            raise ConfigError(f'{name}: could not fetch its ImageNet weights '
                              f'({type(exc).__name__}); put them in '
                              f'{torch.hub.get_dir()}/checkpoints or set model.pretrained '
                              f'False') from exc

    @classmethod
    def build_regularizer(cls, cfg: CN, model: torch.nn.Module) -> Optional[SparsityRegularizer]:
        """The ``jlml.reg_*`` terms on ``model``; on a baseline only where ``param`` is set."""
        defaults = getattr(model, 'sparsity_params', dict)()
        stripes = getattr(model, 'num_stripes', 1)
        terms = []
        for name in ('reg_global', 'reg_local'):
            c = cfg.jlml[name]
            param = c.param or defaults.get(name)
            if not param or c.weight == 0:
                continue
            groups = c.get('groups', 0) or (stripes if name == 'reg_local' else 1)
            terms.append(SparsityTerm(name, param, c.kind, c.weight, groups))
        regularizer = SparsityRegularizer(model, terms)
        return regularizer if regularizer else None

    @classmethod
    def place_model(cls, cfg: CN, model: torch.nn.Module, device: torch.device,
                    distributed: bool) -> Tuple[torch.nn.Module, Optional[SparsityRegularizer]]:
        """The model on its device (SyncBN, channels_last, DDP or DataParallel as
        configured) and its sparsity terms, which name the parameters of the unwrapped
        model."""
        if cfg.dist.sync_bn and distributed:
            if device.type != 'cuda':
                raise ConfigError('dist.sync_bn needs GPUs (NCCL); turn it off on the CPU')
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device)
        if cfg.train.channels_last:
            model = to_channels_last(model)
        regularizer = cls.build_regularizer(cfg, model)
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == 'cuda' else None)
        elif _use_gpu(cfg) and torch.cuda.device_count() > 1:
            model = torch.nn.DataParallel(model)
        return model, regularizer

    @classmethod
    def build_optimizer(cls, cfg: CN, model: torch.nn.Module,
                        regularizer: Optional[SparsityRegularizer], distributed: bool = False):
        """torchreid's optimizer and lr scheduler; under DDP with ``dist.lr_reference_batch``
        the lr scales with the global batch."""
        opt_kwargs = optimizer_kwargs(cfg)
        if distributed and cfg.dist.lr_reference_batch > 0:
            opt_kwargs['lr'] = cfg.train.lr * cfg.train.batch_size / cfg.dist.lr_reference_batch
        optimizer = _tr.optim.build_optimizer(model, **opt_kwargs)
        if regularizer:  # the penalised layers' regulariser is their term, not weight decay
            regularizer.own_weight_decay(optimizer)
        return optimizer, _tr.optim.build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))

    @classmethod
    def build_hooks(cls, cfg: CN) -> List[Hook]:
        """The loop's hooks (progress, TensorBoard, evaluation, checkpoints), the checkpoint
        cadence and how many are kept from ``train.checkpoint_freq`` and
        ``train.keep_checkpoints``."""
        return default_hooks(is_main_process(), cfg.train.checkpoint_freq,
                             cfg.train.keep_checkpoints)

    @classmethod
    def build_engine(cls, cfg: CN, datamanager, model: torch.nn.Module,
                     regularizer: Optional[SparsityRegularizer], distributed: bool = False) -> JLMLEngine:
        """The engine for ``loss.name`` with its optimizer, scheduler and hooks, and the
        checkpoint metadata that rebuilds the model later."""
        optimizer, scheduler = cls.build_optimizer(cfg, model, regularizer, distributed)
        meta = dict(model_name=cfg.model.name, num_classes=datamanager.num_train_pids,
                    loss=cfg.loss.name, input_size=[3, cfg.data.height, cfg.data.width],
                    mean=list(cfg.data.norm_mean), std=list(cfg.data.norm_std),
                    model_kwargs=model_kwargs(cfg),
                    sparsity=[asdict(term) for term, _ in regularizer.terms] if regularizer
                    else [])
        return cls.engines[cfg.loss.name].from_config(
            cfg, datamanager, model, optimizer, scheduler=scheduler, regularizer=regularizer,
            meta=meta, hooks=cls.build_hooks(cfg))

    @classmethod
    def train(cls, cfg: CN, resume_latest: bool = False,
              dist_info: Optional[DistInfo] = None) -> RunResult:
        """Builds everything from ``cfg`` and runs it (training, or ``test.evaluate`` only)."""
        wall_start = time.time()
        distributed = dist_info is not None or launched_by_torchrun()
        if distributed and dist_info is None:
            dist_info = init_from_env(cfg.dist.backend, cfg.use_gpu)
        main = is_main_process()
        path, checkpoint = _resume_from(cfg, resume_latest)
        if main:
            if path and not cfg.model.resume:
                check_resumable(cfg)
            record_run(cfg)
        _tr.utils.set_random_seed(cfg.train.seed)
        if cfg.train.deterministic:
            use_deterministic_kernels()

        datamanager = cls.build_datamanager(cfg, main, distributed)
        model = cls.build_model(cfg, datamanager.num_train_pids)
        num_params, flops = _tr.utils.compute_model_complexity(
            model, (1, 3, cfg.data.height, cfg.data.width))
        if main:
            print(f'Model {cfg.model.name}: {num_params:,} params, {flops:,} FLOPs '
                  f'at {cfg.data.height}x{cfg.data.width}')
        for layer in cfg.train.open_layers if cfg.train.fixbase_epoch > 0 else ():
            if not hasattr(model, layer):
                heads = [n for n, _ in model.named_children() if 'classifier' in n]
                raise ConfigError(f'train.open_layers names {layer!r}, which {cfg.model.name} '
                                  f'lacks; its heads are {heads}')
        if cfg.model.load_weights:
            _tr.utils.load_pretrained_weights(model, cfg.model.load_weights)
        device = (dist_info.device if dist_info
                  else torch.device('cuda' if _use_gpu(cfg) else 'cpu'))
        model, regularizer = cls.place_model(cfg, model, device, distributed)
        engine = cls.build_engine(cfg, datamanager, model, regularizer, distributed)

        run_kwargs = engine.run_kwargs(cfg)
        if path:
            run_kwargs['start_epoch'] = engine.resume(path, checkpoint)
            if main:
                print(f'Resumed from {path}: continuing at epoch {run_kwargs["start_epoch"] + 1}')
        training = engine.run(**run_kwargs)
        return RunResult(training, training.wall_seconds_before_resume + time.time() - wall_start,
                         num_params, flops)


#: The default trainer's: what the commands and the leaderboard run.
train = Trainer.train


# ------------------------------------------------- the config as torchreid's arguments


def imagedata_kwargs(cfg: CN) -> Dict[str, Any]:
    """Arguments of torchreid's ``ImageDataManager``, as torchreid's main.py maps them."""
    return dict(
        root=cfg.data.root, sources=cfg.data.sources, targets=cfg.data.targets,
        height=cfg.data.height, width=cfg.data.width, transforms=cfg.data.transforms,
        k_tfm=cfg.data.k_tfm, norm_mean=cfg.data.norm_mean, norm_std=cfg.data.norm_std,
        use_gpu=cfg.use_gpu, split_id=cfg.data.split_id, combineall=cfg.data.combineall,
        load_train_targets=cfg.data.load_train_targets,
        batch_size_train=cfg.train.batch_size, batch_size_test=cfg.test.batch_size,
        workers=cfg.data.workers, num_instances=cfg.sampler.num_instances,
        num_cams=cfg.sampler.num_cams, num_datasets=cfg.sampler.num_datasets,
        train_sampler=cfg.sampler.train_sampler, train_sampler_t=cfg.sampler.train_sampler_t,
        cuhk03_labeled=cfg.cuhk03.labeled_images, cuhk03_classic_split=cfg.cuhk03.classic_split,
        market1501_500k=cfg.market1501.use_500k_distractors)


def optimizer_kwargs(cfg: CN) -> Dict[str, Any]:
    return dict(
        optim=cfg.train.optim, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
        momentum=cfg.sgd.momentum, sgd_dampening=cfg.sgd.dampening,
        sgd_nesterov=cfg.sgd.nesterov, rmsprop_alpha=cfg.rmsprop.alpha,
        adam_beta1=cfg.adam.beta1, adam_beta2=cfg.adam.beta2, staged_lr=cfg.train.staged_lr,
        new_layers=cfg.train.new_layers, base_lr_mult=cfg.train.base_lr_mult)


#: The optimizer values torch would refuse only once training starts, or that would train
#: nothing: each key with the range it must lie in (a NaN lies in none).
OPTIMIZER_RANGES = (
    ('train.lr', lambda v: v > 0, '> 0'),
    ('train.base_lr_mult', lambda v: v > 0, '> 0'),
    ('train.weight_decay', lambda v: v >= 0, '>= 0'),
    ('sgd.momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('sgd.dampening', lambda v: 0 <= v <= 1, 'in [0, 1]'),
    ('adam.beta1', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('adam.beta2', lambda v: 0 <= v < 1, 'in [0, 1)'),
    ('rmsprop.alpha', lambda v: 0 <= v < 1, 'in [0, 1)'),
)


def check_optimizer(cfg: CN) -> None:
    """Raises a one-line ConfigError for the first optimizer value out of its range."""
    values = flatten(cfg)
    for key, holds, expected in OPTIMIZER_RANGES:
        if not holds(values[key]):
            raise ConfigError(f'{key} must be {expected}, got {values[key]!r}')


def lr_scheduler_kwargs(cfg: CN) -> Dict[str, Any]:
    return dict(lr_scheduler=cfg.train.lr_scheduler, stepsize=cfg.train.stepsize,
                gamma=cfg.train.gamma, max_epoch=cfg.train.max_epoch)


def environment() -> Dict[str, Any]:
    """What produced the numbers: versions, device, threads."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = platform.processor() or platform.machine()
        try:
            with open('/proc/cpuinfo') as f:
                names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
            if names:
                device = f'{names[0]} ({len(names)} logical CPUs)'
        except OSError:
            pass
    return dict(torch=torch.__version__, torchreid=_torchreid.describe(),
                python=platform.python_version(), numpy=np.__version__, device=device,
                torch_threads=torch.get_num_threads(), platform=platform.platform())
