"""The scale of λ under the metric proximal step (docs/regularizers.md): a global column
stays at zero while the norm of the loss gradient on it is under λ_g, a local entry while
its gradient is under 2 λ_l times its group's L1 norm. This prints those two ratios'
quantiles for JLML on cuhk01_tune, at its random init and at a trained checkpoint, from the
mean gradient of the identity losses over the first BATCHES training batches (train mode),
so that the λ path spans "nothing off" to "everything off".
  OMP_NUM_THREADS=1 python results/sparsity/gradient_scale.py RUN_DIR OUT.json [BATCHES]"""
import glob, json, os, sys
import torch
torch.set_num_threads(1)
from jlml_plugin.config import get_cfg, load_config
from jlml_plugin.runner import build_datamanager, build_engine, build_model, place_model

run_dir, out_path = sys.argv[1], sys.argv[2]
batches = int(sys.argv[3]) if len(sys.argv) > 3 else 12
cfg = load_config(os.path.join(run_dir, 'config.yaml'), base=get_cfg())
cfg.data.root = '.data'
cfg.data.workers = 0
datamanager = build_datamanager(cfg)
data = [b for _, b in zip(range(batches), datamanager.train_loader)]


def ratios(model):
    model, regularizer = place_model(cfg, model, torch.device('cpu'), distributed=False)
    engine = build_engine(cfg, datamanager, model, regularizer)
    model.train()
    model.zero_grad()
    for batch in data:
        outputs = model(batch['img'])
        loss, _ = engine.compute_losses(outputs, batch['pid'])
        (loss / len(data)).backward()
    glob_w = model.global_branch.embed.fc.weight
    loc_w = model.local_branch.embed.fc.weight
    column_grad = glob_w.grad.norm(dim=0)                        # λ_g that keeps each column at 0
    stripes = loc_w.abs().reshape(loc_w.shape[0], cfg.jlml.num_stripes, -1)
    group_l1 = stripes.sum(-1, keepdim=True).expand_as(stripes).reshape(loc_w.shape)
    entry_ratio = loc_w.grad.abs() / (2 * group_l1)              # λ_l that keeps each entry at 0
    q = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    return dict(global_column_grad_norm=dict(zip(['min', 'q10', 'median', 'q90', 'max'],
                                                 torch.quantile(column_grad, q).tolist())),
                local_entry_grad_over_2_group_l1=dict(zip(['min', 'q10', 'median', 'q90', 'max'],
                                                          torch.quantile(entry_ratio.flatten()[::7], q).tolist())),
                global_column_norm_median=glob_w.norm(dim=0).median().item(),
                local_group_l1_median=stripes.sum(-1).median().item())


torch.manual_seed(cfg.train.seed)
out = dict(run_dir=run_dir, batches=batches, init=ratios(build_model(cfg, datamanager.num_train_pids)))
checkpoint = sorted(glob.glob(os.path.join(run_dir, 'model', 'model.pth.tar-*')),
                    key=lambda p: int(p.rsplit('-', 1)[1]))[-1]
model = build_model(cfg, datamanager.num_train_pids)
model.load_state_dict(torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict'])
out['trained'] = ratios(model)
out['trained']['checkpoint'] = checkpoint
with open(out_path, 'w') as f:
    json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))
