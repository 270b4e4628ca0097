"""Fixed-seed synthetic run: per-step losses (TensorBoard scalars at full float precision),
the final metrics and a checksum of the final weights. Run before and after a refactor."""
import glob, hashlib, json, os, sys, tempfile
import torch
torch.set_num_threads(1)
import jlml_plugin
from jlml_plugin.data.synthetic import generate
from jlml_plugin.cli import train as train_cli
root = tempfile.mkdtemp()
generate(root, 'synthreid_tiny', 0)
out = {}
for loss in ('softmax', 'triplet'):
    save = os.path.join(root, 'log_' + loss)
    opts = ['data.root', root, 'data.sources', "['synthreid_tiny']", 'data.targets', "['synthreid_tiny']",
            'data.height', '64', 'data.width', '32', 'data.workers', '0', 'data.save_dir', save,
            'train.max_epoch', '2', 'train.batch_size', '8', 'train.print_freq', '1', 'test.batch_size', '50',
            'test.ranks', '[1, 5]', 'model.pretrained', 'False', 'loss.name', loss,
            'jlml.reg_global.weight', '1.5e-2', 'jlml.reg_local.weight', '1.5e-5']  # the defaults before

    if loss == 'triplet':
        opts += ['sampler.train_sampler', 'RandomIdentitySampler', 'sampler.num_instances', '2']
    assert train_cli.main(opts) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(save); acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in sorted(acc.Tags()['scalars'])
               if not tag.endswith('/time')}
    ck = sorted(glob.glob(os.path.join(save, 'model', 'model.pth.tar-*')))[-1]
    state = torch.load(ck, weights_only=True)
    h = hashlib.sha256()
    for k, v in sorted(state['state_dict'].items()):
        h.update(k.encode()); h.update(v.cpu().numpy().tobytes())
    out[loss] = dict(scalars=scalars, weights_sha256=h.hexdigest(), rank1=state['rank1'])
json.dump(out, open(sys.argv[1], 'w'), indent=1)
print({k: (v['weights_sha256'][:16], v['rank1'], len(v['scalars'])) for k, v in out.items()})
