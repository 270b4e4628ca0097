"""DDP: samplers, batch checks, and real 2-process gloo runs under torchrun."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from jlml_plugin.distributed import DistributedIdentitySampler, per_rank_batch
from jlml_plugin.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))


def _items(images_per_pid):
    return [(f'{pid}_{k}.png', pid, k % 2) for pid, n in enumerate(images_per_pid)
            for k in range(n)]


@pytest.mark.parametrize('images_per_pid', [[8] * 12, [4, 6, 8, 9, 3, 2, 12, 5, 7, 4, 4, 6],
                                            [2] * 10])
def test_identity_sampler_splits_whole_groups_and_covers_every_identity(images_per_pid):
    items = _items(images_per_pid)
    shares = [list(DistributedIdentitySampler(items, 4, 2, num_replicas=2, rank=r, seed=3))
              for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) > 0
    assert {items[i][1] for share in shares for i in share} == set(range(len(images_per_pid)))
    for share in shares:
        for b in range(0, len(share), 4):
            pids = [items[i][1] for i in share[b:b + 4]]
            assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]
    if min(images_per_pid) >= 4:  # no top-up needed: no image on two ranks
        assert not set(shares[0]) & set(shares[1])


def test_identity_sampler_is_shared_by_seed_and_moves_with_the_epoch():
    items = _items([6] * 10)
    a = DistributedIdentitySampler(items, 4, 2, num_replicas=2, rank=0, seed=1)
    b = DistributedIdentitySampler(items, 4, 2, num_replicas=2, rank=0, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_one_process_sees_the_concatenation_of_two_ranks_batches():
    items = _items([6] * 10)
    single = list(DistributedIdentitySampler(items, 8, 2, num_replicas=1, rank=0, seed=5))
    ranks = [list(DistributedIdentitySampler(items, 4, 2, num_replicas=2, rank=r, seed=5))
             for r in (0, 1)]
    merged = [i for b in range(len(ranks[0]) // 4) for r in ranks for i in r[4 * b:4 * b + 4]]
    assert merged == single


def test_batch_checks_fail_clearly_instead_of_hanging():
    assert per_rank_batch(32, 2, 4) == 16
    with pytest.raises(ConfigError, match='cannot be split evenly across 3 processes'):
        per_rank_batch(32, 3, 4)
    with pytest.raises(ConfigError, match='must be a multiple of sampler.num_instances 4'):
        per_rank_batch(36, 2, 4)
    with pytest.raises(ConfigError, match='cannot fill batches'):
        DistributedIdentitySampler(_items([4] * 3), 8, 2, num_replicas=2, rank=0)


def _torchrun(nproc, *args, timeout=300):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone',
           f'--nproc_per_node={nproc}', *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow  # starts torchrun process groups
@pytest.mark.parametrize('sampler', ['RandomIdentitySampler', 'RandomSampler'])
def test_two_ranks_cover_the_epoch_without_sharing_samples(data_root, tmp_path, sampler):
    out = str(tmp_path / 'indices.json')
    _torchrun(2, os.path.join(HERE, 'ddp_worker.py'), 'indices', out, data_root, sampler)
    result = json.load(open(out))
    a, b = (r['indices'] for r in result['ranks'])
    assert result['ranks'][0]['batches'] == result['ranks'][1]['batches'] > 0
    assert not set(a) & set(b)
    assert set(result['ranks'][0]['pids']) | set(result['ranks'][1]['pids']) == \
        set(range(result['num_pids']))


@pytest.mark.slow  # starts torchrun process groups
def test_two_process_steps_equal_one_process_steps(data_root, tmp_path):
    one, two = str(tmp_path / 'one.pt'), str(tmp_path / 'two.pt')
    worker = os.path.join(HERE, 'ddp_worker.py')
    _torchrun(1, worker, 'steps', one, data_root, 'RandomIdentitySampler')
    _torchrun(2, worker, 'steps', two, data_root, 'RandomIdentitySampler')
    a, b = torch.load(one), torch.load(two)
    for key in a['initial']:
        assert torch.equal(a['initial'][key], b['initial'][key]), key  # same seed, same start
        torch.testing.assert_close(a['final'][key], b['final'][key], rtol=1e-4, atol=1e-5,
                                   msg=key)
    moved = [k for k in a['initial'] if not torch.equal(a['initial'][k], a['final'][k])]
    assert 'classifier_g.weight' in moved and 'shared.conv1.weight' in moved


@pytest.mark.slow  # starts torchrun process groups
def test_torchrun_training_cli(data_root, tmp_path):
    save_dir = tmp_path / 'log'
    out = _torchrun(2, '-m', 'jlml_plugin.cli.train', '--root', data_root, '-s', 'synthreid_tiny',
                    '-t', 'synthreid_tiny', 'data.height', '64', 'data.width', '32',
                    'data.workers', '0', 'data.save_dir', str(save_dir), 'train.max_epoch', '4',
                    'train.batch_size', '8', 'train.lr', '0.003', 'train.checkpoint_freq', '0',
                    'model.pretrained', 'False', 'use_gpu', 'False', 'test.ranks', '[1]',
                    'jlml.stem_width', '16', 'jlml.global_widths', '[8, 16, 16, 32]',
                    'jlml.local_widths', '[8, 8, 16, 16]', timeout=600)
    losses = [float(m) for m in re.findall(r'^epoch \d+/4: .* loss ([\d.]+) lr', out, re.M)]
    assert len(losses) == 4, out[-2000:]  # rank 0 alone prints
    assert losses[-1] < losses[0]
    assert out.count('=> Final test') == 1 and out.count('** Results') == 1
    assert [os.path.basename(p) for p in glob.glob(str(save_dir / 'model' / '*'))] == \
        ['model.pth.tar-4']
    assert len(glob.glob(str(save_dir / 'events.out.tfevents.*'))) == 1
