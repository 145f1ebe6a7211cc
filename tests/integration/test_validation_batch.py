"""validate_batch and the CLI on real listings and images, with the real GX checkpoint."""

from __future__ import annotations

import csv as csv_module
import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from common.catalog import CANONICAL_COLUMNS, PATH_SEP, load_catalog
from common.csv_safe import read_safe_csv
from common.params import ValidateParams
from common.store import batch_file
from validation.validate import validate_batch

pytestmark = pytest.mark.integration

FASHION = load_catalog("catalogs/fashion.yaml")
PARAMS = ValidateParams()
INGESTED_AT = "2025-01-06T00:00:00+00:00"


@pytest.fixture(scope="module")
def styles(fashion_dir: Path) -> pd.DataFrame:
    return pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def taxonomy(styles: pd.DataFrame) -> frozenset[str]:
    """Every masterCategory > subCategory > articleType path of the full catalog."""
    levels = styles[["masterCategory", "subCategory", "articleType"]].itertuples(index=False)
    return frozenset(PATH_SEP.join(row) for row in levels)


def _make_batch(root: Path, rows: pd.DataFrame, fashion_dir: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows.to_csv(root / "styles.csv", index=False)
    for listing_id in rows["id"].unique():
        shutil.copy(fashion_dir / "images" / f"{listing_id}.jpg", root / "images")
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(tmp_path: Path, batch: Path, batch_id: str, taxonomy, params=PARAMS) -> dict:
    return validate_batch(batch, batch_id, INGESTED_AT, FASHION, taxonomy, params,
                          tmp_path / "store", tmp_path / "quarantine", tmp_path / "gx")


def test_partial_batch(tmp_path: Path, styles: pd.DataFrame, taxonomy, fashion_dir: Path) -> None:
    rows = styles.iloc[100:160].reset_index(drop=True)
    batch = _make_batch(tmp_path / "raw" / "b0001", rows, fashion_dir)
    csv = pd.read_csv(batch / "styles.csv", dtype=str, keep_default_na=False)
    ids = csv["id"].tolist()
    csv.loc[0, "productDisplayName"] = ""                  # missing title
    csv.loc[1, "articleType"] = "Hoverboards"              # unknown category
    csv.loc[3, "id"] = ids[2]                              # duplicate id: rows 2 and 3 are bad
    csv.loc[3, "productDisplayName"] = "Another listing"
    csv.to_csv(batch / "styles.csv", index=False)
    image = batch / "images" / f"{ids[4]}.jpg"             # truncated JPEG
    image.write_bytes(image.read_bytes()[:1500])
    expected = {ids[0]: "missing_title", ids[1]: "unknown_category",
                ids[2]: "duplicate_listing_id", ids[4]: "image_truncated"}
    before = _snapshot(batch)

    report = _run(tmp_path, batch, "b0001", taxonomy)

    assert report.status == "partial"
    assert (report.rows, report.accepted_rows, report.rejected_rows) == (60, 55, 5)
    assert report.reasons == {"duplicate_listing_id": 2, "image_truncated": 1,
                                 "missing_title": 1, "unknown_category": 1}
    assert {f["reason"] for f in report.failed_expectations} == {
        "missing_title", "unknown_category", "duplicate_listing_id", "image_invalid"}
    # the result's own id, which names the batch and is the path of its Data Docs page
    assert report.validation_id.startswith("listings_batch/b0001/")
    assert report.data_docs_page.endswith(report.validation_id + ".html")
    json.dumps(report.to_json())  # serialisable

    rejected = read_safe_csv(report.rejected_file)
    assert list(rejected.columns) == [*CANONICAL_COLUMNS, "reasons"]
    got = {}
    for listing_id, reasons in zip(rejected["listing_id"], rejected["reasons"], strict=True):
        got.setdefault(listing_id, set()).add(reasons.split(":")[0])
    assert got == {k: {v} for k, v in expected.items()}
    truncated = rejected.loc[rejected["listing_id"] == ids[4], "reasons"].item()
    assert truncated.startswith("image_truncated: ")

    stored = pd.read_parquet(batch_file(tmp_path / "store", "b0001"))
    assert list(stored.columns) == list(CANONICAL_COLUMNS)
    assert len(stored) == 55 and not set(expected) & set(stored["listing_id"])
    assert stored["listing_id"].is_unique and (stored["batch_id"] == "b0001").all()
    for key, sha in zip(stored["image_key"], stored["image_sha256"], strict=True):
        path = tmp_path / "store" / key
        assert key == f"batches/b0001/images/{sha}.jpg"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        with Image.open(path) as img:
            img.load()

    assert _snapshot(batch) == before, "the raw batch must be left unchanged"
    assert Path(report.data_docs).name == "index.html" and Path(report.data_docs).is_file()
    assert Path(report.data_docs_page).is_file()
    assert json.loads(Path(report.report).read_text())["status"] == "partial"
    # the store's index lives beside it (common.store.index_path)
    assert {p.name for p in tmp_path.iterdir()} == {"raw", "store", "quarantine", "gx", ".store-index"}

    # Idempotent: the same batch again gives the same outputs.
    files = _snapshot(tmp_path / "store")
    again = _run(tmp_path, batch, "b0001", taxonomy)
    keys = {"status", "rows", "accepted_rows", "reasons"}
    assert again.model_dump(include=keys) == report.model_dump(include=keys)
    assert _snapshot(tmp_path / "store") == files

    # Stricter params: now quarantined whole, and the stale store partition is gone.
    strict = PARAMS.model_copy(update={"max_bad_row_fraction": 0.05})
    assert _run(tmp_path, batch, "b0001", taxonomy, strict).status == "quarantined"
    assert not batch_file(tmp_path / "store", "b0001").exists()


def test_over_threshold_quarantined_whole(tmp_path: Path, styles: pd.DataFrame, taxonomy,
                                          fashion_dir: Path) -> None:
    rows = styles.iloc[:10].reset_index(drop=True)
    rows.loc[:2, "articleType"] = "Nonsense"  # 3 of 10 bad > 0.2
    batch = _make_batch(tmp_path / "raw" / "b0002", rows, fashion_dir)

    report = _run(tmp_path, batch, "b0002", taxonomy)

    assert report.status == "quarantined"
    assert (report.accepted_rows, report.rejected_rows) == (0, 10)
    assert report.reasons == {"unknown_category": 3}
    assert "bad_row_fraction" in report.batch_reasons[0]
    assert not batch_file(tmp_path / "store", "b0002").exists()
    rejected = pd.read_csv(report.rejected_file, dtype=str)
    assert rejected["reasons"].value_counts().to_dict() == {"batch_quarantined": 7,
                                                            "unknown_category": 3}


def test_clean_batch_accepted(tmp_path: Path, styles: pd.DataFrame, taxonomy,
                              fashion_dir: Path) -> None:
    batch = _make_batch(tmp_path / "raw" / "b0003", styles.iloc[200:220], fashion_dir)
    report = _run(tmp_path, batch, "b0003", taxonomy)
    assert report.status == "accepted" and report.accepted_rows == 20
    assert report.report is None and not (tmp_path / "quarantine" / "b0003").exists()


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "listings_file_empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\xfe binary", "listings_file_unparseable"),
    (b"sku,name\n1,shirt\n", "missing_columns"),
    (None, "listings_file_missing"),
])
def test_unreadable_batch_quarantined_with_reason(tmp_path: Path, taxonomy, content, reason) -> None:
    batch = tmp_path / "raw" / "bad"
    batch.mkdir(parents=True)
    if content is not None:
        (batch / "styles.csv").write_bytes(content)

    report = _run(tmp_path, batch, "bad", taxonomy)

    assert report.status == "quarantined" and list(report.reasons) == [reason]
    assert report.batch_reasons[0].startswith(reason)
    saved = json.loads((tmp_path / "quarantine" / "bad" / "report.json").read_text())
    assert saved["reasons"] == report.reasons
    assert not batch_file(tmp_path / "store", "bad").exists()


