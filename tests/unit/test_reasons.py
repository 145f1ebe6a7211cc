"""The reason-code table (validation.reasons): every code the platform writes is declared once.

The codes are found where they are written: the ``BatchError``/``BatchRefused`` raised by the
readers and the feed, the GX suite's ``meta["reason"]`` of each expectation, and the module
constants naming a code; a code written anywhere and missing from the table fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from validation.reasons import REASONS, code_of, level_of, table_markdown

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for folder in ("validation", "ingestion", "common")
                 for p in (ROOT / folder).glob("*.py") if p.name not in ("params.py", "reasons.py"))
"""Where reasons are written (params.py only describes settings)."""
RAISED = re.compile(r"\b(?:BatchError|BatchRefused)\(\s*\"([a-z0-9_]+)\"")
"""``BatchError("code", ...)`` and ``BatchRefused("code", ...)``."""
DETAILED = re.compile(r"[\"']([a-z]+(?:_[a-z0-9]+)+): ")
"""``"code: detail"`` texts (f-strings included)."""
CONSTANT = re.compile(r"^[A-Z_]+ = \"([a-z]+(?:_[a-z]+)+)\"\s*$", re.M)
"""``NAME = "code"`` module constants."""


def _written_codes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for pattern in (RAISED, DETAILED):
            for code in pattern.findall(text):
                found.setdefault(code, set()).add(path.name)
    return found


NOT_REASONS = frozenset({"image_end"})
"""``"name: ..."`` texts that are not reasons: a function naming itself in a programming error."""


def test_every_raised_or_detailed_code_is_declared() -> None:
    missing = {code: files for code, files in _written_codes().items()
               if code not in REASONS and code not in NOT_REASONS}
    assert not missing, f"reason codes written but not declared in validation.reasons: {missing}"


def test_the_gx_suite_reasons_are_declared() -> None:
    from common.params import ValidateParams
    from validation.suite import StoreReference, build_suite

    suite = build_suite(frozenset({"A > B > C"}), ValidateParams(), StoreReference("c", [], []))
    reasons = {e.meta["reason"] for e in suite.expectations}
    assert reasons and reasons <= set(REASONS), reasons - set(REASONS)


def test_levels_and_lookup() -> None:
    assert level_of("validation_error: RecursionError while validating (read): ...") == "batch"
    assert level_of("unknown_category") == "row"
    assert level_of("label_drift: Jensen-Shannon distance 1.000 > 0.3") == "warning"
    assert code_of("price_out_of_range: -3") == "price_out_of_range"
    with pytest.raises(KeyError, match="not_a_code"):
        level_of("not_a_code: x")
    assert table_markdown().count("\n") == len(REASONS) + 1
