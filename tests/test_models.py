"""The JLML network: variants, outputs, gradients, batched stripes, pretrained handling."""
import importlib
import os
import warnings

import pytest
import torch

from jlml_plugin import JLML, MODELS, default_cfgs, torchreid
from jlml_plugin.models.reference import LoopedLocalBranch

jlml_module = importlib.import_module('jlml_plugin.models.jlml')  # the function jlml shadows it

SMALL = dict(stem_width=8, global_widths=(4, 8, 8, 16), local_widths=(4, 4, 8, 8))
# What each variant promises, from the registry's metadata (no list kept here).
FEATURE_DIMS = {name: cfg['feature_dim'] for name, cfg in default_cfgs.items()}
TWO_HEADS = {name for name, cfg in default_cfgs.items() if cfg['classifiers'] == 2}


def _input(name, batch=4):
    return torch.randn(batch, *default_cfgs[name]['input_size'])


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_variant_builds_through_torchreid(name):
    model = torchreid.models.build_model(name, 7, loss='softmax', pretrained=False,
                                         use_gpu=False)
    assert isinstance(model, JLML)
    assert len(model.head_names) == default_cfgs[name]['classifiers']
    assert model.default_cfg == dict(default_cfgs[name], architecture=name)
    model.eval()
    with torch.no_grad():
        feat = model(_input(name, 2))
    assert feat.shape == (2, FEATURE_DIMS[name])


@pytest.mark.parametrize('name', sorted(MODELS))
def test_the_stem_stride_in_the_metadata_is_the_models(name):
    # The config check of data.height against num_stripes reads it from the metadata.
    model = MODELS[name](7, pretrained=False).eval()
    stem = next(m for m in model.modules() if isinstance(m, jlml_module.Stem))
    x = _input(name, 1)
    with torch.no_grad():
        assert x.shape[-2] // stem(x).shape[-2] == default_cfgs[name]['stem_stride']


@pytest.mark.parametrize('name', sorted(set(MODELS) - {'jlml_resnet50'}))
@pytest.mark.parametrize('loss', ['softmax', 'triplet'])
def test_training_outputs(name, loss):
    model = MODELS[name](11, loss=loss, **SMALL).train()
    out = model(_input(name))
    logits = out if loss == 'softmax' else out[0]
    if name in TWO_HEADS:
        assert isinstance(logits, tuple) and [y.shape for y in logits] == [(4, 11)] * 2
    else:
        assert torch.is_tensor(logits) and logits.shape == (4, 11)
    if loss == 'triplet':
        feats = out[1]
        if name in TWO_HEADS:
            assert [f.shape for f in feats] == [(4, 512), (4, 512)]
        else:
            assert feats.shape == (4, FEATURE_DIMS[name])


def test_resnet50_variant_outputs():
    model = MODELS['jlml_resnet50'](5, loss='triplet').train()
    (yg, yl), (fg, fl) = model(_input('jlml_resnet50', 2))
    assert yg.shape == yl.shape == (2, 5) and fg.shape == fl.shape == (2, 512)


