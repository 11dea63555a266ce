"""The package's shape: layers import downward only, no import cycle, and every module imports
cleanly on its own."""

import ast
import multiprocessing
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "livecc"

# Lowest first. A module may import from its own layer or any below; livecc/__init__ sits on top.
LAYERS = [
    {"livecc.jsonl", "livecc.chat", "livecc.cache", "livecc.kernels"},
    {"livecc.qwen_vl"},
    {"livecc.models"},
    {"livecc.data"},
    {"livecc.train", "livecc.infer"},
    {"livecc.eval"},
    {"livecc.demo", "livecc.bench", "livecc.serve"},
    {"livecc.cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in ROOT.rglob("*.py"))


def layer(module: str) -> int | None:
    for depth, names in enumerate(LAYERS):
        if any(module == n or module.startswith(n + ".") for n in names):
            return depth
    return None  # the package root


def imports(module: str) -> list[tuple[str, bool]]:
    """``(imported livecc module, at module level)`` for every import of livecc in ``module``."""
    base_path = ROOT.parent / module.replace(".", "/")
    path = base_path / "__init__.py" if base_path.is_dir() else base_path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(n, id(node) in top_level) for n in names if n == "livecc" or n.startswith("livecc.")]
    return found


@pytest.mark.parametrize("module", MODULES)
def test_imports_run_downward_only(module):
    here = layer(module)
    for target, _ in imports(module):
        there = layer(target)
        if here is None or there is None:  # the package root may import anything below it; none imports it
            assert here is None, f"{module} imports the package root {target}"
            continue
        assert there <= here, f"{module} (layer {here}) imports {target} (layer {there}), which runs back up"


def test_no_import_cycle():
    """No circle through any import: at module level, inside a function or under TYPE_CHECKING (a
    circle hidden in a function is still two modules that cannot be understood apart)."""
    graph = {m: {t for t, _ in imports(m) if t != m} for m in MODULES}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            assert state.get(t) != 1, f"import cycle: {' -> '.join([*path, m, t])}"
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [])


def _import_alone(module: str) -> None:
    import importlib

    importlib.import_module(module)


@pytest.mark.skipif(sys.platform != "linux", reason="forks a clean child per module")
def test_every_module_imports_on_its_own():
    """Each module in a child forked before any livecc import (the heavy third-party imports done
    once in the parent), so no module leans on another having been imported first."""
    import torch  # noqa: F401
    import transformers.modeling_utils  # noqa: F401

    context = multiprocessing.get_context("fork")
    failed = []
    for module in (m for m in MODULES if not m.endswith(".__main__")):  # a __main__ runs its program
        child = context.Process(target=_import_alone, args=(module,))
        child.start()
        child.join(120)
        if child.exitcode != 0:
            failed.append(module)
    assert not failed, f"modules that fail to import on their own: {failed}"
