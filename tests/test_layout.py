"""The package's layers: the commands (cli/) over the tools (tools/) over the library.
Imports point down only, so the library is usable without either and nothing imports a
command."""
import ast
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'jlml_plugin'


def _layer(module: str) -> int:
    """2 for a command, 1 for a tool, 0 for the library."""
    parts = module.split('.')
    return 2 if 'cli' in parts[1:2] else 1 if 'tools' in parts[1:2] else 0


def _imports(path: pathlib.Path):
    """The jlml_plugin modules a file imports, absolute."""
    module = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split('.')
            base = base[:len(base) - node.level + 1] if node.level else []
            target = '.'.join(base + ([node.module] if node.module else []))
            names = [f'{target}.{a.name}' for a in node.names]
            yield from (n for n in [target, *names] if n.startswith('jlml_plugin'))
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith('jlml_plugin'))


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_layers(path):
    module = '.'.join(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    upward = [name for name in _imports(path) if _layer(name) > _layer(module)]
    assert not upward, f'{module} imports from a layer above it: {upward}'


@pytest.mark.slow  # builds the wheel (seconds)
def test_the_wheel_holds_every_package_and_not_the_packing_helper(tmp_path):
    """An editable install finds any folder, so only the wheel shows a package left out
    of setup.py (cli/ and tools/ once were)."""
    # Built from a copy: a build/ folder left in the checkout would hide a missing package.
    source = tmp_path / 'source'
    source.mkdir()
    for name in ('setup.py', 'pyproject.toml', 'README.md'):
        shutil.copy(REPO / name, source / name)
    for name in ('jlml_plugin', 'configs'):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '-q', '-w', str(tmp_path), str(source)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob('*.whl'))).namelist())
    modules = {str(path.relative_to(REPO)) for path in PACKAGE.rglob('*.py')}
    assert modules - names == set()
    assert 'jlml_plugin/configs/jlml_synthetic.yaml' in names  # jlml-train's default
    assert not [name for name in names if 'gpukit_pack' in name]