def test_cli_validates_a_feed(tmp_path: Path, styles: pd.DataFrame, taxonomy, fashion_dir: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from validation.cli import main

    feed = tmp_path / "feed"
    _make_batch(feed / "b0001", styles.iloc[:8], fashion_dir)
    bad = styles.iloc[8:16].copy()
    bad["productDisplayName"] = "x"  # every title too short
    _make_batch(feed / "b0002", bad, fashion_dir)
    (feed / "taxonomy.json").write_text(json.dumps(sorted(taxonomy)), encoding="utf-8")

    assert main(["--feed", str(feed), "--state", str(tmp_path / "state"), "--json"]) == 0

    reports = json.loads(capsys.readouterr().out)
    assert [(r["batch_id"], r["status"]) for r in reports] == [("b0001", "accepted"),
                                                               ("b0002", "quarantined")]
    assert reports[1]["reasons"] == {"title_length_out_of_range": 8}
    store = tmp_path / "state" / "workspace" / "data" / "listings"
    assert len(pd.read_parquet(batch_file(store, "b0001"))) == 8
    assert (tmp_path / "state" / "quarantine" / "b0002" / "report.json").is_file()
    assert (tmp_path / "state" / "gx").is_dir()


def test_cli_usage_errors(tmp_path: Path) -> None:
    from validation.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--feed", str(tmp_path / "nowhere"), "--json"])
    assert info.value.code == 2
    (tmp_path / "feed").mkdir()
    with pytest.raises(SystemExit) as info:  # no taxonomy.json
        main(["--feed", str(tmp_path / "feed"), "--state", str(tmp_path / "state")])
    assert info.value.code == 2


def test_a_catalog_without_titles_is_validated_without_title_expectations(
        tmp_path: Path, styles: pd.DataFrame, taxonomy, fashion_dir: Path) -> None:
    """The same real rows with their title column removed: the fashion adapter (title mapped)
    quarantines the batch for the missing column, the title-less adapter (``title: null``)
    accepts every row and runs no title expectation; other row checks still apply."""
    rows = styles.iloc[300:340].drop(columns=["productDisplayName"]).reset_index(drop=True)
    rows.loc[1, "articleType"] = "Hoverboards"  # still an unknown category
    batch = _make_batch(tmp_path / "raw" / "b0003", rows, fashion_dir)

    mapped = _run(tmp_path / "mapped", batch, "b0003", taxonomy)
    assert mapped.status == "quarantined" and list(mapped.reasons) == ["missing_columns"]
    assert "productDisplayName" in mapped.batch_reasons[0]

    titleless = load_catalog("catalogs/fashion-images.yaml")
    report = validate_batch(batch, "b0003", INGESTED_AT, titleless, taxonomy, PARAMS, tmp_path / "store",
                            tmp_path / "quarantine", tmp_path / "gx")
    assert report.status == "partial", report
    assert (report.accepted_rows, report.reasons) == (39, {"unknown_category": 1})
    checked = {f["reason"] for f in report.failed_expectations} | set(report.reasons)
    assert not checked & {"missing_title", "title_length_out_of_range"}
    stored = pd.read_parquet(batch_file(tmp_path / "store", "b0003"))
    assert len(stored) == 39 and stored["title"].isna().all() and stored["catalog"].eq("fashion-images").all()


FORMULAS = ['=HYPERLINK("http://example.invalid/x","click")', "=cmd|' /C calc'!A0", "+SUM(1,2)",
            "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)", "'=already quoted"]
"""Titles that a spreadsheet would run (tab- and CR-led cells: tests/unit/test_csv_safe.py)."""


def test_rejected_csv_carries_no_live_formula(tmp_path: Path, styles: pd.DataFrame, taxonomy,
                                              fashion_dir: Path) -> None:
    """Rejected rows whose title (and id) start with a formula trigger: ``rejected.csv`` opens in
    a spreadsheet as text (OWASP: a leading ``'``), ``read_rejected`` gives the values back
    exactly, and ``report.json`` keeps each neutralised cell's raw value."""
    from validation.staged import read_rejected

    rows = styles.iloc[400:500].reset_index(drop=True)
    batch = _make_batch(tmp_path / "raw" / "b0005", rows, fashion_dir)
    csv = pd.read_csv(batch / "styles.csv", dtype=str, keep_default_na=False)
    for i, formula in enumerate(FORMULAS):
        csv.loc[i, "productDisplayName"] = formula + " Shirt"
        csv.loc[i, "articleType"] = "@Hoverboards"  # unknown: the row is held back
    csv.to_csv(batch / "styles.csv", index=False)

    report = _run(tmp_path, batch, "b0005", taxonomy)

    assert report.status == "partial" and report.rejected_rows == len(FORMULAS)
    with open(report.rejected_file, newline="", encoding="utf-8") as fh:
        cells = [cell for row in csv_module.reader(fh) for cell in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    rejected = read_rejected(Path(report.rejected_file))
    assert sorted(rejected["title"]) == sorted(f + " Shirt" for f in FORMULAS)
    assert set(rejected["category_path"].str.split(" > ").str[-1]) == {"@Hoverboards"}
    saved = json.loads(Path(report.report).read_text(encoding="utf-8"))
    raw = {(c["column"], c["value"]) for c in saved["neutralised_cells"]}
    assert {("title", f + " Shirt") for f in FORMULAS} <= raw
