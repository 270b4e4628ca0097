"""CUHK01 with seeded, fixed splits: the datasets ``cuhk01_seeded``, ``cuhk01_tune`` and
``cuhk01_val``.

torchreid's own CUHK01 draws its 10 partitions with an unseeded numpy shuffle and writes
them, with absolute paths, into ``splits.json`` inside the dataset folder: two machines
get different people for the same split id. Here the partitions are a pure function of
a seed and the split needs no file at all (torchreid's own ``cuhk01`` is left as it is):

* partition ``p`` (0-9) shuffles the 971 identities with a Fisher-Yates shuffle driven by
  ``random.Random(SEED + p).random()`` (whose sequence Python guarantees across
  versions); the first 485 shuffled identities train, the other 486 are test identities;
* split id ``2p`` uses camera view A (images 001/002) as query and view B (003/004) as
  gallery; split id ``2p + 1`` the reverse. Camera ids are 0 (A) and 1 (B), as in torchreid.

``cuhk01_tune`` is where models are chosen: 100 identities that train in every partition
the board uses (``BOARD_PARTITIONS``), so no choice is ever scored on a test identity of
a board split (docs/evaluation.md says why this design). ``cuhk01_val``, the earlier
validation split, cut its 100 from partition 0 alone; they include test identities of
partitions 1 and 2, so it is kept only so that its records reproduce.

Paths in :func:`make_split` are relative to ``<root>/cuhk01/campus``. Nothing is written
into the dataset folder, so it may be read-only.
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Tuple

from .. import _torchreid
from ..errors import ConfigError, DataError
from .registry import LAYOUTS, register_dataset

__all__ = ['CUHK01', 'CUHK01Tuning', 'CUHK01Validation', 'SEED', 'NUM_SPLITS',
           'BOARD_PARTITIONS', 'partition', 'tuning_partition', 'validation_partition',
           'make_split']

SEED = 2017
NUM_IDS = 971
NUM_TRAIN_IDS = 485
NUM_VAL_IDS = 100
NUM_PARTITIONS = 10
NUM_SPLITS = 2 * NUM_PARTITIONS
#: The partitions whose test identities ``cuhk01_tune`` never touches: those of the board's
#: splits 0-5. A board on another partition needs a tuning split of its own (the test that
#: reads every committed leaderboard config fails otherwise).
BOARD_PARTITIONS = (0, 1, 2)
LAYOUT = ('<root>/cuhk01/campus/NNNNIII.png (971 identities NNNN = 0001-0971, images III = '
          '001-004; .jpg as well, e.g. the GPU kit\'s copy)')
#: Image files read from the campus folder: the original PNGs, or a JPEG copy.
SUFFIXES = ('.png', '.jpg')


def _shuffled(index: int) -> List[int]:
    rng = random.Random(SEED + index)
    ids = list(range(1, NUM_IDS + 1))
    for i in range(len(ids) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        ids[i], ids[j] = ids[j], ids[i]
    return ids


def partition(index: int) -> Tuple[List[int], List[int]]:
    """(train identities, test identities), 1-based as in the file names, each sorted."""
    ids = _shuffled(index)
    return sorted(ids[:NUM_TRAIN_IDS]), sorted(ids[NUM_TRAIN_IDS:])


def validation_partition(index: int) -> Tuple[List[int], List[int]]:
    """Partition ``index``'s training identities cut into (385 train, 100 validation):
    model selection never sees the test identities."""
    ids = _shuffled(index)[:NUM_TRAIN_IDS]
    cut = NUM_TRAIN_IDS - NUM_VAL_IDS
    return sorted(ids[:cut]), sorted(ids[cut:])


def tuning_partition() -> Tuple[List[int], List[int]]:
    """(385 train, 100 tuning identities): the tuning identities are the first 100, in
    partition 0's shuffle order, that train in every one of ``BOARD_PARTITIONS``; the other
    385 of partition 0's training identities train."""
    in_every_train_set = set.intersection(*(set(partition(p)[0]) for p in BOARD_PARTITIONS))
    order = _shuffled(0)[:NUM_TRAIN_IDS]
    tuning = [pid for pid in order if pid in in_every_train_set][:NUM_VAL_IDS]
    return sorted(set(order) - set(tuning)), sorted(tuning)


