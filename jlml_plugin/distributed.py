"""Training across processes with torchrun and DistributedDataParallel.

``torchrun --nproc_per_node=N -m jlml_plugin.cli.train --config-file ...`` starts N ranks;
each reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment (multi-node:
torchrun's ``--nnodes``/``--node_rank``/``--rdzv-endpoint`` flags). ``train.batch_size``
is the *global* batch: each rank takes ``batch_size / world_size`` samples per step, so
a run's samples per step do not depend on how many processes share it.

Samplers give every rank the same number of steps (DDP hangs otherwise) and never the
same image to two ranks in one epoch:

* :class:`DistributedIdentitySampler`: whole ``P x K`` identity groups per rank, from
  one global sequence shared through the seed, for triplet losses;
* :func:`distributed_random_sampler`: torch's ``DistributedSampler`` with a shared seed.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from .errors import ConfigError

__all__ = ['DistInfo', 'launched_by_torchrun', 'init_from_env', 'is_main_process', 'barrier',
           'shutdown', 'get_world_size', 'get_rank', 'DistributedIdentitySampler',
           'distributed_random_sampler', 'per_rank_batch', 'distributed_train_loader', 'unwrap']


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def launched_by_torchrun() -> bool:
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def init_from_env(backend: str = 'auto', use_gpu: bool = True) -> DistInfo:
    """Joins the process group torchrun set up, and picks this rank's device."""
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    cuda = use_gpu and torch.cuda.is_available()
    if backend == 'auto':
        backend = 'nccl' if cuda else 'gloo'
    if backend == 'nccl' and not cuda:
        raise ConfigError('dist.backend nccl needs a GPU; use gloo on the CPU')
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device('cuda', local_rank) if cuda else torch.device('cpu')
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if cuda else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leaves the process group. Left to interpreter exit, gloo's threads can abort a rank
    ("terminate called without an active exception") after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DataParallel / DistributedDataParallel."""
    return model.module if isinstance(model, (torch.nn.DataParallel,
                                              torch.nn.parallel.DistributedDataParallel)) else model


def per_rank_batch(global_batch: int, replicas: int, num_instances: int = 1) -> int:
    """``global_batch / replicas``, checked before any work so bad sizes fail, not hang."""
    if global_batch % replicas:
        raise ConfigError(f'train.batch_size {global_batch} cannot be split evenly across '
                          f'{replicas} processes; use a multiple of {replicas}')
    batch = global_batch // replicas
    if batch % num_instances:
        raise ConfigError(f'the per-process batch {batch} (train.batch_size {global_batch} / '
                          f'{replicas} processes) must be a multiple of sampler.num_instances '
                          f'{num_instances}; use train.batch_size = a multiple of '
                          f'{replicas * num_instances}')
    return batch


class DistributedIdentitySampler(Sampler):
    """Random ``P x K`` identity batches, split across ranks by whole identity groups.

    Each epoch, one global sequence of batches of ``P * world_size`` distinct identities
    (``K`` images each) is drawn from ``seed + epoch``, identically on every rank; rank
    ``r`` takes groups ``[r*P, (r+1)*P)`` of each. Identities are shuffled round by round
    (first group of every identity, then second groups, ...), so every identity appears in
    every epoch; only if the last batch cannot be completed from unused groups does it
    reuse groups from the epoch's start. Identities with fewer than ``K`` images are drawn
    with replacement, as in torchreid's ``RandomIdentitySampler``.

    Args:
        data_source: torchreid items ``(path, pid, camid, ...)``.
        batch_size: the per-rank batch, a multiple of ``num_instances``.
        num_instances: ``K``, images per identity in a batch.
        num_replicas, rank: default to the process group's.
        seed: shared by all ranks.
    """

    def __init__(self, data_source: Sequence, batch_size: int, num_instances: int,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 seed: int = 0) -> None:
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        self.num_instances = num_instances
        self.pids_per_rank = per_rank_batch(batch_size * self.num_replicas, self.num_replicas,
                                            num_instances) // num_instances
        self.seed, self.epoch = seed, 0
        self.index_by_pid: Dict[int, List[int]] = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_by_pid[item[1]].append(index)
        self.pids = sorted(self.index_by_pid)  # the same order on every rank
        needed = self.pids_per_rank * self.num_replicas
        if len(self.pids) < needed:
            raise ConfigError(f'{len(self.pids)} training identities cannot fill batches of '
                              f'{needed} identities ({self.num_replicas} processes x '
                              f'{self.pids_per_rank}); lower train.batch_size or raise '
                              f'sampler.num_instances')
        self._batches = self._global_batches()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches = self._global_batches()

    def _global_batches(self) -> List[List[List[int]]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        k = self.num_instances
        groups: Dict[int, List[List[int]]] = {}
        for pid in self.pids:
            idxs = list(self.index_by_pid[pid])
            if len(idxs) < k:
                idxs = [rng.choice(idxs) for _ in range(k)]
            rng.shuffle(idxs)
            groups[pid] = [idxs[i:i + k] for i in range(0, len(idxs) - k + 1, k)]
        sequence = []
        for round_ in range(max(len(g) for g in groups.values())):
            pids = [pid for pid in self.pids if len(groups[pid]) > round_]
            rng.shuffle(pids)
            sequence += [(pid, groups[pid][round_]) for pid in pids]
        per_batch = self.pids_per_rank * self.num_replicas
        batches, current, deferred = [], [], []
        for entry in sequence:
            pending, deferred = deferred + [entry], []
            for pid, group in pending:
                if any(pid == p for p, _ in current):
                    deferred.append((pid, group))  # one group per identity per batch
                    continue
                current.append((pid, group))
                if len(current) == per_batch:
                    batches.append(current)
                    current = []
        leftover = current + deferred
        seen = {pid for batch in batches for pid, _ in batch}
        if any(pid not in seen for pid, _ in leftover):
            # Complete a last batch with the epoch's first groups, so no identity is missed.
            last = []
            for pid, group in leftover + sequence:
                if len(last) == per_batch:
                    break
                if all(pid != p for p, _ in last):
                    last.append((pid, group))
            batches.append(last)
        return [[group for _, group in batch] for batch in batches]

    def __iter__(self) -> Iterator[int]:
        lo, hi = self.rank * self.pids_per_rank, (self.rank + 1) * self.pids_per_rank
        for batch in self._batches:
            for group in batch[lo:hi]:
                yield from group

    def __len__(self) -> int:
        return len(self._batches) * self.pids_per_rank * self.num_instances


def distributed_random_sampler(data_source: Sequence, seed: int = 0,
                               num_replicas: Optional[int] = None,
                               rank: Optional[int] = None) -> DistributedSampler:
    """A shuffled, disjoint, equal-length share of the data per rank (tail dropped)."""
    return DistributedSampler(data_source, num_replicas=num_replicas, rank=rank, shuffle=True,
                              seed=seed, drop_last=True)


def distributed_train_loader(loader: DataLoader, sampler_name: str, global_batch: int,
                             num_instances: int, seed: int) -> DataLoader:
    """``loader`` (built by torchreid for one process) rebuilt with a per-rank sampler."""
    replicas = get_world_size()
    identity = sampler_name == 'RandomIdentitySampler'
    batch = per_rank_batch(global_batch, replicas, num_instances if identity else 1)
    dataset = loader.dataset
    if identity:
        sampler = DistributedIdentitySampler(dataset.train, batch, num_instances, seed=seed)
    elif sampler_name in ('RandomSampler', 'SequentialSampler'):
        sampler = distributed_random_sampler(dataset, seed=seed)
        if sampler_name == 'SequentialSampler':
            sampler.shuffle = False
    else:
        raise ConfigError(f'sampler {sampler_name!r} has no distributed version; use '
                          f'RandomSampler, SequentialSampler or RandomIdentitySampler')
    return DataLoader(dataset, batch_size=batch, sampler=sampler,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      drop_last=True, persistent_workers=loader.num_workers > 0)
