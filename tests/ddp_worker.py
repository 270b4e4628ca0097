"""Run by torchrun from test_distributed.py: a few DDP steps, or one epoch of indices."""
import json
import sys

import torch
import torch.distributed as dist

import jlml_plugin  # noqa: F401
from jlml_plugin import torchreid
from jlml_plugin.config import get_cfg, load_config
from jlml_plugin.runner import imagedata_kwargs
from jlml_plugin.distributed import (distributed_train_loader, init_from_env, is_main_process,
                                     shutdown)
from jlml_plugin.engine import JLMLEngine
from jlml_plugin.runner import Trainer


def main(mode, out, data_root, sampler):
    torch.set_num_threads(1)
    info = init_from_env('gloo', use_gpu=False)
    cfg = load_config(None, ['data.root', data_root, 'data.sources', "['synthreid_tiny']",
                             'data.targets', "['synthreid_tiny']", 'data.height', '64',
                             'data.width', '32', 'data.workers', '0',
                             'data.transforms', '[]',  # random flips would differ per process
                             'train.batch_size', '8', 'sampler.train_sampler', sampler,
                             'sampler.num_instances', '2', 'use_gpu', 'False',
                             'model.name', 'jlml', 'model.pretrained', 'False',
                             'jlml.stem_width', '8', 'jlml.global_widths', '[4, 8, 8, 16]',
                             'jlml.local_widths', '[4, 4, 8, 8]',
                             'jlml.dropout', '0.0'],  # dropout masks would differ per process
                    base=get_cfg())
    torchreid.utils.set_random_seed(cfg.train.seed)
    dm = torchreid.data.ImageDataManager(**imagedata_kwargs(cfg))
    loader = distributed_train_loader(dm.train_loader, cfg.sampler.train_sampler,
                                      cfg.train.batch_size, cfg.sampler.num_instances, seed=7)
    if mode == 'indices':
        loader.sampler.set_epoch(0)
        mine = list(loader.sampler)
        pids = [dm.train_loader.dataset.train[i][1] for i in mine]
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, dict(indices=mine, pids=pids, batches=len(loader)))
        if is_main_process():
            json.dump(dict(ranks=gathered, num_pids=dm.num_train_pids,
                           num_items=len(dm.train_loader.dataset.train)), open(out, 'w'))
        return
    model = Trainer.build_model(cfg, dm.num_train_pids)
    hook = Trainer.build_regularizer(cfg, model)
    model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torchreid.optim.build_optimizer(model, optim='sgd', lr=0.05)
    dm.train_loader = loader
    engine = JLMLEngine(dm, model, optimizer, use_gpu=False, regularizer=hook)
    engine.epoch = 0
    loader.sampler.set_epoch(0)
    initial = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
    for engine.batch_idx, batch in zip(range(3), loader):
        model.train()
        model.apply(_freeze_bn)  # BN statistics would differ per rank
        engine.forward_backward(batch)
    if is_main_process():
        final = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        torch.save(dict(initial=initial, final=final), out)


def _freeze_bn(module):
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        module.eval()


if __name__ == '__main__':
    main(*sys.argv[1:])
    shutdown()
