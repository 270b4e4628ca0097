"""The JLML network and its ablation variants, registered by torchreid model name."""
from .jlml import (JLML, JLMLArch, jlml, jlml_global, jlml_independent, jlml_local,
                   jlml_resnet50, jlml_single_loss)
from .registry import MODELS, build, check_height, check_model, default_cfgs, register_variant

__all__ = ['JLML', 'JLMLArch', 'MODELS', 'build', 'check_height', 'check_model', 'default_cfgs',
           'register_variant', 'jlml', 'jlml_global', 'jlml_local', 'jlml_single_loss', 'jlml_independent', 'jlml_resnet50']
