"""The README's Python example: JLML through torchreid's own API, on the synthetic set."""
import jlml_plugin  # registers 'jlml' & co. with torchreid
from jlml_plugin import torchreid  # torchreid's namespace, whichever layout is installed

dm = torchreid.data.ImageDataManager(root='~/.cache/jlml_plugin', sources='synthreid',
                                     height=64, width=32, workers=0, use_gpu=False)
model = torchreid.models.build_model('jlml', dm.num_train_pids, loss='softmax', pretrained=False)
optimizer = torchreid.optim.build_optimizer(model, optim='adam', lr=1e-3)
engine = jlml_plugin.JLMLEngine(dm, model, optimizer, use_gpu=False,  # one loss per branch
                                regularizer=jlml_plugin.jlml_sparsity(model))  # + sparsity
result = engine.run(save_dir='log/python_api', max_epoch=1, ranks=[1, 5])
print(result.results['synthreid'].as_dict((1, 5)))
