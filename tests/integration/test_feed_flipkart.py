"""The second real catalog, Flipkart, through the same code as fashion: catalog YAML only.

publish CLI -> ingest -> ``python -m validation.staged`` equivalent, and the feed-folder CLI, on
real Flipkart rows (category tree parsed and truncated, title/description/brand/price in INR)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import Catalog, google_taxonomy_paths, load_catalog
from common.params import load_params
from common.state import State
from common.store import read_store
from ingestion.feed import catalog_taxonomy
from ingestion.feed import main as feed_main
from ingestion.ingest import ingest_new_batches

pytestmark = pytest.mark.integration

FLIPKART = load_catalog("catalogs/flipkart.yaml")


def test_publish_ingest_validate_flipkart(tmp_path: Path, flipkart_dir: Path, monkeypatch,
                                          capsys: pytest.CaptureFixture[str],
                                          caplog: pytest.LogCaptureFixture) -> None:
    feed = tmp_path / "feed"
    assert feed_main(["publish", "--source", str(flipkart_dir), "--catalog",
                      "catalogs/flipkart.yaml", "--weeks", "2", "--limit", "40",
                      "--feed", str(feed)]) == 0
    batches = json.loads(capsys.readouterr().out)["batches"]
    assert batches == ["flipkart-2026-11-02", "flipkart-2026-11-09"]
    taxonomy = json.loads((feed / "taxonomy.json").read_text())
    assert "Home Furnishing > Curtains & Accessories" in taxonomy  # depth 2, from the data
    assert all(1 <= len(p.split(" > ")) <= 2 for p in taxonomy)

    params_file = tmp_path / "params.yaml"
    params = load_params().with_overrides({"catalog": "catalogs/flipkart.yaml"})
    params_file.write_text(json.dumps(params.to_dict()))  # JSON is YAML
    monkeypatch.setenv("LCP_PARAMS", str(params_file))
    state = State(tmp_path / "state")
    staged = ingest_new_batches(state, load_params(), datetime(2026, 11, 9, tzinfo=UTC), str(feed))
    assert list(staged.staged) == batches

    from validation.staged import validate_staged_batches

    with caplog.at_level(logging.INFO, logger="validation.staged"):
        outcome = validate_staged_batches(state, load_params())
    out = caplog.text
    capsys.readouterr()  # what ingest printed
    assert "data_docs=" in out and str(state.gx_dir) in out  # Data Docs location in the task log
    assert Path(outcome.data_docs).is_file()
    assert outcome.store_listings >= 35  # 40 published; the odd missing image is held back

    store = read_store(state.listings_store)
    source = pd.read_csv(flipkart_dir / FLIPKART.listings_file, dtype=str,
                         keep_default_na=False).set_index("uniq_id")
    row = store.iloc[0]
    src = source.loc[row["listing_id"]]
    assert row["title"] == src["product_name"].strip()
    assert row["price"] == float(src["retail_price"]) and row["currency"] == "INR"
    assert row["catalog"] == "flipkart" and row["category_path"] in taxonomy
    assert (row["brand"] or None) == (src["brand"].strip() or None)
    multiline = store["description"].dropna().str.contains("\n").any()
    assert multiline == source.loc[store["listing_id"], "description"].str.contains("\n").any()

    # The same feed through the CLI without Airflow: one JSON report per batch.
    from validation.cli import main as validate_main

    assert validate_main(["--feed", str(feed), "--catalog", "catalogs/flipkart.yaml",
                          "--state", str(tmp_path / "cli-state"), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["batch_id"] for r in reports] == batches
    assert all(r["status"] in {"accepted", "partial"} for r in reports)
    assert all("drift" in r and "warnings" in r for r in reports)


def test_jsonl_and_parquet_batches(tmp_path: Path, flipkart_dir: Path) -> None:
    """A batch's listings file may be CSV, JSON Lines or Parquet; the catalog names the stem."""
    from ingestion.feed import publish
    from validation.validate import validate_batch

    for fmt in ("jsonl", "parquet"):
        feed = tmp_path / fmt
        (batch,) = publish(flipkart_dir, feed, 1, FLIPKART, limit=12, fmt=fmt)
        assert (feed / batch / f"flipkart_com-ecommerce_sample_1050.{fmt}").is_file()
        taxonomy = frozenset(json.loads((feed / "taxonomy.json").read_text()))
        report = validate_batch(feed / batch, batch, "2026-11-02T00:00:00+00:00", FLIPKART,
                                taxonomy, load_params().validate_, tmp_path / fmt / "store",
                                tmp_path / fmt / "q", tmp_path / "gx")
        assert report.status in {"accepted", "partial"} and report.accepted_rows >= 10


def test_google_taxonomy_declared(tmp_path: Path) -> None:
    path = Path(__file__).resolve().parents[3] / "shared/datasets/google-product-taxonomy" \
        / "taxonomy-with-ids.en-US.txt"
    if not path.is_file():
        pytest.skip(f"Google product taxonomy not found at {path}")
    paths = google_taxonomy_paths(path, max_depth=2)
    assert "Apparel & Accessories > Clothing" in paths and "Animals & Pet Supplies" in paths
    assert all(len(p.split(" > ")) <= 2 for p in paths)
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x and x[0].isdigit()]
    assert len(google_taxonomy_paths(path)) == len(lines)  # one path per category line
    catalog = Catalog.model_validate({
        **FLIPKART.model_dump(), "taxonomy": {"source": "google", "google_file": str(path)}})
    assert catalog_taxonomy(pd.DataFrame(), catalog) == paths
