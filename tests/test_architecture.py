"""The package's layers (docs/architecture.md), read off its imports with ``ast``.

Run as a script to print the import levels and the largest modules:
``python tests/test_architecture.py``.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "captum_similarity"

#: Layer of each module, by dotted-name prefix (longest prefix wins). A module
#: imports modules of its own layer or of lower ones only.
LAYERS: Dict[str, int] = {
    "captum_similarity._utils": 0,
    "captum_similarity._version": 0,
    # wrapper and similarity functions, and the models and data they run on
    "captum_similarity.similarity": 1,
    "captum_similarity.head": 1,
    "captum_similarity.siamese": 1,
    "captum_similarity.branches": 1,
    "captum_similarity.candidates": 1,
    "captum_similarity.models": 1,
    "captum_similarity.data": 1,
    # engines
    "captum_similarity.lrp": 2,
    # methods
    "captum_similarity.embedding_gradcam": 3,
    "captum_similarity.decomposition": 3,
    "captum_similarity.relevance_pairing": 3,
    "captum_similarity.pairwise_matching": 3,
    "captum_similarity.rise": 3,
    # metrics, figures and training (which uses methods as losses)
    "captum_similarity.metrics": 4,
    "captum_similarity.figures": 4,
    "captum_similarity.training": 4,
    # SANE's attribute explanations: a saliency method (its default) and an attribute head
    "captum_similarity.attributes": 4,
    # the registry of methods
    "captum_similarity.explainers": 5,
    # applications: the report draws a results dict (below the registry's
    # level); the command line runs the registry and the report
    "captum_similarity.demo": 6,
    "captum_similarity.report": 6,
    "captum_similarity.job": 6,
    "captum_similarity.runs": 6,
    "captum_similarity.cli": 6,
    "captum_similarity.__main__": 6,
}
METHODS = {name for name, layer in LAYERS.items() if layer == 3}
MAX_LEVELS = 7


def _modules() -> Dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> List[Tuple[str, str]]:
    """``(imported module, imported name)`` for every import of the package
    in module ``name`` (the name is "" for ``import x``)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parts = parts[: len(parts) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.extend((target, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            out.extend((alias.name, "") for alias in node.names)
    return [(t, n) for t, n in out if t.split(".")[0] in ("captum_similarity", "captum")]


def _edges(name: str) -> Set[str]:
    """Modules of the package that ``name`` imports."""
    edges = set()
    for target, imported in _imports(name):
        full = f"{target}.{imported}"
        module = full if full in MODULES else target
        if module in MODULES and module != name:
            edges.add(module)
    return edges


def _layer(name: str) -> int:
    keys = [k for k in LAYERS if name == k or name.startswith(k + ".")]
    if not keys:
        raise AssertionError(f"module {name} has no layer in LAYERS; add it")
    return LAYERS[max(keys, key=len)]


@lru_cache(maxsize=None)
def level(name: str) -> int:
    """1 + the longest chain of imports below ``name`` (package ``__init__``
    modules, which only re-export, are not counted)."""
    below = [d for d in _edges(name) if not _is_package(d)]
    return 1 + max((level(d) for d in below), default=0)


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "captum_similarity":
            _layer(name)


def test_imports_run_downward_only():
    upward = []
    for name in MODULES:
        if _is_package(name):
            continue  # re-exports
        for dep in _edges(name):
            if _layer(dep) > _layer(name) and not _is_package(dep):
                upward.append(f"{name} (layer {_layer(name)}) -> {dep} (layer {_layer(dep)})")
    assert not upward, "imports running up a layer:\n" + "\n".join(upward)


def test_helpers_import_only_helpers_and_methods_not_one_another():
    for name in MODULES:
        deps = _edges(name)
        if name.startswith("captum_similarity._utils"):
            assert all(d.startswith("captum_similarity._utils") for d in deps), (name, deps)
        if name in METHODS:
            assert not deps & (METHODS - {name}), (name, deps & METHODS)
            assert "captum_similarity.explainers" not in deps, name


def test_no_private_name_crosses_modules():
    crossing = [
        f"{name} imports {target}.{imported}"
        for name in MODULES
        for target, imported in _imports(name)
        if target.startswith("captum_similarity")
        and imported.startswith("_")
        and not imported.startswith("__")
        and f"{target}.{imported}" not in MODULES
    ]
    assert not crossing, crossing


def test_captum_base_classes_come_from_the_public_path():
    private = [
        name
        for name in MODULES
        for target, _ in _imports(name)
        if target.startswith("captum.attr._utils.attribution")
    ]
    assert not private, private


def test_at_most_seven_import_levels():
    """Counted from every module, ``__main__`` (which only starts ``cli``) too."""
    deepest = max((n for n in MODULES if not _is_package(n)), key=level)
    assert level(deepest) <= MAX_LEVELS, f"{deepest} is {level(deepest)} levels deep"


def _report() -> str:
    counted = [n for n in MODULES if not _is_package(n)]
    deepest = max(counted, key=level)
    lines = [f"{level(deepest)} import levels (deepest: {deepest})"]
    for depth in range(level(deepest), 0, -1):
        names = sorted(n.replace("captum_similarity.", "") for n in counted if level(n) == depth)
        lines.append(f"  level {depth}: {', '.join(names)}")
    sizes = sorted(((len(MODULES[n].read_text().splitlines()), n) for n in MODULES), reverse=True)
    lines.append("largest modules: " + ", ".join(f"{n} {s}" for s, n in sizes[:6]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(_report() + "\n")
