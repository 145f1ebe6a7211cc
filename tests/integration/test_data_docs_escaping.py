"""Feed values on the Data Docs pages are text, never markup: hostile titles, ids, categories and
batch folder names, on real fashion rows validated by the real GX checkpoint."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import PATH_SEP, load_catalog
from common.params import ValidateParams
from tests.html_page import Page, parse_html
from validation.validate import validate_batch

pytestmark = pytest.mark.integration

FASHION = load_catalog("catalogs/fashion.yaml")
CHROMIUM = Path("/usr/bin/chromium")
# each payload, run as markup, sets window.__xss (or opens a dialog)
SCRIPT_TITLE = "<script>window.__xss=1</script> Red T-shirt"
SVG_ID = "<svg onload=window.__xss=1>"
IMG_CATEGORY = '<img src=x onerror="window.__xss=1;alert(1)">'
RELABEL_TYPE = "<b onmouseover=window.__xss=1>Tshirts</b>"
BATCH_ID = "b0002<svg onload=alert(1)>"
PAYLOADS = (SCRIPT_TITLE, SVG_ID, IMG_CATEGORY, RELABEL_TYPE, BATCH_ID)


def parse(path: Path) -> Page:
    return parse_html(path.read_text(encoding="utf-8"))


@dataclass
class Pages:
    validation: Path
    index: Path


@pytest.fixture(scope="module")
def pages(tmp_path_factory, fashion_dir: Path) -> Pages:
    """Two batches of real rows; the second, in a folder named like markup, carries a hostile
    title (too long), id, unknown category and a relabel to a hostile (declared) category."""
    root = tmp_path_factory.mktemp("hostile")
    styles = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)
    levels = ["masterCategory", "subCategory", "articleType"]
    first, second = styles.iloc[200:210].copy(), styles.iloc[210:220].copy()
    relabelled = first.iloc[[0]].assign(articleType=RELABEL_TYPE)
    # the feed declares the hostile category (a taxonomy taken from the data), so the row passes
    # and only the relabel warning lists it
    taxonomy = frozenset(PATH_SEP.join(row) for row in styles[levels].itertuples(index=False)) | {
        PATH_SEP.join(relabelled[levels].iloc[0])}
    ids = second["id"].tolist()
    second.iloc[0, second.columns.get_loc("productDisplayName")] = SCRIPT_TITLE * 20  # too long
    second.iloc[0, second.columns.get_loc("id")] = SVG_ID
    second.iloc[1, second.columns.get_loc("articleType")] = IMG_CATEGORY             # unknown
    second = pd.concat([second, relabelled])

    def batch(name: str, rows: pd.DataFrame, image_of: dict) -> Path:
        folder = root / "raw" / name
        (folder / "images").mkdir(parents=True)
        rows.to_csv(folder / "styles.csv", index=False)
        for listing_id in rows["id"]:
            shutil.copy(fashion_dir / "images" / f"{image_of.get(listing_id, listing_id)}.jpg",
                        folder / "images" / f"{listing_id}.jpg")
        return folder

    def run(folder: Path, when: str):
        return validate_batch(folder, folder.name, when, FASHION, taxonomy, ValidateParams(),
                              root / "store", root / "quarantine", root / "gx")

    run(batch("b0001", first, {}), "2025-01-06T00:00:00+00:00")
    report = run(batch(BATCH_ID, second, {SVG_ID: ids[0]}), "2025-01-13T00:00:00+00:00")
    assert report.status == "partial" and report.data_docs_page
    assert {"title_length_out_of_range", "unknown_category"} <= set(report.reasons)
    assert any(w.startswith("relabel") for w in report.warnings)
    page = Path(report.data_docs_page)
    return Pages(validation=page, index=Path(report.data_docs))


@pytest.mark.parametrize("which", ["validation", "index"])
def test_no_element_comes_from_feed_text(pages: Pages, which: str) -> None:
    page = parse(getattr(pages, which))
    for tag, attrs in page.elements:
        assert tag not in ("svg", "b") and attrs.get("src") != "x", f"<{tag} {attrs}> is from the feed"
        assert not any(name.startswith("on") and "__xss" in (value or "")
                       for name, value in attrs.items()), (tag, attrs)
    for script in page.scripts:  # the index's table data is a script: escaped there too
        assert not [p for p in PAYLOADS if p in script], script[:300]


def test_feed_values_are_shown_as_text(pages: Pages) -> None:
    raw = pages.validation.read_text(encoding="utf-8")
    text = " ".join(" ".join(parse(pages.validation).text).split())
    for payload in (SCRIPT_TITLE, SVG_ID, IMG_CATEGORY, RELABEL_TYPE, BATCH_ID):
        assert payload not in raw
        assert " ".join(payload.split()) in text, f"{payload!r} is not on the page as text"
    # the index's table (bootstrap-table inserts its cells as HTML) holds the escaped batch id
    assert "b0002&lt;svg onload=alert(1)&gt;" in pages.index.read_text(encoding="utf-8")


@pytest.mark.stack
def test_validation_page_runs_no_feed_script_in_headless_chromium(pages: Pages, tmp_path) -> None:
    """Opened from file:// in Chromium: no dialog, ``window.__xss`` never set, the title shown."""
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set and Debian's chromium is not at {CHROMIUM}", pytrace=False)
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    dialogs: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            for path in (pages.validation, pages.index):
                # the CDN scripts are unreachable offline; the page's own markup is what counts
                page.goto(path.as_uri(), wait_until="load", timeout=60_000)
                page.wait_for_timeout(500)
                assert page.evaluate("typeof window.__xss") == "undefined", path.name
                page.screenshot(path=tmp_path / f"{path.stem}.png", full_page=True)
            page.goto(pages.validation.as_uri(), wait_until="load", timeout=60_000)
            assert page.get_by_text(SCRIPT_TITLE, exact=False).count() >= 1
            assert page.get_by_text(IMG_CATEGORY, exact=False).count() >= 1
        finally:
            browser.close()
    assert dialogs == []
    assert (tmp_path / f"{pages.validation.stem}.png").stat().st_size > 0
