"""The gate step imports nothing above promotion: golden label issues come from common/."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_promote_never_imports_monitoring_dags_or_plugins():
    climbs = {n for n in _imports(PROJECT_ROOT / "promotion" / "promote.py")
              if n.split(".")[0] in ("monitoring", "dags", "plugins")}
    assert climbs == set()


def test_common_label_issues_imports_only_common_and_libraries():
    ours = {"ingestion", "validation", "training", "promotion", "monitoring", "dags", "plugins"}
    assert not {n for n in _imports(PROJECT_ROOT / "common" / "label_issues.py") if n.split(".")[0] in ours}


def test_an_unchanged_gate_rounds_as_every_decision_does():
    from common.params import Params
    from promotion.gate import XCOM_DECIMALS
    from promotion.promote import _Scored, _unchanged

    score = 0.123456789123
    result = _unchanged(Params(), "3", "abc.dir", _Scored("3", {"business_weighted_score": score,
                                                               "accuracy": 0.5, "n": 10}, None))
    assert result.decision == "unchanged" and not result.promote
    assert result.candidate_score == result.champion_score == round(score, XCOM_DECIMALS)
    assert result.delta == 0.0 and result.n_golden == 10 and result.champion_version == "3"
