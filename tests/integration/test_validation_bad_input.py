"""Bad input, one case each, built by mutating real Flipkart rows: every case gets a clear reason
in the report, the raw batch is left unchanged, no bad row reaches the store, and nothing is
written outside the store, quarantine and GX folders."""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from common.catalog import load_catalog
from common.params import ValidateParams
from common.store import batch_file, read_store
from ingestion.feed import catalog_taxonomy
from validation.validate import validate_batch

pytestmark = pytest.mark.integration

FLIPKART = load_catalog("catalogs/flipkart.yaml")
LISTINGS = FLIPKART.listings_file
PARAMS = ValidateParams(drift_min_rows=3)
N = 10  # rows per batch: one bad row is a 0.1 share (partial), three are 0.3 (quarantined whole)


@pytest.fixture(scope="module")
def source(flipkart_dir: Path) -> pd.DataFrame:
    frame = pd.read_csv(flipkart_dir / LISTINGS, dtype=str, keep_default_na=False)
    has_image = frame["uniq_id"].map(lambda i: (flipkart_dir / "images" / f"{i}.jpg").is_file())
    return frame[has_image & (frame["retail_price"] != "")].reset_index(drop=True)


@pytest.fixture(scope="module")
def taxonomy(source: pd.DataFrame) -> frozenset[str]:
    return frozenset(catalog_taxonomy(source, FLIPKART))