def test_gradients_reach_both_branches_and_the_shared_layer():
    model = MODELS['jlml'](6, **SMALL).train()
    yg, yl = model(_input('jlml'))
    (yg.sum() + yl.sum()).backward()
    # Residual blocks start as the identity (zero-init last BN), so at step 0 the
    # gradient enters each block through that BN and the downsample path.
    for name in ('shared.conv1.weight', 'global_branch.tower.0.0.downsample.0.weight',
                 'global_branch.tower.3.2.bn3.weight', 'local_branch.tower.0.0.downsample.0.weight',
                 'local_branch.tower.3.2.bn3.weight', 'global_branch.embed.fc.weight',
                 'local_branch.embed.fc.weight', 'classifier_g.weight', 'classifier_l.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_each_branch_loss_reaches_the_shared_layer_alone():
    model = MODELS['jlml'](6, **SMALL).train()
    for head in (0, 1):
        model.zero_grad()
        model(_input('jlml'))[head].sum().backward()
        params = dict(model.named_parameters())
        assert params['shared.conv1.weight'].grad.abs().sum() > 0
        other = 'local_branch' if head == 0 else 'global_branch'
        assert params[f'{other}.embed.fc.weight'].grad is None or \
            params[f'{other}.embed.fc.weight'].grad.abs().sum() == 0


def _randomise_bn(model):
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(generator=gen)
            m.running_mean.normal_(generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)


@pytest.mark.parametrize('stripes,height', [(4, 160), (2, 96), (6, 192)])
def test_batched_stripes_equal_the_per_stripe_reference(stripes, height):
    # In fp64, so that the two summation orders agree to far below any real difference
    # (in fp32 one element in 70,000 can differ by 2e-4, depending on the thread count).
    torch.manual_seed(0)
    model = MODELS['jlml'](5, num_stripes=stripes)
    _randomise_bn(model)
    reference = LoopedLocalBranch(model.local_branch).double().eval()  # copies, then fp64
    model.double().eval()
    x = model.shared(torch.randn(3, 3, height, 64, dtype=torch.float64))
    branch = model.local_branch
    with torch.no_grad():
        torch.testing.assert_close(branch(x), reference(x), rtol=1e-9, atol=1e-9)
        # The towers themselves, before pooling and the feature layer.
        stacked = branch.tower(branch.stack_stripes(x))
        per_stripe = [s(part) for s, part in zip(reference.streams, x.chunk(stripes, dim=2))]
    torch.testing.assert_close(stacked, torch.cat(per_stripe, 1), rtol=1e-9, atol=1e-9)


def test_each_stripe_stream_sees_only_its_own_stripe():
    """Activations: changing stripe s of the shared map changes stream s's output only.
    Gradients: stream s's output reaches only stream s's block of every grouped weight."""
    torch.manual_seed(0)
    model = MODELS['jlml'](5, **SMALL)
    _randomise_bn(model)  # the residual paths open (their last BN starts at 0)
    model.eval()
    branch = model.local_branch
    x = model.shared(torch.randn(2, 3, 160, 64)).detach()
    m, rows = branch.num_stripes, x.shape[2] // branch.num_stripes
    with torch.no_grad():
        base = branch.tower(branch.stack_stripes(x)).chunk(m, dim=1)
        for s in range(m):
            changed = x.clone()
            changed[:, :, s * rows:(s + 1) * rows] += 1
            out = branch.tower(branch.stack_stripes(changed)).chunk(m, dim=1)
            for t in range(m):
                assert torch.equal(out[t], base[t]) != (t == s), (s, t)
    model.train()
    for s in range(m):
        model.zero_grad()
        branch.tower(branch.stack_stripes(x)).chunk(m, dim=1)[s].sum().backward()
        reached = 0
        for name, p in branch.tower.named_parameters():  # stream t owns output block t
            blocks = p.grad.chunk(m, dim=0)
            assert all(b.abs().sum() == 0 for t, b in enumerate(blocks) if t != s), (s, name)
            reached += bool(blocks[s].abs().sum() > 0)
        assert reached > 10, (s, reached)


def test_batched_stripes_equal_the_reference_in_training_mode():
    """With BatchNorm on batch statistics, per stream (the eval-mode test above compares
    running statistics only)."""
    torch.manual_seed(0)
    model = MODELS['jlml'](5)
    _randomise_bn(model)
    model.train()
    x = model.shared(torch.randn(6, 3, 160, 64)).detach()
    branch = model.local_branch
    reference = LoopedLocalBranch(branch).train()
    torch.testing.assert_close(branch(x), reference(x), rtol=1e-4, atol=1e-4)
    # The running statistics are updated the same way, stream by stream.
    for s, stream in enumerate(reference.streams):
        grouped = branch.tower[0][0].bn1
        own = stream[0][0].bn1
        width = own.num_features
        torch.testing.assert_close(grouped.running_mean[s * width:(s + 1) * width],
                                   own.running_mean, rtol=1e-4, atol=1e-5)


def test_height_the_stripes_cannot_split_is_a_clear_error():
    model = MODELS['jlml'](5, **SMALL).eval()
    with pytest.raises(ValueError, match='cannot be split into 4 equal stripes.*multiple of 16'):
        model(torch.randn(1, 3, 150, 64))


def test_unknown_model_error_lists_the_jlml_names():
    with pytest.raises(KeyError) as info:
        torchreid.models.build_model('jlm', 5, pretrained=False, use_gpu=False)
    for name in MODELS:
        assert name in str(info.value)


def test_pretrained_never_touches_the_network_and_warns_once(monkeypatch):
    monkeypatch.setattr(jlml_module, '_warned_no_pretrained', False)
    torch.manual_seed(0)
    plain = MODELS['jlml'](5, pretrained=False)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match='no pretrained weights exist'):
        asked = MODELS['jlml'](5, pretrained=True)
    for (k, a), (_, b) in zip(plain.state_dict().items(), asked.state_dict().items()):
        assert torch.equal(a, b), k
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        MODELS['jlml_global'](5, pretrained=True)  # warned already: silent now


