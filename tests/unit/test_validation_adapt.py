"""Reading listings files (CSV, JSON Lines, Parquet), the catalog adapter and the taxonomy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import CANONICAL_COLUMNS, load_catalog
from validation.adapt import read_listings_file, to_canonical
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
    ("styles.csv", b"\xff\xfe\x00\x81\x92binary", "listings_file_unparseable"),
    ("styles.jsonl", b'{"id": 1}\n{broken\n', "listings_file_unparseable"),
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
