"""jlml-plugin: JLML (IJCAI 2017) person re-identification as a plugin for torchreid."""
from setuptools import setup

setup(
    packages=['jlml_plugin', 'jlml_plugin.models', 'jlml_plugin.data', 'jlml_plugin.configs'],
    # The top-level configs/ folder ships inside the package, so `jlml-train` finds its
    # default config after a plain `pip install`.
    package_dir={'jlml_plugin.configs': 'configs'},
    package_data={'jlml_plugin.configs': ['*.yaml', 'leaderboard/*.yaml', 'ablations/*.yaml']},
)
