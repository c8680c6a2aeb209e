"""Data flows one way through the package: no module imports from a layer above its own, so
there are no cycles and each folder can be read without the ones above it."""

from __future__ import annotations

import ast
from pathlib import Path

import anydit

ROOT = Path(anydit.__file__).parent
# Lowest first. A module may import from its own layer and the ones before it.
LAYERS = [
    {"errors", "storage"},
    {"modalities"},
    {"config"},
    {"model"},
    {"flow"},
    {"sampling"},
    {"data"},
    {"train"},
    {"eval", "interop"},
    {"run_config", "demo", "cli", "__init__", "__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anydit"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("anydit.")]
    return found


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, target in _imports(path):
            rest = target.removeprefix("anydit").lstrip(".")
            if rest and _layer(rest) > _layer(own):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "\n".join(upward)
