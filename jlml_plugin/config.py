"""Configs: torchreid's ``scripts/default_config.py`` schema, plus a commented ``jlml`` section.

:func:`get_default_config` mirrors torchreid's schema key for key and default for
default, so torchreid's stock YAML files load unchanged (its ``scripts/`` ship in no
package, hence the copy of the schema, not of the code). :func:`add_jlml_config` adds
the plugin's keys the detectron2 way, without touching the base schema.
:class:`JLMLConfig` is the yacs ``CfgNode`` they live in: its ``merge_from_file`` follows
``_BASE_`` and its merges fail with one line; :func:`load_config` uses both.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import os
from importlib import resources
from typing import Any, Dict, List, Optional

import torch
import yaml
from yacs.config import CfgNode as CN

from .errors import ConfigError
from .models.registry import MODELS
from .regularizers import LAMBDA_GLOBAL, LAMBDA_LOCAL

__all__ = ['JLMLConfig', 'get_default_config', 'add_jlml_config', 'get_cfg', 'shipped_config',
           'load_config', 'merge_values', 'flatten', 'config_chain', 'trained_config',
           'config_changes']


class JLMLConfig(CN):
    """A yacs ``CfgNode`` whose ``merge_from_file`` follows ``_BASE_`` (detectron2's and
    fast-reid's convention: a base path is relative to the file naming it). Every merge,
    of a file, a mapping or ``KEY VALUE`` pairs, is yacs's own ``merge_from_list``, after
    a pre-pass for two leniencies (:func:`_lenient`), and fails with one line that names
    the key, where it came from and what was expected."""

    def merge_from_file(self, cfg_filename: str) -> None:
        for path, values in config_chain(cfg_filename):
            self.merge_from_dict(values, f'in {path}')

    def merge_from_dict(self, values: Dict[str, Any], where: str) -> None:
        """A nested mapping of values, such as a YAML file's or a leaderboard protocol's."""
        self.merge_from_list([item for pair in flatten(values).items() for item in pair], where)

    def merge_from_list(self, cfg_list: list, where: str = 'on the command line') -> None:
        opts = list(cfg_list)
        if len(opts) % 2:
            raise ConfigError(f'overrides come in KEY VALUE pairs; {opts[-1]!r} has no value')
        known = flatten(self)
        for key, value in zip(opts[::2], opts[1::2]):
            value = _lenient(value, known.get(key))
            try:
                super().merge_from_list([key, value])
            except (AssertionError, TypeError):  # yacs: "Non-existent key", or a leaf's child
                close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
                hint = f'; did you mean {" or ".join(close)}?' if close else ''
                raise ConfigError(f'unknown config key {key!r} {where}{hint}') from None
            except ValueError:  # yacs: "Type mismatch"
                expected = ('a list' if isinstance(known[key], (list, tuple))
                            else type(known[key]).__name__)
                raise ConfigError(f'{key} expects {expected} (like {known[key]!r}), got '
                                  f'{value!r} {where}') from None


def _lenient(value: Any, default: Any) -> Any:
    """The leniencies over yacs's types: an int where a float is expected (``train.lr 1``)
    and a single string where a list is (``data.sources market1501``, as torchreid's ``-s``
    gives it); text that is no Python literal is read as YAML reads it (``true``, ``[a, b]``)."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            with contextlib.suppress(yaml.YAMLError):
                value = yaml.safe_load(value)
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, (list, tuple)) and isinstance(value, str):
        return [value]
    return value


def get_default_config() -> JLMLConfig:
    """torchreid's default config (``scripts/default_config.py``), key for key, as a
    :class:`JLMLConfig`."""
    cfg = JLMLConfig()
    cfg.use_gpu = torch.cuda.is_available()  # torchreid's main.py adds this key at run time

    cfg.model = CN()
    cfg.model.name = 'resnet50'
    cfg.model.pretrained = True
    cfg.model.load_weights = ''
    cfg.model.resume = ''

    cfg.data = CN()
    cfg.data.type = 'image'
    cfg.data.root = 'reid-data'
    cfg.data.sources = ['market1501']
    cfg.data.targets = ['market1501']
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ['random_flip']
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = 'log'
    cfg.data.load_train_targets = False

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False

    cfg.sampler = CN()
    cfg.sampler.train_sampler = 'RandomSampler'
    cfg.sampler.train_sampler_t = 'RandomSampler'
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.video = CN()
    cfg.video.seq_len = 15
    cfg.video.sample_method = 'evenly'
    cfg.video.pooling_method = 'avg'

    cfg.train = CN()
    cfg.train.optim = 'adam'
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ['classifier']
    cfg.train.staged_lr = False
    cfg.train.new_layers = ['classifier']
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = 'single_step'
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = 'softmax'
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.
    cfg.loss.triplet.weight_x = 0.

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = 'euclidean'
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    return cfg


