"""The Data Docs show the platform's decision on each batch (accepted / partial / quarantined),
not GX's "Failed" for any failed expectation, and load nothing from the internet. Real fashion
rows, the real GX checkpoint and Data Docs, the pages as the Airflow plugin serves them."""

from __future__ import annotations

import ast
import hashlib
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import PATH_SEP, load_catalog
from common.params import ValidateParams
from common.results import BatchReport
from tests.conftest import PROJECT_ROOT
from tests.html_page import Page, parse_html
from validation.validate import validate_batch

pytestmark = pytest.mark.integration

FASHION = load_catalog("catalogs/fashion.yaml")
PARAMS = ValidateParams(drift_min_rows=5)
LEVELS = ["masterCategory", "subCategory", "articleType"]
N = 10


def parse(html: str) -> Page:
    return parse_html(html)


def _first_text(html: str) -> str:
    return next((t.strip() for t in parse(html).text if t.strip()), "")


def index_rows(index: Path) -> dict[str, dict]:
    """The index's table of validation results, by run name (batch id): ``{"status": the Status
    cell's text (its tooltip left out), "filter": the value its filter offers, "link": the page}``.

    bootstrap-table builds the table from the ``data`` of a script (a Python literal, as GX
    prints it), whose cells are HTML.
    """
    for script in parse(index.read_text(encoding="utf-8")).scripts:
        found = re.search(r"^\s*data: (\[.*\]),$", script, re.M)
        if found and "run_name" in found.group(1):
            return {row["run_name"]: {"status": _first_text(row["validation_success"]),
                                      "filter": row["_validation_success_text"],
                                      "link": row["_table_row_link_path"]}
                    for row in ast.literal_eval(found.group(1))}
    raise AssertionError("no validation results table on the index page")


def header_status(page: Path) -> str:
    """What the validation page's Overview says after ``Status:``."""
    text = parse(page.read_text(encoding="utf-8")).visible()
    found = re.search(r"Status: (.+?) (?:Statistics|Evaluated Expectations)", text)
    assert found, text[:500]
    return found.group(1)


@dataclass
class Season:
    """The weekly batches validated into one project (``root``: raw/, store/, gx/, ...)."""

    root: Path
    taxonomy: frozenset[str]
    reports: dict[str, BatchReport] = field(default_factory=dict)

    def validate(self, name: str, week: int, params: ValidateParams) -> BatchReport:
        return validate_batch(self.root / "raw" / name, name,
                              f"2025-01-{6 + 7 * week:02d}T00:00:00+00:00", FASHION,
                              self.taxonomy, params, self.root / "store",
                              self.root / "quarantine", self.root / "gx")


def _new(key: str, seen: set[str]) -> bool:
    fresh = key not in seen
    seen.add(key)
    return fresh


