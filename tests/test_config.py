"""The config schema, merging rules, and every shipped config."""
import glob
import os

import pytest

from jlml_plugin.config import (JLMLConfig, flatten, get_cfg, get_default_config, load_config,
                                trained_config)
from jlml_plugin.errors import ConfigError
from jlml_plugin.tools.leaderboard_spec import load_leaderboard, plan_runs
from jlml_plugin.runner import validate
from jlml_plugin.cli.train import split_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# torchreid's scripts/default_config.py (upstream f8cd150), key by key, with the
# defaults a stock YAML relies on.
TORCHREID_DEFAULTS = {
    'model.name': 'resnet50', 'model.pretrained': True, 'model.load_weights': '',
    'model.resume': '', 'data.type': 'image', 'data.root': 'reid-data',
    'data.sources': ['market1501'], 'data.targets': ['market1501'], 'data.workers': 4,
    'data.split_id': 0, 'data.height': 256, 'data.width': 128, 'data.combineall': False,
    'data.transforms': ['random_flip'], 'data.k_tfm': 1,
    'data.norm_mean': [0.485, 0.456, 0.406], 'data.norm_std': [0.229, 0.224, 0.225],
    'data.save_dir': 'log', 'data.load_train_targets': False,
    'market1501.use_500k_distractors': False, 'cuhk03.labeled_images': False,
    'cuhk03.classic_split': False, 'cuhk03.use_metric_cuhk03': False,
    'sampler.train_sampler': 'RandomSampler', 'sampler.train_sampler_t': 'RandomSampler',
    'sampler.num_instances': 4, 'sampler.num_cams': 1, 'sampler.num_datasets': 1,
    'video.seq_len': 15, 'video.sample_method': 'evenly', 'video.pooling_method': 'avg',
    'train.optim': 'adam', 'train.lr': 0.0003, 'train.weight_decay': 5e-4,
    'train.max_epoch': 60, 'train.start_epoch': 0, 'train.batch_size': 32,
    'train.fixbase_epoch': 0, 'train.open_layers': ['classifier'], 'train.staged_lr': False,
    'train.new_layers': ['classifier'], 'train.base_lr_mult': 0.1,
    'train.lr_scheduler': 'single_step', 'train.stepsize': [20], 'train.gamma': 0.1,
    'train.print_freq': 20, 'train.seed': 1, 'sgd.momentum': 0.9, 'sgd.dampening': 0.,
    'sgd.nesterov': False, 'rmsprop.alpha': 0.99, 'adam.beta1': 0.9, 'adam.beta2': 0.999,
    'loss.name': 'softmax', 'loss.softmax.label_smooth': True, 'loss.triplet.margin': 0.3,
    'loss.triplet.weight_t': 1., 'loss.triplet.weight_x': 0., 'test.batch_size': 100,
    'test.dist_metric': 'euclidean', 'test.normalize_feature': False,
    'test.ranks': [1, 5, 10, 20], 'test.evaluate': False, 'test.eval_freq': -1,
    'test.start_eval': 0, 'test.rerank': False, 'test.visrank': False, 'test.visrank_topk': 10,
}


def test_default_config_is_torchreids_schema():
    keys = flatten(get_default_config())
    assert set(keys) - {'use_gpu'} == set(TORCHREID_DEFAULTS)
    for key, value in TORCHREID_DEFAULTS.items():
        assert keys[key] == value, key


def test_plugin_keys_are_added_without_touching_the_base():
    base, full = flatten(get_default_config()), flatten(get_cfg())
    assert all(full[k] == v for k, v in base.items())
    added = set(full) - set(base)
    assert {'jlml.num_stripes', 'jlml.feat_dim', 'jlml.weight_global', 'jlml.weight_local',
            'jlml.reg_global.kind', 'jlml.reg_global.weight', 'jlml.reg_local.kind',
            'jlml.reg_local.weight', 'train.amp', 'dist.sync_bn'} <= added


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.yaml'),
                                               recursive=True)))
def test_every_shipped_config_loads_and_validates(path):
    if os.sep + 'leaderboard' + os.sep in path:
        assert plan_runs(load_leaderboard(path))
        return
    cfg = load_config(path)
    validate(cfg, check_data=False)
    if 'ablations' in path:
        assert cfg.data.sources == ['cuhk01_seeded'] and cfg.train.max_epoch == 30


def test_base_files_chain_and_override(tmp_path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'base.yaml').write_text("train:\n  lr: 0.01\n  max_epoch: 5\n")
    (tmp_path / 'sub' / 'child.yaml').write_text("_BASE_: ../base.yaml\ntrain:\n  lr: 0.02\n")
    cfg = load_config(str(tmp_path / 'sub' / 'child.yaml'))
    assert cfg.train.lr == 0.02 and cfg.train.max_epoch == 5
    (tmp_path / 'loop.yaml').write_text("_BASE_: loop.yaml\n")
    with pytest.raises(ConfigError, match='includes itself'):
        load_config(str(tmp_path / 'loop.yaml'))