def add_jlml_config(cfg: CN) -> CN:
    """Adds the plugin's keys; every default reproduces the documented JLML setup."""
    # --- the JLML network (read by JLML models only; `build_model` cannot pass them) ---
    cfg.jlml = CN()
    cfg.jlml.num_stripes = 4        # local-branch stripes m; the input height must split into them
    cfg.jlml.feat_dim = 512         # feature size of each branch; the test feature joins both
    cfg.jlml.dropout = 0.5          # dropout between each feature and its classifier (cuhk01_val)
    cfg.jlml.pre_relu_feature = True    # match (and triplet-train) the feature before its ReLU (cuhk01_val)
    cfg.jlml.normalize_branches = False  # L2-normalise each branch's test feature before joining
    cfg.jlml.feat_init_std = 0.0    # std of the feature layers' init; 0 = He fan-out (a control at lambda 0)
    cfg.jlml.stem_width = 64        # channels of the shared low-level conv layer
    cfg.jlml.shared_widths = []     # bottleneck widths of residual stages shared by both branches
    cfg.jlml.shared_depths = []     # ... and their block counts
    cfg.jlml.global_widths = [32, 64, 128, 256]  # bottleneck widths of the global stages
    cfg.jlml.local_widths = [16, 32, 64, 128]    # ... of each stripe stream's stages
    cfg.jlml.depths = [2, 3, 4, 3]  # blocks per branch stage (2+3+4+3 = 12: JLML-ResNet39)
    cfg.jlml.strides = [1, 2, 2, 1]  # first-block stride per branch stage
    # --- the multi-loss objective: w_g CE_g + w_l CE_l + lambda_g R_g + lambda_l R_l ---
    cfg.jlml.weight_global = 1.0    # w_g, weight of the global branch's identity loss
    cfg.jlml.weight_local = 1.0     # w_l, weight of the local branch's identity loss
    cfg.jlml.reg_global = CN()      # R_g: structured sparsity on the global feature layer
    cfg.jlml.reg_global.kind = 'group_lasso'            # L2,1 over input columns (controls: l1, ridge)
    cfg.jlml.reg_global.weight = LAMBDA_GLOBAL          # lambda_g = 1e-2 (cuhk01_tune; 0 = off)
    cfg.jlml.reg_global.param = ''  # '' = the model's global feature layer; any named
    #                                 parameter works, e.g. 'fc.0.weight' on osnet
    cfg.jlml.reg_local = CN()       # R_l: structured sparsity on the local feature layer
    cfg.jlml.reg_local.kind = 'exclusive_group_lasso'   # L1,2, one group per stripe (controls: l1, ridge)
    cfg.jlml.reg_local.weight = LAMBDA_LOCAL            # lambda_l = 1e-4 (cuhk01_tune; 0 = off)
    cfg.jlml.reg_local.param = ''   # '' = the model's local feature layer
    cfg.jlml.reg_local.groups = 0   # column groups; 0 = num_stripes on JLML models, else 1

    # --- training extras the plugin adds to torchreid's engine ---
    cfg.train.amp = 'off'           # 'off', 'bf16' or 'fp16' autocast (+ GradScaler for fp16)
    cfg.train.channels_last = False  # NHWC memory format (faster convs on CPU and GPU)
    cfg.train.checkpoint_freq = 1   # save a resumable checkpoint every N epochs (0 = only at evals/end)
    cfg.train.keep_checkpoints = 2  # keep the newest N checkpoints (0 = all)
    cfg.train.deterministic = False  # deterministic kernels (slower; for exact resume checks)
    cfg.test.single_shot = False    # also report the single-gallery-shot CMC (cuhk03 metric)

    # --- torchrun / DistributedDataParallel; read only when WORLD_SIZE > 1 ---
    cfg.dist = CN()
    cfg.dist.backend = 'auto'       # 'auto' (nccl on GPU, else gloo), 'nccl' or 'gloo'
    cfg.dist.sync_bn = False        # convert BatchNorm to SyncBatchNorm (GPU only)
    cfg.dist.lr_reference_batch = 0  # linear LR scaling: lr x batch_size / this (0 = off);
    #                                  train.batch_size is the global batch, split across ranks
    return cfg


