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
    {"encoders"},
    {"modalities"},
    {"config"},
    {"model"},
    {"flow"},
    {"sampling"},
    {"data"},
    {"train"},
    {"eval", "interop", "compress"},
    {"run_config", "demo", "demo_strings", "demo_conditioning", "cli", "serve", "__init__"},
    {"__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module} is in no layer; add it to LAYERS")


def _imports(path: Path, own: str) -> list[tuple[int, str]]:
    """(line, module) of every import of the package: absolute, relative (resolved against
    ``own``) and ``from anydit import X`` (the package's ``__init__``)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the containing package, then up level - 1 more
                package = own.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(["anydit", *base, *([node.module] if node.module else [])])
                found.append((node.lineno, module))
            elif node.module and (node.module == "anydit" or node.module.startswith("anydit.")):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("anydit")]
    return found


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, target in _imports(path, own):
            rest = target.removeprefix("anydit").lstrip(".") or "__init__"
            if _layer(rest) > _layer(own):
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, "\n".join(upward)
