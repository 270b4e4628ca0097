"""The JLML network and its ablation variants, by torchreid model name."""
from typing import Callable, Dict

from .jlml import (JLML, JLMLArch, default_cfgs, jlml, jlml_global, jlml_independent,
                   jlml_local, jlml_resnet50, jlml_single_loss)

#: Every model the plugin registers in torchreid's factory.
MODELS: Dict[str, Callable[..., JLML]] = {
    'jlml': jlml,
    'jlml_global': jlml_global,
    'jlml_local': jlml_local,
    'jlml_single_loss': jlml_single_loss,
    'jlml_independent': jlml_independent,
    'jlml_resnet50': jlml_resnet50,
}

__all__ = ['JLML', 'JLMLArch', 'MODELS', 'default_cfgs', *MODELS]