def _write_batch(root: Path, rows: pd.DataFrame, flipkart_dir: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows.to_csv(root / LISTINGS, index=False)
    for listing_id in rows["uniq_id"]:
        src = flipkart_dir / "images" / f"{listing_id}.jpg"
        if src.is_file():
            shutil.copy(src, root / "images")
    return root


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _validate(tmp_path: Path, batch: Path, taxonomy, params=PARAMS,
              ingested_at="2026-11-02T00:00:00+00:00") -> dict:
    report = validate_batch(batch, batch.name, ingested_at, FLIPKART, taxonomy, params,
                            tmp_path / "store", tmp_path / "quarantine", tmp_path / "gx")
    return report if isinstance(report, dict) else report.model_dump(mode="json")


def _image(batch: Path, rows: pd.DataFrame, i: int) -> Path:
    return batch / "images" / f"{rows.at[i, 'uniq_id']}.jpg"


def _huge_header(batch, rows):
    """The real JPEG with its SOF0 frame header rewritten to claim 20000x20000 pixels."""
    path = _image(batch, rows, 0)
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (20000).to_bytes(2, "big") * 2  # height, width
    path.write_bytes(bytes(data))


def _reencode(fmt: str):
    def mutate(batch, rows):
        path = _image(batch, rows, 0)  # a PNG/WebP under the .jpg name: the content decides
        with Image.open(path) as img:
            img.load()
        img.save(path, format=fmt)
    return mutate


def _non_utf8_title(batch, rows):
    path = batch / LISTINGS
    title = rows.at[0, "product_name"].encode()
    data = path.read_bytes()
    assert data.count(title) >= 1
    path.write_bytes(data.replace(title, title[:4] + b"\xe9\xff" + title[4:], 1))


def _truncate(batch, rows):
    path = _image(batch, rows, 0)
    path.write_bytes(path.read_bytes()[:1500])


def _blank(batch, rows):
    Image.new("RGB", (300, 300), "white").save(_image(batch, rows, 0), format="JPEG")


def _rows(**changes) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(rows: pd.DataFrame) -> pd.DataFrame:
        rows = rows.copy()
        for col, value in changes.items():
            rows.at[0, col] = value
        return rows
    return mutate


ROW_CASES = {
    # case: (row mutation, file mutation, reason code of row 0)
    "wrong_dtype": (_rows(retail_price="1,299 Rs"), None, "price_not_a_number"),
    "negative_price": (_rows(retail_price="-499.0"), None, "price_out_of_range"),
    "implausible_price": (_rows(retail_price="1e12"), None, "price_out_of_range"),
    "unknown_category": (_rows(product_category_tree='["Hoverboards >> Flying"]'), None,
                         "unknown_category"),
    "unparseable_category": (_rows(product_category_tree="[not json"), None,
                             ("category_unparseable", "missing_category")),
    "truncated_jpeg": (None, _truncate, "image_truncated"),
    "huge_image": (None, _huge_header, "image_too_large"),
    "blank_image": (None, _blank, "image_blank"),
    "path_traversal": (_rows(uniq_id="../../../../etc/passwd"), None, "image_path_outside_batch"),
    "non_utf8_title": (None, _non_utf8_title, "invalid_utf8"),
    "title_too_short": (_rows(product_name="ab"), None, "title_length_out_of_range"),
    # issue 26: values Python's float() reads and pandas does not were stored as NaN
    "price_digit_grouping": (_rows(retail_price="1_000"), None, "price_not_a_number"),
    "price_arabic_indic": (_rows(retail_price="\u0661\u0662\u0663"), None, "price_not_a_number"),
    "price_full_width": (_rows(retail_price="\uff11\uff12\uff13"), None, "price_not_a_number"),
    "null_id": (_rows(uniq_id="NULL"), None, ("missing_listing_id", "image_missing")),
    "ansi_title": (_rows(product_name="Alisha \x1b[31mSALE\x1b[0m Solid Shorts"), None,
                   "control_character"),
    "bidi_override_title": (_rows(product_name="Alisha Shorts \u202egpj.exe"), None,
                            "control_character"),
    # the id's NUL is named; the image key it makes is refused too
    "nul_in_id": (None, None, ("control_character", "image_key_invalid")),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_bad_row_quarantined_with_reason(case, tmp_path, source, taxonomy, flipkart_dir):
    mutate_rows, mutate_files, reason = ROW_CASES[case]
    rows = source.iloc[:N].reset_index(drop=True)
    bad_id = rows.at[0, "uniq_id"]
    if mutate_rows:
        rows = mutate_rows(rows)
        bad_id = rows.at[0, "uniq_id"]
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    if case == "nul_in_id":  # the row's image is there, under the id without its NUL
        rows.at[0, "uniq_id"] = bad_id = bad_id + "\x00"
        rows.to_csv(batch / LISTINGS, index=False)
    if mutate_files:
        mutate_files(batch, rows)
    before = _snapshot(batch)

    report = _validate(tmp_path, batch, taxonomy)

    codes = reason if isinstance(reason, tuple) else (reason,)
    reason = codes[0]
    assert report["status"] == "partial", report
    assert report["reasons"] == dict.fromkeys(sorted(codes), 1)
    assert (report["accepted_rows"], report["rejected_rows"]) == (N - 1, 1)
    rejected = pd.read_csv(report["rejected_file"], dtype=str, keep_default_na=False)
    assert rejected["listing_id"].tolist() == ["" if case == "null_id" else bad_id]  # NULL: missing
    assert {r.split(":")[0] for r in rejected["reasons"].item().split("; ")} == set(codes)
    stored = read_store(tmp_path / "store")
    assert bad_id not in set(stored["listing_id"]) and len(stored) == N - 1
    assert _snapshot(batch) == before, "the raw batch must be left unchanged"
    # nothing written outside the store (and its index beside it), quarantine and GX
    assert {p.name for p in tmp_path.iterdir()} == {"raw", "store", "quarantine", "gx", ".store-index"}
    json.dumps(report)
    if case == "huge_image":
        assert rejected["reasons"].item() == "image_too_large: 20000x20000"
    if case == "unknown_category":
        assert report["warnings"] and "'Hoverboards > Flying' (1)" in report["warnings"][0]
    if case == "non_utf8_title":
        assert rejected["reasons"].item() == "invalid_utf8: product_name"
    if case == "nul_in_id":
        assert ("control_character: uniq_id holds U+0000 (NUL) at character 33"
                in rejected["reasons"].item().split("; "))
    if case == "price_digit_grouping":
        assert rejected["reasons"].item() == "price_not_a_number: '1_000'"


def test_png_webp_and_csv_quoting_accepted(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    tricky = 'Say "hi", world\nsecond line, with "quotes"'
    rows.at[2, "product_name"] = tricky
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    _reencode("PNG")(batch, rows)
    _reencode("WEBP")(batch, rows.iloc[1:].reset_index(drop=True))

    report = _validate(tmp_path, batch, taxonomy)

    assert report["status"] == "accepted", report
    stored = read_store(tmp_path / "store").set_index("listing_id")
    assert stored.at[rows.at[2, "uniq_id"], "title"] == tricky.strip()
    assert stored.at[rows.at[0, "uniq_id"], "image_key"].endswith(".png")
    assert stored.at[rows.at[1, "uniq_id"], "image_key"].endswith(".webp")
    assert stored["currency"].eq("INR").all() and stored["price"].dtype == "float64"
    assert stored["category_path"].map(lambda p: 1 <= p.count(" > ") + 1 <= 2).all()


def test_duplicate_ids_share_over_threshold(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    rows.loc[1:2, "uniq_id"] = rows.at[0, "uniq_id"]  # three rows, one id: 0.3 > 0.2
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "quarantined"
    assert report["reasons"]["duplicate_listing_id"] == 3
    assert not batch_file(tmp_path / "store", batch.name).exists()
    rejected = pd.read_csv(report["rejected_file"], dtype=str)
    assert len(rejected) == N  # nothing raw is lost: every row is in quarantine


def _drop_category(batch, rows):
    rows.drop(columns=["product_category_tree"]).to_csv(batch / LISTINGS, index=False)


def _header_only(batch, rows):
    rows.iloc[:0].to_csv(batch / LISTINGS, index=False)


def _binary(batch, rows):
    shutil.copy(_image(batch, rows, 0), batch / LISTINGS)  # a JPEG where the table should be


def _json_not_a_table(batch, rows):
    (batch / LISTINGS).unlink()
    (batch / LISTINGS.replace(".csv", ".jsonl")).write_text('"just a string"\n42\n')


def _utf16(batch, rows):
    path = batch / LISTINGS
    path.write_bytes(codecs.BOM_UTF16_LE + path.read_text(encoding="utf-8").encode("utf-16-le"))


def _linked(batch, rows):
    path = batch / LISTINGS
    elsewhere = batch.parent / "elsewhere.csv"
    path.replace(elsewhere)
    path.symlink_to(elsewhere)


def _struct_titles(batch, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (batch / LISTINGS).unlink()
    arrays = {c: pa.array(rows[c].tolist(), pa.string()) for c in rows.columns}
    arrays["product_name"] = pa.array([{"en": t, "hi": t} for t in rows["product_name"]])
    pq.write_table(pa.table(arrays), batch / LISTINGS.replace(".csv", ".parquet"))


@pytest.mark.parametrize(("mutate", "reason"), [
    (_utf16, "listings_file_encoding"),
    (_linked, "listings_file_not_regular"),
    (_struct_titles, "column_type_invalid"),
    (_drop_category, "missing_columns"),
    (_header_only, "listings_file_empty"),
    (_binary, "listings_file_unparseable"),
    (_json_not_a_table, "listings_file_not_a_table"),
])
def test_bad_batch_quarantined_whole(mutate, reason, tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    mutate(batch, rows)
    before = _snapshot(batch)
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "quarantined" and list(report["reasons"]) == [reason]
    assert report["batch_reasons"][0].startswith(reason)
    assert not batch_file(tmp_path / "store", batch.name).exists()
    assert Path(report["report"]).is_file() and _snapshot(batch) == before


def test_cross_store_duplicates_drift_and_updates(tmp_path, source, taxonomy, flipkart_dir):
    first = source.iloc[:N].reset_index(drop=True)
    b1 = _write_batch(tmp_path / "raw" / "b-2026-11-02", first, flipkart_dir)
    assert _validate(tmp_path, b1, taxonomy)["status"] == "accepted"

    # Week 2: one category only (label drift), prices x20 (price drift), one image already in
    # the store under another id (a train/test leak), and an update of a stored listing.
    tree = first.at[0, "product_category_tree"]
    second = source.iloc[N:2 * N].reset_index(drop=True)
    second["product_category_tree"] = tree
    second["retail_price"] = (second["retail_price"].astype(float) * 20).astype(str)
    update = first.iloc[[3]].assign(product_name="Updated title of a stored listing")
    second = pd.concat([second, update], ignore_index=True)
    b2 = _write_batch(tmp_path / "raw" / "b-2026-11-09", second, flipkart_dir)
    shutil.copy(flipkart_dir / "images" / f"{first.at[1, 'uniq_id']}.jpg",
                _image(b2, second, 0))

    report = _validate(tmp_path, b2, taxonomy, ingested_at="2026-11-09T00:00:00+00:00")

    assert report["status"] == "partial" and report["reasons"] == {"duplicate_image": 1}
    rejected = pd.read_csv(report["rejected_file"], dtype=str)
    assert f"same image as listing {first.at[1, 'uniq_id']} (batch b-2026-11-02)" in \
        rejected["reasons"].item()
    drift = report["drift"]
    assert drift["label_js_distance"] > PARAMS.drift_label_js_max
    assert drift["price_ks_statistic"] > PARAMS.drift_price_ks_max
    assert {w.split(":")[0] for w in report["warnings"]} == {"label_drift", "price_drift"}
    stored = read_store(tmp_path / "store").set_index("listing_id")
    assert stored.at[first.at[3, "uniq_id"], "title"] == "Updated title of a stored listing"
    assert len(stored) == N + N - 1  # the update replaced a row; the duplicate was held back

    blocking = PARAMS.model_copy(update={"drift_blocks": True})
    again = _validate(tmp_path, b2, taxonomy, blocking, ingested_at="2026-11-09T00:00:00+00:00")
    assert again["status"] == "quarantined"
    assert any(r.startswith("label_drift") for r in again["batch_reasons"])
    # re-validation compared the batch with the store without itself: same duplicate found
    assert again["reasons"] == {"duplicate_image": 1}


def _write_records(path: Path, rows: pd.DataFrame, change: dict[int, Callable[[list], list]]) -> None:
    """Writes ``rows`` as RFC 4180 CSV, record ``i`` passed through ``change[i]`` first."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(rows.columns)
        for i, record in enumerate(rows.astype(str).values.tolist()):
            writer.writerow(change.get(i, lambda r: r)(record))


def test_a_row_with_another_field_count_is_rejected_alone(tmp_path, source, taxonomy, flipkart_dir):
    """One record with a surplus field and one missing its last: today the first quarantined the
    whole batch with rows=0 and no rejected.csv, and pandas padded the second silently."""
    rows = source.iloc[:N].reset_index(drop=True)
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    _write_records(batch / LISTINGS, rows, {3: lambda r: [*r, "surplus"], 6: lambda r: r[:-1]})
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "partial", report
    assert (report["rows"], report["accepted_rows"], report["rejected_rows"]) == (N, N - 2, 2)
    rejected = pd.read_csv(report["rejected_file"], dtype=str, keep_default_na=False)
    first = [r.split("; ")[0] for r in rejected["reasons"]]
    width = len(rows.columns)
    assert first[0].startswith("malformed_row: line") and f"{width + 1} fields, the header has {width}" in first[0]
    assert f"{width - 1} fields, the header has {width}" in first[1]
    stored = set(read_store(tmp_path / "store")["listing_id"])
    assert stored == set(rows["uniq_id"]) - {rows.at[3, "uniq_id"], rows.at[6, "uniq_id"]}


def test_a_json_line_that_cannot_be_decoded_is_rejected_alone(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    (batch / LISTINGS).unlink()
    lines = [json.dumps(r) for r in rows.to_dict("records")]
    lines[4] = lines[4][: len(lines[4]) // 2]  # cut in the middle
    (batch / LISTINGS.replace(".csv", ".jsonl")).write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "partial" and report["rejected_rows"] == 1, report
    assert report["reasons"] == {"malformed_row": 1}
    rejected = pd.read_csv(report["rejected_file"], dtype=str, keep_default_na=False)
    assert rejected["reasons"].item().startswith("malformed_row: line 5: ")


def test_a_column_named_twice_quarantines_the_batch_naming_it(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    conflicting = rows.assign(product_category_tree_2='["Hoverboards >> Flying"]')
    conflicting.columns = [*rows.columns, "product_category_tree"]
    conflicting.to_csv(batch / LISTINGS, index=False)
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "quarantined" and list(report["reasons"]) == ["duplicate_columns"]
    assert "'product_category_tree' (columns 5, 16)" in report["batch_reasons"][0]


def test_a_title_of_invisible_characters_is_missing(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    rows.at[0, "product_name"] = "\u200b\u200c\u200d\u2060\ufeff \u00a0\u3164"
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    report = _validate(tmp_path, batch, taxonomy)
    assert report["status"] == "partial" and report["reasons"] == {"missing_title": 1}, report


def test_a_relabel_is_accepted_and_listed_as_a_warning(tmp_path, source, taxonomy, flipkart_dir):
    first = source.iloc[:N].reset_index(drop=True)
    b1 = _write_batch(tmp_path / "raw" / "b-2026-11-02", first, flipkart_dir)
    assert _validate(tmp_path, b1, taxonomy)["status"] == "accepted"
    canon = read_store(tmp_path / "store").set_index("listing_id")
    flipped = first.iloc[[2]].copy()
    other = next(t for t in first["product_category_tree"] if t != flipped.iat[0, 4])
    flipped["product_category_tree"] = other
    listing = flipped.iat[0, 0]
    second = pd.concat([source.iloc[N:2 * N], flipped], ignore_index=True)
    b2 = _write_batch(tmp_path / "raw" / "b-2026-11-09", second, flipkart_dir)
    report = _validate(tmp_path, b2, taxonomy, ingested_at="2026-11-09T00:00:00+00:00")
    assert report["status"] == "accepted", report
    (relabel,) = report["relabels"]
    new_path = read_store(tmp_path / "store").set_index("listing_id").at[listing, "category_path"]
    assert relabel == {"listing_id": listing, "previous_category": canon.at[listing, "category_path"],
                       "category_path": new_path, "previous_batch": "b-2026-11-02"}
    (warning,) = [w for w in report["warnings"] if w.startswith("relabel:")]
    assert listing in warning and canon.at[listing, "category_path"] in warning
    page = Path(report["data_docs_page"]).read_text(encoding="utf-8")
    assert "Relabel (warning)" in page and listing in page


def test_reports_stay_bounded_for_a_huge_title(tmp_path, source, taxonomy, flipkart_dir):
    rows = source.iloc[:N].reset_index(drop=True)
    rows.at[0, "product_name"] = "Watch " * 200_000  # 1,200,000 characters
    batch = _write_batch(tmp_path / "raw" / "b-2026-11-02", rows, flipkart_dir)
    report = _validate(tmp_path, batch, taxonomy)
    assert report["reasons"] == {"title_length_out_of_range": 1}
    results = [p for p in (tmp_path / "gx").rglob("*.json") if "validations" in p.parts]
    assert results and max(p.stat().st_size for p in results) < 300_000
    assert Path(report["data_docs_page"]).stat().st_size < 300_000
    rejected = pd.read_csv(report["rejected_file"], dtype=str)
    assert len(rejected["title"].item()) == len(rows.at[0, "product_name"].strip())  # kept whole