def _check_split_id(split_id: int, count: int = NUM_SPLITS, name: str = 'cuhk01_seeded') -> None:
    if not 0 <= split_id < count:
        raise ConfigError(f'{name} split_id {split_id} is out of range: use 0-{count - 1} '
                          f'(partition = split_id // 2, direction = split_id % 2)')


def make_split(split_id: int, file_names: List[str],
               identities: Tuple[List[int], List[int]] = ()) -> Dict[str, list]:
    """torchreid's split structure (train/query/gallery lists of ``(relative path, pid,
    camid)`` and id counts) for ``split_id``, from the campus folder's file names.

    ``identities`` (train, evaluated) defaults to partition ``split_id // 2``; the tuning
    and validation datasets pass their own. ``split_id % 2`` picks the query view.
    """
    _check_split_id(split_id)
    train_ids, test_ids = identities or partition(split_id // 2)
    label = {pid: i for i, pid in enumerate(train_ids)}
    test_ids = set(test_ids)
    query_view = split_id % 2
    train, query, gallery = [], [], []
    for name in sorted(file_names):
        pid, camid = int(name[:4]), (int(name[4:7]) - 1) // 2
        if pid in label:
            train.append((name, label[pid], camid))
        elif pid in test_ids:
            (query if camid == query_view else gallery).append((name, pid - 1, camid))
    return dict(train=train, query=query, gallery=gallery, num_train_pids=len(label),
                num_query_pids=len(test_ids), num_gallery_pids=len(test_ids))


@register_dataset('cuhk01_seeded', LAYOUTS['cuhk01'])  # torchreid's images
class CUHK01(_torchreid.data.ImageDataset):
    """CUHK01 (Li et al., ACCV 2012): 971 identities, 2 camera views, 2 images per view.

    The same ``split_id`` (0-19) means the same people on every machine.
    """
    dataset_dir = 'cuhk01'

    @staticmethod
    def identities(split_id: int) -> Tuple[List[int], List[int]]:
        """(training, evaluated) identities of ``split_id``."""
        _check_split_id(split_id)
        return partition(split_id // 2)

    def __init__(self, root: str = '', split_id: int = 0, **kwargs) -> None:
        identities = self.identities(split_id)
        self.root = os.path.abspath(os.path.expanduser(root))
        self.dataset_dir = os.path.join(self.root, self.dataset_dir)
        self.campus_dir = os.path.join(self.dataset_dir, 'campus')
        names = (sorted(n for n in os.listdir(self.campus_dir) if n.endswith(SUFFIXES))
                 if os.path.isdir(self.campus_dir) else [])
        if len(names) != NUM_IDS * 4:
            raise DataError(f'cuhk01_seeded: expected {NUM_IDS * 4} images in {self.campus_dir}, '
                            f'found {len(names)}; torchreid expects {LAYOUT}')
        split = make_split(split_id, names, identities)
        resolve = lambda items: [(os.path.join(self.campus_dir, n), p, c) for n, p, c in items]  # noqa: E731
        super().__init__(resolve(split['train']), resolve(split['query']),
                         resolve(split['gallery']), **kwargs)


@register_dataset('cuhk01_tune', LAYOUTS['cuhk01'])
class CUHK01Tuning(CUHK01):
    """``cuhk01_tune``: for model selection. Trains on 385 identities and evaluates on 100
    that train in every board partition (:func:`tuning_partition`); split id 0 queries
    view A, 1 view B."""

    @staticmethod
    def identities(split_id: int) -> Tuple[List[int], List[int]]:
        _check_split_id(split_id, 2, 'cuhk01_tune')
        return tuning_partition()


@register_dataset('cuhk01_val', LAYOUTS['cuhk01'])
class CUHK01Validation(CUHK01):
    """``cuhk01_val``, superseded by ``cuhk01_tune``: split ``split_id`` trains on 385 of
    its partition's training identities and evaluates on the other 100. Those 100 are
    test identities of other partitions, so it is kept only so that its records reproduce."""

    @staticmethod
    def identities(split_id: int) -> Tuple[List[int], List[int]]:
        _check_split_id(split_id)
        return validation_partition(split_id // 2)
