"""The package's layers: the commands (cli/) over the tools (tools/) over the library.
Imports point down only, so the library is usable without either and nothing imports a
command."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'jlml_plugin'


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
