"""Data flows one way and so do imports (CONVENTIONS.md, "The shape of the house"): no module of a
package imports a package of a higher layer, at module level or inside a function (the lazy
imports are where climbs used to hide: ``ingestion.workspace`` asked ``promotion.registry`` for
the champion; the registry's client and alias lookup now live in ``common.tracking``)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import PROJECT_ROOT

LAYERS = {"common": 0, "ingestion": 1, "validation": 2, "training": 2, "promotion": 3, "monitoring": 4,
          "dags": 5, "plugins": 5, "scripts": 6, "benchmarks": 6}
"""Each package's layer: a module may import its own layer's packages or lower ones (validation
and training are siblings: neither imports the other)."""


def _climbs(package: str) -> list[str]:
    out = []
    for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in LAYERS and top != package and LAYERS[top] >= LAYERS[package]:
                    out.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} imports {name}")
    return out


@pytest.mark.parametrize("package", ["common", "ingestion", "validation", "training", "promotion", "monitoring"])
def test_no_module_imports_a_package_of_its_own_or_a_higher_layer(package):
    assert _climbs(package) == []


def test_the_check_sees_a_lazy_climb(tmp_path, monkeypatch):
    """The check reads imports inside functions too (a climb it could not see would pass)."""
    import tests.unit.test_layers as this

    (tmp_path / "ingestion").mkdir()
    (tmp_path / "ingestion" / "x.py").write_text("def f():\n    from promotion.registry import mlflow_client\n")
    monkeypatch.setattr(this, "PROJECT_ROOT", tmp_path)
    assert this._climbs("ingestion") == ["ingestion/x.py:2 imports promotion.registry"]
