"""jlml-plugin: JLML (Li, Zhu, Gong, IJCAI 2017) as a plugin for torchreid.

``import jlml_plugin`` is all it takes. It

* registers the JLML models (``jlml``, ``jlml_global``, ``jlml_local``,
  ``jlml_single_loss``, ``jlml_independent``, ``jlml_resnet50``) in torchreid's model
  factory, so ``build_model``, ``show_avai_models`` and ``FeatureExtractor`` know them;
* registers the ``synthreid`` datasets and CUHK01 with seeded, fixed splits as
  ``cuhk01_seeded`` and ``cuhk01_val`` (torchreid's ``cuhk01`` is left as it is);
* makes torchreid's ``evaluate_rank`` use the exact vectorised evaluator whenever its
  Cython one is not built, and fixes checkpoint loading on torch >= 2.6.

Registration is idempotent. ``jlml_plugin.torchreid`` is torchreid's namespace in
either layout (PyPI ``torchreid.reid`` or upstream ``torchreid``).
"""
from . import _torchreid
from ._torchreid import load_checkpoint, register_model
from ._torchreid import torchreid
from .data import register_datasets
from .engine import JLMLEngine, JLMLTripletEngine
from .features import CheckpointFeatureExtractor, load_feature_model
from .metrics import RankResult, evaluate_rank, evaluate_torchreid
from .models import MODELS, JLML, default_cfgs
from .models import jlml, jlml_global, jlml_independent, jlml_local, jlml_resnet50, jlml_single_loss
from .regularizers import (SparsityRegularizer, SparsityTerm, exclusive_group_lasso, group_lasso,
                           jlml_sparsity)

__version__ = '0.1.0'


def register() -> None:
    """Registers the datasets with torchreid and installs the fixes (the models register
    themselves, through ``@register_variant``, when ``jlml_plugin.models`` is imported).

    Runs on import; calling it again changes nothing. torchreid discovers no plugins,
    so ``import jlml_plugin`` is what registers them (no entry point is declared).
    """
    register_datasets()
    _torchreid.install_fixes()
    _torchreid.install_evaluator(evaluate_torchreid)


register()

__all__ = ['CheckpointFeatureExtractor', 'JLML', 'JLMLEngine', 'JLMLTripletEngine', 'MODELS', 'RankResult', 'SparsityRegularizer', 'SparsityTerm', 'default_cfgs',
           'evaluate_rank', 'exclusive_group_lasso', 'group_lasso', 'jlml', 'jlml_global',
           'jlml_independent', 'jlml_local', 'jlml_resnet50', 'jlml_single_loss',
           'jlml_sparsity', 'load_checkpoint', 'load_feature_model', 'register', 'register_model', 'torchreid']
