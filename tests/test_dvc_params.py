"""Every stage lists, as DVC params, exactly the ``params.yaml`` keys its code reads: a change to one of them reruns
the stage, and a change to any other key (``base.device`` for the data stages, ``base.seed`` for the eval stages
...) does not.

What a stage reads is found in its code, not assumed: every ``load_section(<section>, ...)`` of the stage script,
then each use of that section object followed through attribute reads (``cfg.det.source``), aliases
(``seg = cfg.seg``) and calls into segdet functions (``prepare_data(cfg, ...)`` reads what ``prepare_data`` reads of
its ``cfg``), transitively. Anything the analysis cannot follow (an object handed to a class, a builtin, a method)
counts as reading all of it, so the read set errs on the side of listing too much, never too little;
``flatten(cfg, ...)`` (the params an MLflow run logs) is not a read. ``test_dvc_status_reruns_only_the_stages_that_read_a_changed_key``
then checks the result with DVC itself.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from segdet.config import SECTIONS
from tests.conftest import stage_script
from tests.test_dvc_deps import _lock_code_as_is, _module_file

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
Key = tuple[str, ...]

#: calls that only log parameters (to MLflow): what they touch is not read by the stage's outputs
LOGGING_ONLY = {("segdet.schema", "flatten")}


def _opaque_reads() -> dict[tuple[str, str, str], set[Key]]:
    """(module, function, parameter) -> what the function reads of that parameter, where the analysis cannot follow
    it: ``segdet.inference.settings_of`` keeps the ``proposals`` section in ``PredictSettings`` and later reads
    ``PROPOSAL_KEYS`` of it (``settings_config``: the served R-CNN's search settings)."""
    out = {}
    try:
        from segdet.inference import PROPOSAL_KEYS
    except ImportError:
        return out
    out[("segdet.inference", "settings_of", "proposals")] = {(k,) for k in PROPOSAL_KEYS}
    return out


# --------------------------------------------------------------------------------------------------------------
# the params schema: section dataclasses and their leaf keys


def _fields(cls) -> dict[str, type | None]:
    """Field name -> nested section dataclass (or None for a leaf value)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None
            for f in dataclasses.fields(cls)}


def _leaves(key: Key) -> set[str]:
    """The dotted leaf keys under ``key`` (``("data", "split")`` -> ``data.split.train``, ...)."""
    cls = SECTIONS[key[0]]
    for part in key[1:]:
        cls = _fields(cls)[part]
        if cls is None:
            return {".".join(key)}

    def walk(c, prefix):
        return set().union(*(walk(sub, f"{prefix}.{n}") if sub else {f"{prefix}.{n}"} for n, sub in _fields(c).items()))

    return walk(cls, ".".join(key))


def _normalise(key: Key) -> Key | None:
    """``key`` cut to the fields of the schema: an attribute that is no field (a branch for another section, as in
    ``ev.tta`` of a detection eval section) reads nothing, a dunder reads the whole object."""
    cls = SECTIONS.get(key[0])
    if cls is None:
        return key
    for i, part in enumerate(key[1:], start=1):
        fields = _fields(cls)
        if part not in fields:
            return key[:i] if part.startswith("__") else None
        cls = fields[part]
        if cls is None:
            return key[: i + 1]
    return key


# --------------------------------------------------------------------------------------------------------------
# the analysis


@functools.cache
def _parse(path: Path) -> ast.Module:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node  # type: ignore[attr-defined]
    return tree


@functools.cache
def _imports(path: Path) -> dict[str, tuple[str, str | None]]:
    """Names a module imports from segdet: name -> (module, attribute) (attribute None: the name is a module)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segdet" and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out[a.asname or a.name] = (sub, None) if _module_file(sub) else (node.module, a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "segdet" and a.asname:
                    out[a.asname] = (a.name, None)
    return out


def _function(module: str, name: str) -> tuple[ast.FunctionDef, Path] | None:
    """The top-level function ``name`` of segdet module ``module`` (following a re-export), or None."""
    path = _module_file(module)
    if path is None:
        return None
    for node in _parse(path).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node, path
    if name in _imports(path) and _imports(path)[name][1]:
        return _function(*_imports(path)[name])
    return None


def _callee(call: ast.Call, path: Path) -> tuple[str, str] | None:
    """(module, function) a call goes to, when it is a segdet function (or one of the script itself)."""
    func, imports = call.func, _imports(path)
    if isinstance(func, ast.Name):
        if func.id in imports and imports[func.id][1]:
            return imports[func.id]  # type: ignore[return-value]
        if any(isinstance(n, ast.FunctionDef) and n.name == func.id for n in _parse(path).body):
            return (str(path), func.id)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in imports:
        module, attr = imports[func.value.id]
        if attr is None:
            return (module, func.attr)
    return None


def _lookup(callee: tuple[str, str]) -> tuple[ast.FunctionDef, Path] | None:
    module, name = callee
    if module.endswith(".py"):  # a function of the script itself
        path = Path(module)
        return next(((n, path) for n in _parse(path).body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    return _function(module, name)


def _parameter(fn: ast.FunctionDef, call: ast.Call, arg: ast.AST) -> str | None:
    """The parameter of ``fn`` that argument node ``arg`` of ``call`` binds, or None (``*args``, ``**kwargs``)."""
    positional = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if arg in call.args:
        i = call.args.index(arg)
        if any(isinstance(a, ast.Starred) for a in call.args[: i + 1]) or i >= len(positional):
            return None
        return positional[i]
    for kw in call.keywords:
        if kw.value is arg and kw.arg and kw.arg in positional + [a.arg for a in fn.args.kwonlyargs]:
            return kw.arg
    return None


class Reads:
    """The params keys one stage reads."""

    def __init__(self):
        self.keys: set[Key] = set()
        self.problems: list[str] = []
        self._seen: set[tuple[int, str, Key]] = set()

    def section_loads(self, script: Path) -> None:
        """Start from every ``load_section(...)`` of a stage script."""
        tree = _parse(script)
        loaders = {n for n, (m, a) in _imports(script).items() if (m, a) == ("segdet.config", "load_section")}
        raw = {n for n, (m, a) in _imports(script).items() if (m, a) == ("segdet.config", "load_params")}
        dicts = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                 and isinstance(node.value.func, ast.Name) and node.value.func.id in raw
                 for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):  # the raw params dict goes to load_section only (no params["x"]["y"] reads)
            if isinstance(node, ast.Name) and node.id in dicts and isinstance(node.ctx, ast.Load):
                call = node.parent
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in loaders
                        and node in call.args[1:]):
                    self.problems.append(f"{script.name}:{node.lineno}: the params dict {node.id!r} read directly, "
                                         "not through load_section")
        bindings: dict[str, Key] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in loaders:
                if not (node.args and isinstance(node.args[0], ast.Constant)):
                    self.problems.append(f"{script.name}:{node.lineno}: load_section of a section named at run time")
                    continue
                self._use(node, (node.args[0].value,), script, bindings)
        self._follow(tree, script, bindings)

    def _follow(self, scope: ast.AST, path: Path, bindings: dict[str, Key]) -> None:
        """Every use of the names in ``bindings`` inside ``scope`` (aliases found on the way are followed too)."""
        done: set[int] = set()
        while True:
            todo = [n for n in ast.walk(scope) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
                    and n.id in bindings and id(n) not in done]
            if not todo:
                return
            for node in todo:
                done.add(id(node))
                self._use(node, bindings[node.id], path, bindings)

    def _use(self, node: ast.AST, key: Key, path: Path, bindings: dict[str, Key]) -> None:
        """``node`` evaluates to the params object ``key``: record what its context reads of it."""
        parent = getattr(node, "parent", None)
        while isinstance(parent, ast.Attribute) and parent.value is node:  # cfg.det.source
            key, node, parent = (*key, parent.attr), parent, getattr(parent, "parent", None)
        while (isinstance(parent, ast.IfExp) and node is not parent.test) or isinstance(parent, ast.BoolOp):
            node, parent = parent, getattr(parent, "parent", None)  # x if c else None, a or b: the value flows on
        if isinstance(parent, ast.Assign) and parent.value is node:
            names = [t.id for t in parent.targets if isinstance(t, ast.Name)]
            if names and len(names) == len(parent.targets):
                for name in names:
                    bindings.setdefault(name, key)
                return
        if (isinstance(parent, ast.Tuple) and isinstance(getattr(parent, "parent", None), ast.Assign)
                and parent.parent.value is parent):  # base, cfg = load_section(...), load_section(...)
            target = parent.parent.targets[0]
            if isinstance(target, ast.Tuple) and len(target.elts) == len(parent.elts):
                t = target.elts[parent.elts.index(node)]
                if isinstance(t, ast.Name):
                    bindings.setdefault(t.id, key)
                    return
        if isinstance(parent, ast.keyword):
            parent = getattr(parent, "parent", None)
            arg = node
        else:
            arg = node
        if isinstance(parent, ast.Call) and parent.func is not node:
            callee = _callee(parent, path)
            if callee in LOGGING_ONLY:
                return
            found = _lookup(callee) if callee else None
            param = _parameter(found[0], parent, arg) if found else None
            if found and param:
                module = callee[0] if not callee[0].endswith(".py") else "<script>"
                opaque = _opaque_reads().get((module, callee[1], param))
                if opaque is not None:
                    self._add(*((*key, *k) for k in opaque))
                    return
                self._call(found[0], found[1], param, key)
                return
        self._add(key)  # read as a whole: a leaf value, or an object handed where the analysis cannot follow

    def _call(self, fn: ast.FunctionDef, path: Path, param: str, key: Key) -> None:
        if (id(fn), param, key) in self._seen:
            return
        self._seen.add((id(fn), param, key))
        self._follow(fn, path, {param: key})

    def _add(self, *keys: Key) -> None:
        for key in keys:
            key = _normalise(key)
            if key is not None:
                self.keys.add(key)


def stage_reads(stage: str) -> Reads:
    reads = Reads()
    reads.section_loads(ROOT / stage_script(STAGES[stage]["cmd"])[0])
    return reads


def _listed(stage: str) -> list[str]:
    out = []
    for p in STAGES[stage].get("params", []) or []:
        if isinstance(p, str):
            out.append(p)
        else:  # {params file: [keys]}
            for file, keys in p.items():
                assert file == "params.yaml", f"{stage}: params from {file}"
                out += keys
    return out


CHECKED = sorted(s for s, spec in STAGES.items() if not spec.get("always_changed"))  # track: runs every time anyway


@pytest.mark.parametrize("stage", CHECKED)
def test_stage_params_are_exactly_the_keys_its_code_reads(stage):
    reads = stage_reads(stage)
    assert not reads.problems, reads.problems
    read = set().union(*map(_leaves, reads.keys)) if reads.keys else set()
    read |= set(re.findall(r"\$\{([\w.]+)\}", STAGES[stage]["cmd"]))  # the command's own params (base.nproc_per_node)
    listed = set().union(*(_leaves(tuple(p.split("."))) for p in _listed(stage))) if _listed(stage) else set()
    missing, extra = sorted(read - listed), sorted(listed - read)
    assert not missing, (f"dvc.yaml stage {stage!r} reads but does not list (DVC would skip a needed rerun): {missing}"
                         f"; list the keys, or the whole section when the stage reads all of it")
    assert not extra, f"dvc.yaml stage {stage!r} lists params it never reads (reruns for nothing): {extra}"


def test_the_analysis_sees_through_calls_aliases_and_local_functions():
    """What the analysis finds for stages whose reads are known: the keys handed down to library code (prepare,
    manifest), one key of another section, local functions (report), and no key only logged to MLflow."""
    leaves = lambda s: set().union(*map(_leaves, stage_reads(s).keys))  # noqa: E731
    assert leaves("rcnn_features") == {"base.device", "data.det.use_difficult"}
    assert leaves("report") == {"data.seg.source", "data.seg.path", "data.det.source", "data.det.path"}
    assert "data.seg.num_images" in leaves("prepare") and "data.split.train" not in leaves("prepare")
    assert "data.split.train" in leaves("manifest") and "data.seg.num_images" not in leaves("manifest")
    assert "base.seed" in leaves("unet_train") and "base.seed" not in leaves("unet_eval")


# --------------------------------------------------------------------------------------------------------------
# the same with DVC


def _lock_params_as_is(repo: Path) -> None:
    """Rewrite the copy's ``dvc.lock`` so every stage's params are those of ``dvc.yaml`` at the values of
    ``params.yaml``, as after a ``dvc repro`` of this checkout."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for name in STAGES:
        values = {}
        for key in _listed(name):
            value = params
            for part in key.split("."):
                value = value[part]
            values[key] = value
        entry = lock["stages"].setdefault(name, {"cmd": STAGES[name]["cmd"]})
        if values:
            entry["params"] = {"params.yaml": values}
        else:
            entry.pop("params", None)
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def _changed_params(repo: Path) -> dict[str, set[str]]:
    """``dvc status``: per stage, the params keys that differ from ``dvc.lock``."""
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout
    changed: dict[str, set[str]] = {}
    for stage, changes in json.loads(out or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            for what in (change.get("changed deps", {}).values() if isinstance(change, dict) else []):
                if isinstance(what, dict):  # params.yaml: {key: "modified"}
                    changed.setdefault(stage.split(":")[-1], set()).update(what)
    return changed


@pytest.fixture
def lock_copy(tmp_path) -> Path:
    """The repository's dvc.yaml, dvc.lock, params.yaml and code in a fresh git repository, its lock rewritten to
    match them (code and params), so ``dvc status`` reports only what a test changes."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    repo = tmp_path / "repo"
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file() and name.split("/")[0] in {".dvc", "src", "stages", "dvc.yaml", "dvc.lock",
                                                               "params.yaml"}:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _lock_code_as_is(repo)
    _lock_params_as_is(repo)
    assert _changed_params(repo) == {}
    return repo


EVAL_AND_TRAIN = {"unet_train", "unet_eval", "rcnn_finetune", "rcnn_features", "rcnn_svm", "rcnn_eval", "yolo_train",
                  "yolo_eval"}


@pytest.mark.parametrize(("key", "value", "stages"), [
    ("base.device", "cpu", EVAL_AND_TRAIN),  # not prepare, manifest, proposals, report
    ("base.seed", 7, {"unet_train", "rcnn_finetune", "rcnn_svm", "yolo_train"}),  # the eval stages seed nothing
    ("data.det.num_images", 20, {"prepare"}),  # manifest reads the files, not the count
    ("data.split.train", 0.6, {"manifest"}),
    ("data.seg.source", "isic", {"prepare", "manifest", "report"}),
    ("data.det.use_difficult", True, {"manifest", "rcnn_finetune", "rcnn_features", "yolo_train"}),
])
def test_dvc_status_reruns_only_the_stages_that_read_a_changed_key(lock_copy, key, value, stages):
    params = yaml.safe_load((lock_copy / "params.yaml").read_text())
    *path, last = key.split(".")
    section = params
    for part in path:
        section = section[part]
    section[last] = value
    (lock_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _changed_params(lock_copy)
    assert set(changed) == stages
    for listed in changed.values():  # the key itself, or the section listed whole that holds it (data.seg)
        assert all(key == k or key.startswith(f"{k}.") for k in listed), changed
