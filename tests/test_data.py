"""The synthetic set and the seeded CUHK01 splits."""
import glob
import hashlib
import json
import os

import pytest
from PIL import Image

from jlml_plugin import torchreid
from jlml_plugin.data import cuhk01
from jlml_plugin.data.synthetic import PRESETS, generate, identities, scan
from jlml_plugin.errors import ConfigError, DataError
from jlml_plugin.tools.leaderboard_spec import load_leaderboard, plan_runs

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def _digest(folder):
    h = hashlib.sha256()
    for split in ('train', 'query', 'gallery'):
        for name in sorted(os.listdir(os.path.join(folder, split))):
            h.update(name.encode())
            with open(os.path.join(folder, split, name), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def test_synthetic_set_is_deterministic_from_its_seed(tmp_path, data_root):
    again = generate(str(tmp_path), 'synthreid_tiny', 0)
    assert _digest(again) == _digest(os.path.join(data_root, 'synthreid', 'synthreid_tiny-seed0'))
    other = generate(str(tmp_path), 'synthreid_tiny', 1)
    assert _digest(other) != _digest(again)


def test_synthetic_splits_are_disjoint_and_shaped_like_torchreid_expects(data_root):
    folder = os.path.join(data_root, 'synthreid', 'synthreid_tiny-seed0')
    spec = PRESETS['synthreid_tiny']
    train, query, gallery = (scan(folder, s) for s in ('train', 'query', 'gallery'))
    train_ids = {p for _, p, _ in train}
    assert len(train_ids) == spec.num_train_ids
    assert train_ids.isdisjoint({p for _, p, _ in query} | {p for _, p, _ in gallery})
    assert {p for _, p, _ in query} == {p for _, p, _ in gallery}
    assert {c for _, _, c in query}.isdisjoint({c for _, _, c in gallery})
    assert len({c for _, _, c in train}) == spec.num_cameras
    with Image.open(train[0][0]) as img:
        assert img.size == (spec.width, spec.height)


def test_generation_is_reused_not_redone(tmp_path):
    folder = generate(str(tmp_path), 'synthreid_tiny', 0)
    stamp = os.path.getmtime(os.path.join(folder, 'meta.json'))
    assert generate(str(tmp_path), 'synthreid_tiny', 0) == folder
    assert os.path.getmtime(os.path.join(folder, 'meta.json')) == stamp


def test_identities_differ_by_body_part_attributes():
    people = identities(60, 0)
    keys = {tuple(sorted((k, v) for k, v in p.items() if k not in ('width', 'height')))
            for p in people}
    assert len(keys) == 60
    # look-alike families: members 1 and 2 differ from member 0 in exactly one attribute
    for family in range(20):
        base = people[3 * family]
        for other in people[3 * family + 1:3 * family + 3]:
            diff = [k for k in base if k not in ('width', 'height') and base[k] != other[k]]
            assert len(diff) == 1


def test_synthreid_through_torchreid_data_manager(data_root):
    dm = torchreid.data.ImageDataManager(root=data_root, sources='synthreid_tiny', height=64,
                                         width=32, batch_size_train=8, workers=0, use_gpu=False)
    assert dm.num_train_pids == PRESETS['synthreid_tiny'].num_train_ids
    batch = next(iter(dm.train_loader))
    assert batch['img'].shape == (8, 3, 64, 32)


# ------------------------------------------------------------------------- CUHK01


@pytest.fixture(scope='module')
def fake_campus(tmp_path_factory):
    """The CUHK01 file layout with 1x1 images (the real set stays out of the tests)."""
    root = tmp_path_factory.mktemp('cuhk')
    campus = root / 'cuhk01' / 'campus'
    campus.mkdir(parents=True)
    pixel = Image.new('RGB', (1, 1))
    for pid in range(1, 972):
        for k in range(1, 5):
            pixel.save(campus / f'{pid:04d}{k:03d}.png')
    return str(root)


def test_partitions_are_pinned():
    """The same split id means the same people on every machine, forever."""
    digest = hashlib.sha256(json.dumps([cuhk01.partition(p) for p in range(10)]).encode())
    assert digest.hexdigest()[:16] == PINNED_PARTITIONS
    train, test = cuhk01.partition(0)
    assert len(train) == 485 and len(test) == 486 and not set(train) & set(test)
    assert sorted(train + test) == list(range(1, 972))


PINNED_PARTITIONS = 'a4d1ae54fcadf9fa'  # partition 0 tests ids 2, 5, 6, 7, 9, ...


def test_split_structure_and_directions():
    names = [f'{p:04d}{k:03d}.png' for p in range(1, 972) for k in range(1, 5)]
    a, b = cuhk01.make_split(0, names), cuhk01.make_split(1, names)
    assert a['train'] == b['train'] and a['query'] == b['gallery'] and a['gallery'] == b['query']
    assert len(a['train']) == 485 * 4 and len(a['query']) == len(a['gallery']) == 486 * 2
    assert {c for _, _, c in a['query']} == {0} and {c for _, _, c in a['gallery']} == {1}
    assert sorted({p for _, p, _ in a['train']}) == list(range(485))
    assert all('/' not in path for path, _, _ in a['train'])  # relative paths


def test_cuhk01_through_torchreid(fake_campus):
    dataset = torchreid.data.datasets.init_image_dataset('cuhk01_seeded', root=fake_campus, split_id=3,
                                                         mode='query', verbose=False)
    _, test_ids = cuhk01.partition(1)
    assert {p + 1 for _, p, *_ in dataset.query} == set(test_ids)
    assert all(path.startswith(fake_campus) for path, *_ in dataset.query)
    assert not os.path.exists(os.path.join(fake_campus, 'cuhk01', 'splits.json'))


def test_validation_split_holds_out_training_identities_only():
    names = [f'{p:04d}{k:03d}.png' for p in range(1, 972) for k in range(1, 5)]
    val = cuhk01.make_split(0, names, cuhk01.CUHK01Validation.identities(0))
    train_ids, test_ids = cuhk01.partition(0)
    val_train, val_query = cuhk01.validation_partition(0)
    assert len(val_train) == 385 and len(val_query) == 100
    assert set(val_train) | set(val_query) == set(train_ids)
    assert {p + 1 for _, p, _ in val['query']} == set(val_query)
    assert not {p + 1 for _, p, _ in val['query'] + val['gallery']} & set(test_ids)
    assert len(val['train']) == 385 * 4 and val['num_train_pids'] == 385


def _board_partitions(config):
    """Every CUHK01 partition whose test identities a leaderboard config evaluates on."""
    spec = load_leaderboard(config)
    runs = plan_runs(spec)
    datasets = spec['protocol']['data']['sources'] + spec['protocol']['data']['targets']
    return {run.split_id // 2 for run in runs} if 'cuhk01_seeded' in datasets else set()


def test_tuning_identities_are_no_test_identity_of_any_committed_board_split():
    """Choose on validation, report on test: the identities every model is tuned on are
    never test identities of a split that any committed leaderboard config evaluates."""
    _, tune_ids = cuhk01.tuning_partition()
    configs = sorted(glob.glob(os.path.join(CONFIGS, 'leaderboard', '*.yaml')))
    partitions = {os.path.basename(c): _board_partitions(c) for c in configs}
    assert partitions['cuhk01.yaml'] == {0, 1, 2}  # the board itself is among them
    for config, used in partitions.items():
        for p in used:
            overlap = set(tune_ids) & set(cuhk01.partition(p)[1])
            assert not overlap, f'{config}: tuning identities {sorted(overlap)[:5]} are test ' \
                                f'identities of partition {p}'


def test_tuning_split_through_torchreid(fake_campus):
    query = torchreid.data.datasets.init_image_dataset('cuhk01_tune', root=fake_campus,
                                                       split_id=1, mode='query', verbose=False)
    train_ids, tune_ids = cuhk01.tuning_partition()
    assert len(tune_ids) == 100 and len(train_ids) == 385 and not set(tune_ids) & set(train_ids)
    assert set(train_ids) | set(tune_ids) == set(cuhk01.partition(0)[0])
    assert {p + 1 for _, p, *_ in query.query} == set(tune_ids)
    assert {item[2] for item in query.query} == {1} and {item[2] for item in query.gallery} == {0}
    assert query.num_train_pids == 385
    with pytest.raises(ConfigError, match=r'cuhk01_tune split_id 2 is out of range: use 0-1'):
        torchreid.data.datasets.init_image_dataset('cuhk01_tune', root=fake_campus, split_id=2)


def test_cuhk01_split_id_out_of_range(fake_campus):
    with pytest.raises(ConfigError, match=r'split_id 20 is out of range: use 0-19'):
        torchreid.data.datasets.init_image_dataset('cuhk01_seeded', root=fake_campus, split_id=20)


def test_cuhk01_missing_images_say_where_and_what_layout(tmp_path):
    with pytest.raises(DataError, match=r'expected 3884 images in .*campus, found 0; torchreid '
                                        r'expects <root>/cuhk01/campus/NNNNIII.png'):
        torchreid.data.datasets.init_image_dataset('cuhk01_seeded', root=str(tmp_path))