def test_values_are_read_as_yacs_and_yaml_would(tmp_path):
    (tmp_path / 'c.yaml').write_text("train:\n  lr: 1e-4\n  weight_decay: 0\n")
    cfg = load_config(str(tmp_path / 'c.yaml'), ['test.rerank', 'true', 'train.max_epoch', '3',
                                                'data.sources', "['a', 'b']"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.weight_decay, float)
    assert cfg.test.rerank is True and cfg.train.max_epoch == 3 and cfg.data.sources == ['a', 'b']


def test_unknown_keys_and_wrong_types_in_files_name_the_file(tmp_path):
    (tmp_path / 'c.yaml').write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' in .*c.yaml; did you mean train.lr"):
        load_config(str(tmp_path / 'c.yaml'))
    (tmp_path / 'c.yaml').write_text("train:\n  lr:\n    value: 0.1\n")  # a leaf used as a section
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lr.value' in .*c.yaml"):
        load_config(str(tmp_path / 'c.yaml'))
    (tmp_path / 'c.yaml').write_text("train:\n  max_epoch: abc\n")
    with pytest.raises(ConfigError, match=r"train.max_epoch expects int \(like 60\), got 'abc' in .*c.yaml"):
        load_config(str(tmp_path / 'c.yaml'))


def test_every_merge_is_yacs_own(tmp_path, monkeypatch):
    from yacs.config import CfgNode
    merged = []
    yacs_merge = CfgNode.merge_from_list
    monkeypatch.setattr(CfgNode, 'merge_from_list',
                        lambda self, pairs: merged.append(pairs) or yacs_merge(self, pairs))
    (tmp_path / 'base.yaml').write_text("train:\n  lr: 0.01\n")
    (tmp_path / 'child.yaml').write_text("_BASE_: base.yaml\ntrain:\n  max_epoch: 7\n")
    cfg = load_config(str(tmp_path / 'child.yaml'), ['data.sources', 'viper'])
    assert merged == [['train.lr', 0.01], ['train.max_epoch', 7], ['data.sources', ['viper']]]
    assert (cfg.train.lr, cfg.train.max_epoch, cfg.data.sources) == (0.01, 7, ['viper'])


def test_missing_file_and_odd_overrides():
    with pytest.raises(ConfigError, match='config file not found: nope.yaml'):
        load_config('nope.yaml')
    with pytest.raises(ConfigError, match="'train.lr' has no value"):
        load_config(None, ['train.lr'])


def test_overrides_are_found_anywhere_on_the_command_line():
    keys = flatten(get_cfg())
    options, overrides = split_overrides(
        ['--config-file', 'x.yaml', '-s', 'market1501', 'dukemtmcreid', 'model.name', 'jlml',
         '--resume', '-t', 'market1501', 'train.lr', '0.1'], keys)
    assert options == ['--config-file', 'x.yaml', '-s', 'market1501', 'dukemtmcreid',
                       '--resume', '-t', 'market1501']
    assert overrides == ['model.name', 'jlml', 'train.lr', '0.1']


def test_the_default_config_is_a_yacs_node_whose_merge_follows_base(tmp_path):
    from yacs.config import CfgNode
    cfg = get_default_config()
    assert isinstance(cfg, JLMLConfig) and isinstance(cfg, CfgNode)
    (tmp_path / 'base.yaml').write_text("train:\n  lr: 0.01\n  max_epoch: 5\n")
    (tmp_path / 'child.yaml').write_text("_BASE_: base.yaml\ntrain:\n  max_epoch: 7\n")
    full = get_cfg()
    full.merge_from_file(str(tmp_path / 'child.yaml'))
    full.merge_from_list(['train.lr', '1'])  # an int where a float is expected
    assert (full.train.lr, full.train.max_epoch) == (1.0, 7)
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' on the command line; "
                                          r"did you mean train.lr"):
        full.merge_from_list(['train.lrr', '0.1'])


def test_the_jlml_keys_are_part_of_what_only_the_plugins_models_train():
    # A new JLML default (a re-chosen λ) must leave a baseline's records standing.
    cfg = get_cfg()
    cfg.model.name = 'jlml'
    assert trained_config(cfg)['jlml.reg_global.weight'] == cfg.jlml.reg_global.weight
    cfg.model.name = 'osnet_x0_25'
    assert not [k for k in trained_config(cfg) if k.startswith('jlml.')]
    assert trained_config(cfg)['train.lr'] == cfg.train.lr
