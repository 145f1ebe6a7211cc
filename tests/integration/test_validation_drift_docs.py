"""Drift is measured by GX and shown on the batch's Data Docs page; it warns unless
``validate.drift_blocks`` is true. Real Flipkart rows, the real GX checkpoint and Data Docs."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.params import ValidateParams
from common.store import batch_file, read_store
from ingestion.feed import catalog_taxonomy
from validation.drift import drift_report
from validation.validate import validate_batch

pytestmark = pytest.mark.integration

FLIPKART = load_catalog("catalogs/flipkart.yaml")
PARAMS = ValidateParams(drift_min_rows=5)
N = 20


class _Text(HTMLParser):
    """The visible text of an HTML page (scripts and styles skipped), whitespace-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag) -> None:
        self._skip -= tag in ("script", "style")

    def handle_data(self, data) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(path: str | Path) -> str:
    parser = _Text()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return " ".join(" ".join(parser.parts).split())


def shown(value: float) -> str:
    """How the page prints a measure (GX: up to 10 significant digits, no trailing zeros)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def observed(text: str, measure: str) -> str:
    """The Observed Value printed after a drift expectation's description on the page."""
    found = re.search(rf"{measure} drift: .*?\(validate\.drift_blocks: (?:true|false)\)\. (.+?) "
                      rf"(?:[a-z_]+ Status Expectation|$)", text)
    assert found, f"no {measure} drift expectation on the page"
    return found.group(1)


@pytest.fixture(scope="module")
def rows(flipkart_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(flipkart_dir / FLIPKART.listings_file, dtype=str, keep_default_na=False)
    has_image = frame["uniq_id"].map(lambda i: (flipkart_dir / "images" / f"{i}.jpg").is_file())
    return frame[has_image & (frame["retail_price"] != "")].reset_index(drop=True)


def _batch(root: Path, frame: pd.DataFrame, flipkart_dir: Path) -> Path:
    (root / "images").mkdir(parents=True)
    frame.to_csv(root / FLIPKART.listings_file, index=False)
    for listing_id in frame["uniq_id"]:
        shutil.copy(flipkart_dir / "images" / f"{listing_id}.jpg", root / "images")
    return root


def test_drift_figures_are_on_the_data_docs_page_and_only_warn(tmp_path, rows, flipkart_dir):
    taxonomy = frozenset(catalog_taxonomy(rows, FLIPKART))
    store, gx_dir = tmp_path / "store", tmp_path / "gx"

    def run(batch: Path, when: str, params: ValidateParams = PARAMS) -> dict:
        return validate_batch(batch, batch.name, when, FLIPKART, taxonomy, params, store,
                              tmp_path / "quarantine", gx_dir)

    first = _batch(tmp_path / "raw" / "fk-2026-11-02", rows.iloc[:N], flipkart_dir)
    week1 = run(first, "2026-11-02T00:00:00+00:00")
    assert week1.status == "accepted" and week1.drift["label_js_distance"] is None
    text1 = page_text(week1.data_docs_page)
    # the empty store: both drift expectations are on the page, saying why nothing was measured
    assert "Label drift: the Jensen-Shannon distance" in text1 and "Price drift" in text1
    assert observed(text1, "Label").startswith(f"not measured: {N} batch row(s), 0 store listing(s)")
    assert observed(text1, "Price").startswith(f"not measured: {N} batch row(s), 0 store listing(s)")

    # Week 2 drifts: every listing in one category, prices x20.
    drifted = rows.iloc[N:2 * N].copy()
    drifted["product_category_tree"] = rows.at[0, "product_category_tree"]
    drifted["retail_price"] = (drifted["retail_price"].astype(float) * 20).astype(str)
    second = _batch(tmp_path / "raw" / "fk-2026-11-09", drifted, flipkart_dir)
    week2 = run(second, "2026-11-09T00:00:00+00:00")

    drift = week2.drift
    assert week2.status == "accepted", "drift warns, it does not block by default"
    assert {w.split(":")[0] for w in week2.warnings} == {"label_drift", "price_drift"}
    assert drift["label_js_distance"] > PARAMS.drift_label_js_max
    assert drift["price_ks_statistic"] > PARAMS.drift_price_ks_max
    assert (drift["batch_rows"], drift["store_rows"]) == (N, N)
    # GX measured exactly what scipy measures on the same rows
    old, new = pd.read_parquet(batch_file(store, first.name)), pd.read_parquet(batch_file(store, second.name))
    expected = drift_report(new["category_path"].tolist(), new["price"].tolist(),
                            old["category_path"].tolist(), old["price"].tolist(), PARAMS)
    assert drift["label_js_distance"] == pytest.approx(expected["label_js_distance"], abs=1e-6)
    assert drift["price_ks_statistic"] == pytest.approx(expected["price_ks_statistic"], abs=1e-6)

    text2 = page_text(week2.data_docs_page)
    assert "Label drift: the Jensen-Shannon distance" in text2
    assert f"against the {N} listings of catalog 'flipkart' already in the store" in text2
    assert f"must be at most {PARAMS.drift_label_js_max}" in text2
    assert "Price drift: the two-sample Kolmogorov-Smirnov statistic" in text2
    assert "Severity warning" in text2 and "Severity critical" not in text2
    assert observed(text2, "Label") == shown(drift["label_js_distance"])
    assert observed(text2, "Price") == shown(drift["price_ks_statistic"])
    assert len(read_store(store)) == 2 * N

    # validate.drift_blocks: the same drift quarantines the batch, and the page says so
    blocking = PARAMS.model_copy(update={"drift_blocks": True})
    again = run(second, "2026-11-09T00:00:00+00:00", blocking)
    assert again.status == "quarantined"
    assert {r.split(":")[0] for r in again.batch_reasons} == {"label_drift", "price_drift"}
    text3 = page_text(again.data_docs_page)
    assert "Severity critical" in text3
    assert observed(text3, "Label") == shown(again.drift["label_js_distance"])
    assert not batch_file(store, second.name).exists()