def test_resnet50_without_offline_weights_fails_at_once_saying_where(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(FileNotFoundError, match=r'resnet50-0676ba61\.pth.*hub/checkpoints'):
        MODELS['jlml_resnet50'](5, pretrained=True)


def test_resnet50_loads_offline_imagenet_weights_into_every_stream(tmp_path, monkeypatch):
    import torchvision
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    source = torchvision.models.resnet50().state_dict()
    torch.save(source, tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth')
    model = MODELS['jlml_resnet50'](5, pretrained=True)
    state = model.state_dict()
    torch.testing.assert_close(state['shared.conv1.weight'], source['conv1.weight'])
    torch.testing.assert_close(state['global_branch.tower.2.1.conv2.weight'],
                               source['layer4.1.conv2.weight'])
    local = state['local_branch.tower.0.0.conv1.weight']
    for stripe in local.chunk(4):
        torch.testing.assert_close(stripe, source['layer2.0.conv1.weight'])


def test_hyper_parameters_from_the_builders():
    model = MODELS['jlml'](3, num_stripes=6, feat_dim=128, dropout=0.2, **SMALL).eval()
    assert model.num_stripes == 6 and model.feature_dim == 256
    assert model(torch.randn(2, 3, 96, 32)).shape == (2, 256)
    assert model.local_branch.tower[0][0].conv1.groups == 6
    with pytest.raises(ValueError, match='dropout'):
        MODELS['jlml'](3, dropout=1.5)


def test_unsupported_loss_is_a_key_error_like_torchreid():
    with pytest.raises(KeyError, match='Unsupported loss'):
        MODELS['jlml'](3, loss='arcface')


@pytest.mark.parametrize('name', ['jlml', 'jlml_independent'])
def test_every_conv_starts_at_he_fan_out_per_stream(name):
    """Each stripe stream of a grouped conv starts as an ungrouped conv of its size would:
    std sqrt(2 / (out channels per stream * kernel area))."""
    torch.manual_seed(0)
    model = MODELS[name](5)
    grouped = 0
    for conv_name, conv in model.named_modules():
        if not isinstance(conv, torch.nn.Conv2d):
            continue
        kh, kw = conv.kernel_size
        expected = (2 / (conv.out_channels // conv.groups * kh * kw)) ** 0.5
        for stream in conv.weight.detach().chunk(conv.groups if conv.groups > 1 else 1):
            assert stream.std().item() == pytest.approx(expected, rel=0.1), conv_name
        grouped += conv.groups == model.num_stripes
    assert grouped > 0  # the local branch's stripe streams were among them
    conv1 = model.local_branch.tower[0][0].conv1.weight
    assert conv1.std().item() == pytest.approx(2 ** 0.5 / 4, rel=0.05)  # 0.354, not 0.177


def test_triplet_features_are_taken_before_dropout():
    model = MODELS['jlml'](5, loss='triplet', dropout=0.5, pre_relu_feature=False,
                           **SMALL).train()
    x = _input('jlml')
    torch.manual_seed(1)
    logits_a, feats_a = model(x)
    torch.manual_seed(2)
    logits_b, feats_b = model(x)
    assert not torch.equal(logits_a[0], logits_b[0])  # different dropout masks ...
    for a, b in zip(feats_a, feats_b):
        torch.testing.assert_close(a, b)  # ... the same features
        assert (a > 0).float().mean() > 0.3  # after the ReLU, not half zeroed by dropout


def test_test_feature_options():
    torch.manual_seed(0)
    x = _input('jlml')
    plain = MODELS['jlml'](5, pre_relu_feature=False, normalize_branches=False, **SMALL).eval()
    state = plain.state_dict()
    with torch.no_grad():
        joined = plain(x)
        pre = MODELS['jlml'](5, pre_relu_feature=True, normalize_branches=False, **SMALL).eval()
        pre.load_state_dict(state)
        pre_joined = pre(x)
        normed = MODELS['jlml'](5, pre_relu_feature=False, normalize_branches=True,
                                **SMALL).eval()
        normed.load_state_dict(state)
        normed_joined = normed(x)
    torch.testing.assert_close(joined, pre_joined.clamp_min(0))
    assert (pre_joined < 0).any()
    for half in normed_joined.chunk(2, dim=1):
        torch.testing.assert_close(half.norm(dim=1), torch.ones(len(x)))
    torch.testing.assert_close(normed_joined[:, :512],
                               torch.nn.functional.normalize(joined[:, :512], dim=1))
    # The views the evaluator scores beside the joined feature read it as these options do.
    views = plain.test_views()
    assert set(views) == {'global', 'local', 'halves_l2norm'}
    torch.testing.assert_close(views['halves_l2norm'](joined), normed_joined)
    assert torch.equal(torch.cat([views['global'](joined), views['local'](joined)], 1), joined)
    assert 'halves_l2norm' not in normed.test_views()  # its joined feature is that already
    assert MODELS['jlml_global'](5, **SMALL).test_views() == {}


def test_feature_layers_start_at_he_fan_out_or_at_a_given_std():
    torch.manual_seed(0)
    he = MODELS['jlml'](5).global_branch.embed.fc.weight
    assert he.std().item() == pytest.approx((2 / he.shape[0]) ** 0.5, rel=0.05)
    small = MODELS['jlml'](5, feat_init_std=0.01)
    for branch in (small.global_branch, small.local_branch):
        assert branch.embed.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match='feat_init_std >= 0'):
        MODELS['jlml'](5, feat_init_std=-1.0)


def test_build_is_the_one_way_from_a_name_to_a_model():
    from jlml_plugin.errors import ConfigError
    from jlml_plugin.models import build
    assert build('jlml', 7, num_stripes=2).num_stripes == 2  # a plugin model takes its keys
    assert build('osnet_x0_25', 7).classifier.out_features == 7  # a torchreid one its own way
    with pytest.raises(ConfigError, match="unknown model 'jlmll'; choose from: .*jlml_global"):
        build('jlmll', 7)
    with pytest.raises(ConfigError, match=r"osnet_x0_25 is a torchreid model and takes none of \['num_stripes'\]"):
        build('osnet_x0_25', 7, num_stripes=2)


def _board_models():
    from jlml_plugin.tools.leaderboard_spec import load_leaderboard
    spec = load_leaderboard(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                         'configs', 'leaderboard', 'cuhk01.yaml'))
    return sorted({entry if isinstance(entry, str) else entry['name'] for entry in spec['models']})


@pytest.mark.parametrize('name', _board_models())
def test_every_board_model_trains_and_extracts_in_channels_last(name):
    # torchreid's PCB flattens its 4x1 part pooling with .view, which fails on NHWC
    # tensors unless the pooled output is made contiguous (precision.to_channels_last).
    from jlml_plugin.models import build
    from jlml_plugin.precision import to_channels_last
    torch.manual_seed(0)
    model = to_channels_last(build(name, 5))
    images = torch.randn(2, 3, 160, 64).contiguous(memory_format=torch.channels_last)
    outputs = model.train()(images)
    first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    first = first[0] if isinstance(first, (tuple, list)) else first
    first.float().sum().backward()
    with torch.no_grad():
        features = model.eval()(images)
    assert features.dim() == 2 and features.shape[0] == 2
