"""The strengths of issue #25's controls, matched to JLML's structured terms: a control
term C on a feature layer W gets the weight at which its pull on W at JLML's random init
is as strong as the structured term's at the chosen λ,

    λ_C · ‖∇C(W₀)‖_F = λ · ‖∇R(W₀)‖_F

(group LASSO on the global layer, exclusive group LASSO on the local one; ridge ½‖W‖²
and L1 Σ|W| as the controls). The rule is configs/leaderboard/sparsity_controls.yaml's,
written before its runs; this prints the weights it quotes.
  python results/sparsity/matched_controls.py LAMBDA_G LAMBDA_L OUT.json"""
import json, sys
import torch
from jlml_plugin.models.jlml import jlml
from jlml_plugin.regularizers import REGULARIZERS, jlml_terms

lambda_g, lambda_l, out_path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
torch.manual_seed(1)
model = jlml(num_classes=385)  # cuhk01_tune's training identities, the protocol's seed
params = dict(model.named_parameters())
out = dict(lambda_global=lambda_g, lambda_local=lambda_l, terms={})
for term, lam in zip(jlml_terms(model), (lambda_g, lambda_l)):
    weight = params[term.param].detach().clone().requires_grad_(True)

    def pull(kind):
        grad, = torch.autograd.grad(REGULARIZERS[kind](weight, term.groups), weight)
        return grad.norm().item()

    structured = pull(term.kind)
    out['terms'][term.name] = dict(
        kind=term.kind, shape=list(weight.shape), structured_pull=structured,
        **{f'{kind}_pull': pull(kind) for kind in ('ridge', 'l1')},
        **{f'{kind}_weight': lam * structured / pull(kind) for kind in ('ridge', 'l1')})
with open(out_path, 'w') as f:
    json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))