def shipped_config(relative: str) -> str:
    """The path of a config that ships with the plugin, e.g. ``'leaderboard/cuhk01.yaml'``:
    ``configs/`` beside the package in a source tree (also on ``PYTHONPATH`` alone, as on
    the GPU machine), ``jlml_plugin.configs`` once installed."""
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'configs', relative)
    if os.path.isfile(source):
        return source
    return str(resources.files('jlml_plugin.configs').joinpath(*relative.split('/')))


def get_cfg() -> JLMLConfig:
    """torchreid's default config with the plugin's keys added."""
    return add_jlml_config(get_default_config())


# ----------------------------------------------------------------------------- merging


#: Keys that say where and how a run executes, not what it trains: where the data and the
#: run live, how images are loaded, the device, the log cadence and what is evaluated.
#: A checkpoint or record may be reused across them; any other key makes another experiment.
EXECUTION_KEYS = ('data.root', 'data.save_dir', 'data.workers', 'model.resume', 'use_gpu',
                  'train.print_freq', 'test.')


def trained_config(cfg: CN) -> Dict[str, Any]:
    """The flat keys of ``cfg`` that decide what a run trains: all but ``EXECUTION_KEYS``,
    and the ``jlml`` keys only for the plugin's models (the only ones they shape), so that
    a new JLML default leaves a baseline's records standing."""
    ignored = EXECUTION_KEYS + (() if cfg.model.name in MODELS else ('jlml.',))
    return {k: v for k, v in flatten(cfg).items() if not k.startswith(ignored)}


def config_changes(before: Dict[str, Any], after: Dict[str, Any]) -> List[str]:
    """``'key X before, Y now'`` for each key of two :func:`trained_config` results whose
    value differs. A key only one side has is taken as unchanged: keys added later keep the
    behaviour they were added with."""
    return [f'{k} {before[k]!r} before, {v!r} now' for k, v in after.items()
            if k in before and _as_list(before[k]) != _as_list(v)]


def _as_list(value: Any) -> Any:
    """Lists and tuples compare equal (a config saved as JSON or YAML comes back as lists)."""
    return [_as_list(v) for v in value] if isinstance(value, (list, tuple)) else value


def merge_values(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``update`` over ``base`` as plain nested mappings, leaf by leaf (``section.key``):
    what ``update`` sets wins and the rest is kept, as in a config merge. The leaderboard
    merges its ``protocol`` fragments across ``_BASE_`` files with it."""
    out: Dict[str, Any] = {}
    for key, value in {**flatten(base), **flatten(update)}.items():
        node = out
        *parents, leaf = key.split('.')
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def flatten(values: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """A nested mapping (a config node too) as ``{'section.key': value}`` leaves."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + str(key) + '.'))
        else:
            out[prefix + str(key)] = value
    return out


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'cannot parse {path}: {str(exc).splitlines()[0]}') from exc
    if not isinstance(values, dict):
        raise ConfigError(f'{path} must hold a mapping of config sections')
    return values


def config_chain(path: str, seen: tuple = ()) -> List[tuple]:
    """``(path, values)`` of ``path`` and the files its ``_BASE_`` keys name, base first
    (detectron2's convention; a base path is relative to the file naming it)."""
    if path in seen:
        raise ConfigError(f'{path} includes itself through _BASE_')
    values = _read_yaml(path)
    base = values.pop('_BASE_', None)
    chain = [(path, values)]
    if base:
        chain = config_chain(os.path.join(os.path.dirname(path), base), seen + (path,)) + chain
    return chain


def load_config(config_file: Optional[str] = None, opts: Optional[List[str]] = None,
                base: Optional[JLMLConfig] = None) -> JLMLConfig:
    """``base`` (default :func:`get_cfg`) merged with a YAML file (and the files its
    ``_BASE_`` names), then ``KEY VALUE`` pairs."""
    cfg = base if base is not None else get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts or [])
    return cfg
