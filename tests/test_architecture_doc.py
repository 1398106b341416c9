"""docs/architecture.md stays true: its stage table lists exactly the stages of dvc.yaml, its module table
names only modules that exist, and nothing in the project points to the old external design document."""

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"


def _section(title: str) -> str:
    text = DOC.read_text()
    start = re.search(rf"^## {re.escape(title)}\b.*$", text, re.M)
    assert start, f"docs/architecture.md has no '## {title}' section"
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.end(): start.end() + end.start()] if end else text[start.end():]


def test_stage_table_lists_every_dvc_stage_and_no_other():
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    rows = set(re.findall(r"^\|\s*`([a-z_]+)`\s*\|", _section("Stages"), re.M))
    assert rows == stages, f"missing from the table: {sorted(stages - rows)}; not in dvc.yaml: {sorted(rows - stages)}"


def test_module_table_names_existing_modules_and_every_module():
    listed = set(re.findall(r"`(segdet(?:\.[a-z_]+)+)`", _section("Layers")))
    files = {".".join(p.relative_to(ROOT / "src").with_suffix("").parts) for p in (ROOT / "src" / "segdet").rglob("*.py")}
    modules = {m.removesuffix(".__init__") for m in files}
    assert listed <= modules, f"docs/architecture.md names modules that do not exist: {sorted(listed - modules)}"
    leaves = {m for m in files if not m.endswith("__init__")}
    assert not leaves - listed, f"modules missing from docs/architecture.md: {sorted(leaves - listed)}"


def test_no_reference_to_the_external_design_document():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    hits = [f for f in tracked if f.endswith((".py", ".md", ".yaml", ".yml", ".toml")) and (ROOT / f).is_file()
            and f != "tests/test_architecture_doc.py" and "DESIGN.md" in (ROOT / f).read_text(errors="replace")]
    assert not hits, f"these files still point to DESIGN.md (now docs/architecture.md): {hits}"


def test_readme_stays_a_short_guide_with_working_links():
    """The README is read top to bottom by a newcomer: at most 350 lines, detail in docs/; every relative link and
    image in it and in docs/ points to a file that exists."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 350, f"README.md has {len(readme.splitlines())} lines; move detail to docs/"
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
