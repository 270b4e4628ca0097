"""jlml-plugin: JLML (IJCAI 2017) person re-identification as a plugin for torchreid."""
from setuptools import find_packages, setup

setup(
    # Every package under jlml_plugin/ (the library, cli/, tools/, models/, data/), found so
    # that a new one cannot be left out of the wheel; and the configs.
    packages=find_packages(include=['jlml_plugin', 'jlml_plugin.*']) + ['jlml_plugin.configs'],
    # The top-level configs/ folder ships inside the package, so `jlml-train` finds its
    # default config after a plain `pip install`.
    package_dir={'jlml_plugin.configs': 'configs'},
    package_data={'jlml_plugin.configs': ['*.yaml', 'leaderboard/*.yaml', 'ablations/*.yaml']},
)
