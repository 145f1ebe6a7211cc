"""Reading listings files (CSV, JSON Lines, Parquet), the catalog adapter and the taxonomy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import CANONICAL_COLUMNS, load_catalog
from validation.adapt import ROW_ERRORS, read_listings_file, source_errors, to_canonical
from validation.errors import BatchError
from validation.taxonomy import load_taxonomy

FASHION = load_catalog("catalogs/fashion.yaml")
ROWS = [
    {"id": 1563, "gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear",
     "articleType": "Tshirts", "baseColour": "Blue", "season": "Fall", "usage": "Sports",
     "productDisplayName": " Quechua Men Blue T-shirt "},
    {"id": 1580, "gender": "Women", "masterCategory": "Apparel", "subCategory": " ",
     "articleType": "Swimwear", "baseColour": "Black", "season": " ", "usage": None,
     "productDisplayName": None},
]


@pytest.fixture()
def real_csv(tmp_path: Path, fashion_dir: Path) -> Path:
    path = tmp_path / "styles.csv"
    lines = (fashion_dir / "styles.csv").read_text(encoding="utf-8").splitlines()[:6]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_real_csv_read_as_text(real_csv: Path) -> None:
    raw = read_listings_file(real_csv)
    assert len(raw) == 5 and "productDisplayName" in raw.columns
    assert all(isinstance(v, str) for v in raw["id"]) and all(isinstance(v, str) for v in raw["year"])


def test_real_csv_to_canonical(real_csv: Path) -> None:
    canon = to_canonical(read_listings_file(real_csv), FASHION, "b1", "2025-01-06T00:00:00+00:00")
    assert tuple(canon.columns) == CANONICAL_COLUMNS
    first = canon.iloc[0]
    assert first["listing_id"] == "1563"
    assert first["category_path"] == "Apparel > Topwear > Tshirts"
    assert first["image_key"] == "images/1563.jpg"
    assert first["currency"] == "INR" and first["catalog"] == "fashion"
    assert first["batch_id"] == "b1" and first["ingested_at"] == "2025-01-06T00:00:00+00:00"
    assert first["description"] is None and first["image_sha256"] is None
    assert json.loads(first["attributes"]) == {"gender": "Men", "usage": "Sports", "baseColour": "Blue",
                                               "season": "Fall"}
    assert math.isnan(first["price"]) and canon["price"].dtype == "float64"


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_other_formats(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"styles{ext}"
    if ext == ".parquet":
        pd.DataFrame(ROWS).to_parquet(path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    canon = to_canonical(read_listings_file(path), FASHION, "b1", "2025-01-06T00:00:00")
    assert canon["listing_id"].tolist() == ["1563", "1580"]  # ints read back as "1563", not 1563.0
    assert canon["title"].tolist() == ["Quechua Men Blue T-shirt", None]
    assert canon["category_path"].tolist() == ["Apparel > Topwear > Tshirts", None]  # blank level
    assert canon["image_key"].tolist() == ["images/1563.jpg", "images/1580.jpg"]
    # the catalog's declared attributes, blank and null values left out
    assert [json.loads(a) for a in canon["attributes"]] == [
        {"gender": "Men", "usage": "Sports", "baseColour": "Blue", "season": "Fall"},
        {"gender": "Women", "baseColour": "Black"}]


def test_attributes_none_when_catalog_declares_none_or_row_has_none() -> None:
    bare = FASHION.model_copy(update={"attributes": []})
    assert to_canonical(pd.DataFrame(ROWS), bare, "b1", "2025-01-06")["attributes"].tolist() == [None, None]
    rows = [{**r, "gender": None, "usage": None, "baseColour": None, "season": None} for r in ROWS]
    assert to_canonical(pd.DataFrame(rows), FASHION, "b1", "2025-01-06")["attributes"].tolist() == [None, None]


def test_missing_attribute_column_named() -> None:
    raw = pd.DataFrame([{k: v for k, v in r.items() if k != "usage"} for r in ROWS])
    with pytest.raises(BatchError, match="usage") as info:
        to_canonical(raw, FASHION, "b1", "2025-01-06")
    assert info.value.reason == "missing_columns"


def test_missing_mapped_column_named(tmp_path: Path) -> None:
    raw = pd.DataFrame([{k: v for k, v in r.items() if k != "articleType"} for r in ROWS])
    with pytest.raises(BatchError, match="articleType") as info:
        to_canonical(raw, FASHION, "b1", "2025-01-06")
    assert info.value.reason == "missing_columns"


def test_image_template_columns_required(tmp_path: Path) -> None:
    catalog = FASHION.model_copy(update={"image_key": "images/{sku}.jpg"})
    with pytest.raises(BatchError, match="sku"):
        to_canonical(pd.DataFrame(ROWS), catalog, "b1", "2025-01-06")


def test_null_template_field_gives_no_image_key() -> None:
    raw = pd.DataFrame([{**ROWS[0], "id": None}])
    assert to_canonical(raw, FASHION, "b1", "2025-01-06")["image_key"].tolist() == [None]


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("styles.csv", b"", "listings_file_empty"),
    ("styles.csv", b"id,productDisplayName\n", "listings_file_empty"),
    ("styles.csv", b'id,name\n1,"unclosed\n', "listings_file_unparseable"),
    ("styles.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x81\x92binary", "listings_file_unparseable"),
    ("styles.csv", b"\xff\xfe\x00\x81\x92binary", "listings_file_encoding"),  # a UTF-16 LE BOM
    ("styles.csv", b"id,id\n1,2\n", "duplicate_columns"),
    ("styles.jsonl", b"{broken\n[1]\n", "listings_file_not_a_table"),
    ("styles.jsonl", b"[1, 2]\n[3, 4]\n", "listings_file_not_a_table"),
    ("styles.jsonl", b"\n", "listings_file_empty"),
    ("styles.parquet", b"PAR1 not really parquet", "listings_file_unparseable"),
    ("styles.xlsx", b"whatever", "listings_file_unsupported"),
])
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BatchError) as info:
        read_listings_file(path)
    assert info.value.reason == reason
    assert name in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BatchError, match="styles.csv not found") as info:
        read_listings_file(tmp_path / "styles.csv")
    assert info.value.reason == "listings_file_missing"


def test_taxonomy_strings_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(["Apparel > Topwear > Tshirts", ["Footwear", "Shoes", "Casual Shoes"],
                                "Apparel>Topwear>Shirts"]), encoding="utf-8")
    assert load_taxonomy(path) == {"Apparel > Topwear > Tshirts", "Footwear > Shoes > Casual Shoes",
                                   "Apparel > Topwear > Shirts"}


@pytest.mark.parametrize("content", ['{"a": 1}', "[]", "[1]", '["A > > B"]', "not json", "[[]]"])
def test_taxonomy_bad_content(tmp_path: Path, content: str) -> None:
    path = tmp_path / "taxonomy.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="taxonomy"):
        load_taxonomy(path)


def _real_lines(fashion_dir: Path, n: int = 6) -> list[str]:
    return (fashion_dir / "styles.csv").read_text(encoding="utf-8").splitlines()[:n]


def test_a_csv_record_with_another_field_count_is_one_malformed_row(tmp_path, fashion_dir) -> None:
    """Real rows; row 2 gets an extra field and row 4 loses one: only those two are malformed
    (pandas raised for the first and padded the second silently)."""
    lines = _real_lines(fashion_dir)
    lines[2] += ",surplus"
    lines[4] = lines[4].rsplit(",", 1)[0]
    path = tmp_path / "styles.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = read_listings_file(path)
    assert len(raw) == 5
    errors = raw.attrs[ROW_ERRORS]
    assert sorted(errors) == [1, 3]
    assert errors[1] == "malformed_row: line 3: 11 fields, the header has 10"
    assert errors[3] == "malformed_row: line 5: 9 fields, the header has 10"
    assert raw.loc[1].isna().all() and raw.loc[3].isna().all()
    assert raw.loc[0, "id"] == lines[1].split(",")[0]
    reasons = source_errors(raw, FASHION).tolist()
    assert reasons[1].startswith("malformed_row: line 3") and reasons[0] is None


def test_a_json_line_that_does_not_parse_is_one_malformed_row(tmp_path) -> None:
    path = tmp_path / "styles.jsonl"
    good = [json.dumps(r) for r in ROWS]
    path.write_text("\n".join([good[0], "{broken", '"a string"', '{"id": 1, "id": 2}', good[1]]) + "\n",
                    encoding="utf-8")
    raw = read_listings_file(path)
    errors = raw.attrs[ROW_ERRORS]
    assert len(raw) == 5 and sorted(errors) == [1, 2, 3]
    assert errors[1].startswith("malformed_row: line 2: ")
    assert errors[2] == "malformed_row: line 3: a JSON str, not an object"
    assert "'id' given more than once" in errors[3]
    assert raw["productDisplayName"].tolist()[4] == ROWS[1]["productDisplayName"]


def test_a_column_named_twice_refuses_the_batch_naming_it(tmp_path, fashion_dir) -> None:
    lines = _real_lines(fashion_dir)
    lines = [line + ("," + "articleType" if i == 0 else ",Watches") for i, line in enumerate(lines)]
    path = tmp_path / "styles.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(BatchError) as info:
        read_listings_file(path)
    assert info.value.reason == "duplicate_columns"
    assert "'articleType' (columns 5, 11)" in str(info.value)


def test_parquet_with_a_column_named_twice_is_refused(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["1"]), pa.array(["a"]), pa.array(["b"])],
                                 names=["id", "articleType", "articleType"])
    pq.write_table(table, tmp_path / "styles.parquet")
    with pytest.raises(BatchError, match="articleType") as info:
        read_listings_file(tmp_path / "styles.parquet")
    assert info.value.reason == "duplicate_columns"


def test_text_is_nfc_and_invisible_only_text_is_empty(tmp_path, fashion_dir) -> None:
    """A title of zero-width spaces and a BOM reads as missing; an NFD id reads as its NFC."""
    lines = _real_lines(fashion_dir, 3)
    header = lines[0].split(",")
    title_at = header.index("productDisplayName")
    first = lines[1].split(",")
    first[title_at] = "\u200b\u200b\ufeff\u2060 \u00a0"
    second = lines[2].split(",")
    second[0] = "caf" + "e\u0301"  # NFD
    path = tmp_path / "styles.csv"
    path.write_text("\n".join([lines[0], ",".join(first), ",".join(second)]) + "\n", encoding="utf-8")
    raw = read_listings_file(path)
    assert raw.loc[0, "productDisplayName"] is None
    assert raw.loc[1, "id"] == "caf\u00e9"
    canon = to_canonical(raw, FASHION, "b1", "2025-01-06")
    assert canon.loc[1, "image_key"] == "images/caf\u00e9.jpg"


def test_taxonomy_levels_are_normalised_like_listings(tmp_path: Path) -> None:
    """An NFD level with a zero-width space at its end meets the listing's NFC path."""
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(["Accessories > Caf" + "e\u0301\u200b > Mugs"]), encoding="utf-8")
    assert load_taxonomy(path) == {"Accessories > Caf\u00e9 > Mugs"}
