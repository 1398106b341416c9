"""Every stage lists, as DVC deps, the segdet modules it runs: a change to one of them reruns the stage."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = ROOT / "src" / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.Module, everywhere: bool):
    """Import statements of a module: all of them, or those run on import (not inside functions or classes)."""
    if everywhere:
        yield from ast.walk(tree)
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _segdet_imports(script: Path) -> set[Path]:
    """segdet modules a stage script imports (anywhere in it), then what those import when loaded, transitively.

    Imports inside library functions are not followed: the CLI, for one, imports every command's module
    lazily, and a stage runs only its own."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        tree = ast.parse(path.read_text())
        for node in _imports(tree, everywhere=path == script):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] != "segdet":
                    continue
                f = _module_file(name)
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_every_segdet_module_it_imports(stage):
    spec = STAGES[stage]
    script = ROOT / spec["cmd"].split()[1]
    deps = {d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])}
    assert str(script.relative_to(ROOT)) in deps
    needed = {str(f.relative_to(ROOT)) for f in _segdet_imports(script) if f.name != "__init__.py"}
    missing = sorted(needed - deps)
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not list: {missing}"
