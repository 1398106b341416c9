"""Every stage lists, as DVC deps, the segdet modules it runs: a change to one of them reruns the stage, and a
change to anything else (the CLI, ``segdet predict``, the README) reruns none."""

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import stage_script

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = ROOT / "src" / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _segdet_imports(*scripts: Path) -> set[Path]:
    """segdet modules stage scripts import, then what those import, transitively, including the imports
    inside functions (a module imported lazily still runs in the stage)."""
    seen: set[Path] = set(scripts)
    todo = list(scripts)
    while todo:
        path = todo.pop()
        for node in ast.walk(ast.parse(path.read_text())):
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
    script = ROOT / stage_script(spec["cmd"])[0]
    runs = [script]
    if spec["cmd"].split()[1:3] == ["-m", "segdet.launch"]:  # the training stages start through the torchrun launcher
        runs.append(_module_file("segdet.launch"))
    deps = {d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])}
    assert str(script.relative_to(ROOT)) in deps
    needed = {str(f.relative_to(ROOT)) for f in _segdet_imports(*runs) if f.name != "__init__.py"}
    missing = sorted(needed - deps)
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not list: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_list_no_module_it_does_not_run(stage):
    spec = STAGES[stage]
    script = ROOT / stage_script(spec["cmd"])[0]
    launcher = [_module_file("segdet.launch")] if spec["cmd"].split()[1:3] == ["-m", "segdet.launch"] else []
    deps = {d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])}
    needed = {str(f.relative_to(ROOT)) for f in _segdet_imports(script, *launcher)}
    extra = sorted(d for d in deps if d.startswith("src/segdet/") and d not in needed)
    assert not extra, f"dvc.yaml stage {stage!r} lists modules it never imports (reruns for nothing): {extra}"


def _changed_code(repo: Path) -> dict[str, set[str]]:
    """``dvc status``: per stage, the ``src/``, ``stages/`` and README deps that differ from ``dvc.lock``."""
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo, capture_output=True,
                         text=True, check=True).stdout
    changed: dict[str, set[str]] = {}
    for stage, changes in json.loads(out or "{}").items():
        for change in changes if isinstance(changes, list) else []:
            for path, what in change.get("changed deps", {}).items() if isinstance(change, dict) else []:
                if what == "modified" and path.startswith(("src/", "stages/", "README")):
                    changed.setdefault(stage.split(":")[-1], set()).add(path)
    return changed


def _lock_code_as_is(repo: Path) -> None:
    """Rewrite the copy's ``dvc.lock`` so its code deps are the files as they are now (md5 and size, as DVC 3
    records them), as after a ``dvc repro`` of this checkout; data deps keep their recorded hashes."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for name, spec in STAGES.items():
        old = {d["path"]: d for d in lock["stages"].get(name, {}).get("deps", [])}
        deps = []
        for dep in (d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])):
            f = repo / dep
            if f.is_file() and dep.startswith(("src/", "stages/")):
                deps.append({"path": dep, "hash": "md5", "md5": hashlib.md5(f.read_bytes()).hexdigest(),
                             "size": f.stat().st_size})
            elif dep in old:
                deps.append(old[dep])
        lock["stages"].setdefault(name, {"cmd": spec["cmd"]})["deps"] = deps
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def test_dvc_reruns_only_the_stages_that_import_an_edited_module(tmp_path):
    """In a copy of the repository: editing the README, the CLI or ``segdet predict`` changes no stage's deps;
    editing the YOLOv1 decoder changes exactly the deps of the stages that run it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    repo = tmp_path / "repo"
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file() and name.split("/")[0] in {".dvc", "src", "stages", "dvc.yaml", "dvc.lock",
                                                               "params.yaml", "README.md"}:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _lock_code_as_is(repo)
    assert _changed_code(repo) == {}
    for name in ("README.md", "src/segdet/cli.py", "src/segdet/predict.py", "src/segdet/presets.py"):
        with open(repo / name, "a") as fh:
            fh.write("\n# edited\n")
    assert _changed_code(repo) == {}
    with open(repo / "src/segdet/detection/yolo/decode.py", "a") as fh:
        fh.write("\n# edited\n")
    assert _changed_code(repo) == {s: {"src/segdet/detection/yolo/decode.py"} for s in ("yolo_train", "yolo_eval")}


def _default_paths(script: Path) -> set[str]:
    """The path defaults of a stage script's ``ap.add_argument("--name", default="...")`` calls (not --params)."""
    out = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else ""
            for kw in node.keywords:
                if kw.arg == "default" and isinstance(kw.value, ast.Constant) and flag != "--params":
                    out.add(str(kw.value.value))
    return out


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_paths_in_dvc_yaml_are_the_scripts_defaults(stage):
    """A stage runs with its script's default paths (``cmd`` passes none), so every data dep and out in
    dvc.yaml must lie under one of them and every default must be a dep, an out or a run folder."""
    spec = STAGES[stage]
    script, args = stage_script(spec["cmd"])
    script = ROOT / script
    assert args == [], f"{stage}: cmd passes arguments; the defaults are the contract"
    defaults = _default_paths(script)
    files = {d if isinstance(d, str) else next(iter(d)) for key in ("deps", "outs", "metrics", "plots")
             for d in spec.get(key, [])}
    data = {f for f in files if not f.startswith(("src/", "stages/"))}
    under = lambda path, root: path == root or path.startswith(root.rstrip("/") + "/")  # noqa: E731
    stray = sorted(f for f in data if not any(under(f, d) for d in defaults) and not f.startswith("data/raw/"))
    assert not stray, f"{stage}: dvc.yaml paths that {script.name} does not default to: {stray}"
    unused = sorted(d for d in defaults if not any(under(f, d) for f in data) and not d.endswith("_run"))
    assert not unused, f"{stage}: {script.name} defaults that dvc.yaml does not track: {unused}"
