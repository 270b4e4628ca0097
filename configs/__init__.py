"""Configs shipped inside the wheel as ``jlml_plugin.configs`` (see setup.py)."""
