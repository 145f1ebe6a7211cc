"""dvc.yaml lists, for each stage, every project module its command imports: a change to one of
them must re-run the stage (DVC only knows the deps it is told)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
LOCAL = ("common", "training")


def _imports(path: Path) -> set[str]:
    """Project modules (``common.x``, ``training.y``) imported anywhere in one file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in LOCAL and (ROOT / f"{m.replace('.', '/')}.py").is_file()}


def _closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(_imports(ROOT / f"{name.replace('.', '/')}.py") - seen)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    module = STAGES[stage]["cmd"].split("-m ", 1)[1].split()[0]
    files = {f"{m.replace('.', '/')}.py" for m in _closure(module)}
    missing = sorted(files - set(STAGES[stage]["deps"]))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them as deps"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_lists_a_project_module_it_does_not_import(stage):
    """The other way round: a stale dep (evaluate once listed training/train.py, which it does
    not import) re-runs the stage, and invalidates its cached outputs, for nothing."""
    module = STAGES[stage]["cmd"].split("-m ", 1)[1].split()[0]
    files = {f"{m.replace('.', '/')}.py" for m in _closure(module)}
    listed = {d for d in STAGES[stage]["deps"] if d.endswith(".py") and d.split("/")[0] in LOCAL}
    extra = sorted(listed - files)
    assert not extra, f"dvc.yaml stage {stage!r} lists {extra} as deps but does not import them"