@pytest.fixture(scope="module")
def season(tmp_path_factory, fashion_dir: Path) -> Season:
    """Four weekly batches of real rows in one GX project: clean, accepted with a label-drift
    warning (every row in one category), partial (one missing title) and quarantined (half the
    rows in an unknown category)."""
    root = tmp_path_factory.mktemp("decisions")
    styles = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)
    taxonomy = frozenset(PATH_SEP.join(r) for r in styles[LEVELS].itertuples(index=False))
    # the catalog has identical images under different ids (a duplicate_image rejection): the
    # batches take rows of distinct images, so only the rows changed below fail a check
    seen: set[str] = set()
    unique = [i for i, listing_id in enumerate(styles["id"].iloc[300:500], start=300)
              if _new(hashlib.sha256((fashion_dir / "images" / f"{listing_id}.jpg").read_bytes())
                      .hexdigest(), seen)]
    clean, drifted, partial, quarantined = (styles.iloc[unique[k * N:(k + 1) * N]].copy()
                                            for k in range(4))
    drifted[LEVELS] = clean.iloc[0][LEVELS].tolist()
    partial.iloc[0, partial.columns.get_loc("productDisplayName")] = ""
    quarantined.iloc[: N // 2, quarantined.columns.get_loc("articleType")] = "Hoverboards"

    season = Season(root, taxonomy)
    for week, (name, rows) in enumerate({"b-clean": clean, "b-drift": drifted,
                                         "b-partial": partial, "b-quarantined": quarantined}.items()):
        folder = root / "raw" / name
        (folder / "images").mkdir(parents=True)
        rows.to_csv(folder / "styles.csv", index=False)
        for listing_id in rows["id"]:
            shutil.copy(fashion_dir / "images" / f"{listing_id}.jpg", folder / "images")
        season.reports[name] = season.validate(name, week, PARAMS)
    assert [r.status for r in season.reports.values()] == [
        "accepted", "accepted", "partial", "quarantined"]
    assert {w.split(":")[0] for w in season.reports["b-drift"].warnings} == {"label_drift"}
    return season


EXPECTED = {"b-clean": "accepted", "b-drift": "accepted", "b-partial": "partial",
            "b-quarantined": "quarantined"}


def test_index_shows_the_platform_decision_of_each_batch(season: Season) -> None:
    index = Path(season.reports["b-clean"].data_docs)
    rows = index_rows(index)
    assert set(rows) == set(EXPECTED)
    for batch, status in EXPECTED.items():
        assert rows[batch]["status"] == status, (batch, rows[batch])
        assert rows[batch]["filter"] == status, (batch, rows[batch])
        # the row links to this batch's own page
        page = Path(season.reports[batch].data_docs_page).relative_to(index.parent).as_posix()
        assert rows[batch]["link"].replace("%3A", ":").replace("%2B", "+") == page
    assert "Failed" not in str(rows)


def test_validation_page_header_agrees_with_the_index(season: Season) -> None:
    statuses = {batch: header_status(Path(report.data_docs_page))
                for batch, report in season.reports.items()}
    assert statuses["b-clean"] == "accepted"
    assert statuses["b-drift"] == "accepted - 1 warning(s): label_drift"
    assert statuses["b-partial"].startswith("partial - 1 of 10 rows quarantined (missing_title), "
                                            "9 accepted")
    assert statuses["b-quarantined"].startswith("quarantined - whole batch quarantined "
                                                "(bad_row_fraction)")
    assert not [s for s in statuses.values() if "Failed" in s or "Succeeded" in s], statuses


def test_decision_follows_a_revalidation(season: Season) -> None:
    """Validated again with ``drift_blocks``, the drifted batch is quarantined: its row in the
    index and its page say so (GX's result is replaced, then the new decision recorded)."""
    again = season.validate("b-drift", 1, PARAMS.model_copy(update={"drift_blocks": True}))
    try:
        assert again.status == "quarantined"
        assert index_rows(Path(again.data_docs))["b-drift"]["status"] == "quarantined"
        assert header_status(Path(again.data_docs_page)).startswith(
            "quarantined - whole batch quarantined (label_drift)")
    finally:  # the module's other tests read this project: the batch accepted again
        assert season.validate("b-drift", 1, PARAMS).status == "accepted"


def test_no_page_loads_anything_from_the_internet(season: Season) -> None:
    """Every page, as the Airflow plugin serves it (CDN addresses rewritten to the local copies),
    loads its images, scripts and styles from the site or the plugin; the logo is the site's."""
    sys.path.insert(0, str(PROJECT_ROOT / "plugins"))
    try:
        import data_docs_assets
    finally:
        sys.path.remove(str(PROJECT_ROOT / "plugins"))
    site = Path(season.reports["b-clean"].data_docs).parent
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 1 + len(season.reports) + 1  # index, one page per batch, the suite's page
    for path in pages:
        raw = path.read_text(encoding="utf-8")
        served = parse(data_docs_assets.localize(raw, "/data-docs/_assets"))
        loads = [(tag, attrs.get("src") or attrs.get("href") or "")
                 for tag, attrs in served.elements
                 if tag in ("img", "script", "source", "iframe")
                 or (tag == "link" and attrs.get("rel") in ("stylesheet", "icon", "shortcut icon"))]
        remote = [(tag, url) for tag, url in loads if re.match(r"\s*(https?:)?//", url)]
        assert not remote, f"{path.relative_to(site)} loads {remote}"
        logos = [attrs["src"] for tag, attrs in parse(raw).elements
                 if tag == "img" and "logo" in attrs.get("src", "")]
        assert logos, f"{path.relative_to(site)} has no logo"
        for logo in logos:  # the site's own copy, relative to the page
            assert (path.parent / logo.split("?")[0]).resolve().is_file(), (path, logo)
