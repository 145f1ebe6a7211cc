"""Hostile listings files (issue 26): real Flipkart and fashion rows with one hostile value or
one hostile file property each. Every case is refused with a reason naming the problem (the row,
or the batch), never stored as something else, and nothing raises out of the reader."""

from __future__ import annotations

import codecs
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.catalog import CatalogError, load_catalog
from common.cli import run_command
from common.text import find_control, normalize_text
from validation.adapt import (
    COLUMN_TYPE_INVALID,
    CONTROL_CHARACTER,
    LISTINGS_FILE_ENCODING,
    LISTINGS_FILE_NOT_REGULAR,
    MAX_JSON_DEPTH,
    ROW_ERRORS,
    VALUE_TYPE_INVALID,
    find_listings_file,
    parse_price,
    read_listings_file,
    source_errors,
    to_canonical,
)
from validation.errors import BatchError

FLIPKART = load_catalog("catalogs/flipkart.yaml")
FASHION = load_catalog("catalogs/fashion.yaml")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def flipkart_rows(flipkart_dir: Path) -> pd.DataFrame:
    """Six real Flipkart rows with a price, every cell text."""
    frame = pd.read_csv(flipkart_dir / FLIPKART.listings_file, dtype=str, keep_default_na=False)
    return frame[frame["retail_price"] != ""].iloc[:6].reset_index(drop=True)


@pytest.fixture(scope="module")
def fashion_rows(fashion_dir: Path) -> pd.DataFrame:
    return pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False).iloc[:6]


def _write(rows: pd.DataFrame, folder: Path, stem: str, fmt: str) -> Path:
    path = folder / f"{stem}.{fmt}"
    if fmt == "csv":
        rows.to_csv(path, index=False)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                for r in rows.to_dict(orient="records")), encoding="utf-8")
    else:
        rows.to_parquet(path, index=False)
    return path


def _adapt(path: Path, catalog=FLIPKART) -> tuple[pd.DataFrame, list[str | None]]:
    raw = read_listings_file(path)
    return to_canonical(raw, catalog, "b", "2026-11-02"), source_errors(raw, catalog).tolist()


# --- 1. one price parser ---------------------------------------------------------------------

REFUSED_PRICES = ["1_000", "\u0661\u0662\u0663", "\uff11\uff12\uff13", "1,299", "inf", "-inf",
                  "1e309", "0x1F", "12 rupees", "\u20b9999", "1.2.3", "\u0967\u0968\u0969"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_price_float_reads_but_pandas_does_not_is_refused_naming_it(fmt, tmp_path, flipkart_rows):
    """``float()`` reads '1_000', Arabic-Indic and full-width digits; they were stored as NaN
    and accepted. Now each is refused with its value, and what is accepted is stored as is."""
    rows = pd.concat([flipkart_rows] * 3, ignore_index=True).iloc[:len(REFUSED_PRICES) + 3].copy()
    rows["uniq_id"] = [f"{u}-{i}" for i, u in enumerate(rows["uniq_id"])]
    accepted = ["999", "1299.50", "-0.5"]
    rows["retail_price"] = REFUSED_PRICES + accepted
    canon, errors = _adapt(_write(rows, tmp_path, "flipkart_com-ecommerce_sample_1050", fmt))
    for i, cell in enumerate(REFUSED_PRICES):
        assert errors[i] == f"price_not_a_number: {cell!r}", (cell, errors[i])
        assert math.isnan(canon.at[i, "price"])
    k = len(REFUSED_PRICES)
    assert errors[k:] == [None] * 3
    assert canon["price"].iloc[k:].tolist() == [999.0, 1299.5, -0.5]


def test_the_price_checks_and_the_stored_price_agree(flipkart_rows):
    """For every cell: a price without a reason is stored as the float the parser gives, a price
    with one is stored as NaN (the two went through different parsers before)."""
    cells = [*REFUSED_PRICES, "999", " 42 ", "1E3", ".5", "5.", "+7", "NaN", "null", "", "\u00a0"]
    raw = pd.concat([flipkart_rows.iloc[[0]]] * len(cells), ignore_index=True).astype(object)
    raw["retail_price"] = cells
    canon = to_canonical(raw, FLIPKART, "b", "2026-11-02")
    for cell, price, error in zip(cells, canon["price"], source_errors(raw, FLIPKART), strict=True):
        text = normalize_text(cell)
        if error is None and text is not None and text.lower() not in ("nan", "null"):
            assert price == parse_price(text) and math.isfinite(price), cell
        else:
            assert math.isnan(price), cell


# --- 2. null tokens ---------------------------------------------------------------------------

NULL_IDS = ["NULL", "nan", "None", "undefined", "null", "N/A", " ", "\u200b", "NaN", "<NA>"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_null_tokens_are_missing_ids_titles_and_categories(fmt, tmp_path, fashion_rows):
    rows = pd.concat([fashion_rows] * 2, ignore_index=True).iloc[:len(NULL_IDS)].copy()
    rows["id"] = NULL_IDS
    rows.loc[0, "productDisplayName"] = "NULL"
    rows.loc[1, "articleType"] = "N/A"
    rows.loc[2, "usage"] = "NA"  # an attribute keeps its value as written
    canon, _ = _adapt(_write(rows, tmp_path, "styles", fmt), FASHION)
    assert canon["listing_id"].tolist() == [None] * len(NULL_IDS)
    assert canon.at[0, "title"] is None and canon.at[1, "category_path"] is None
    assert json.loads(canon.at[2, "attributes"])["usage"] == "NA"


def test_a_null_token_inside_a_category_tree_is_a_missing_level(flipkart_rows):
    raw = flipkart_rows.iloc[:2].copy()
    raw["product_category_tree"] = ['["Clothing >> null >> Shorts"]', "NULL"]
    canon = to_canonical(raw, FLIPKART, "b", "2026-11-02")
    assert canon["category_path"].tolist() == [None, None]
    assert source_errors(raw, FLIPKART).tolist()[1] is None  # missing, not unparseable


# --- 3. column and value types ----------------------------------------------------------------

def _parquet(rows: pd.DataFrame, path: Path, **typed: pa.Array) -> Path:
    arrays = {c: typed.get(c, pa.array(rows[c].tolist(), pa.string())) for c in rows.columns}
    pq.write_table(pa.table(arrays), path)
    return path


def test_a_parquet_struct_title_refuses_the_batch_naming_column_and_type(tmp_path, flipkart_rows):
    titles = pa.array([{"en": t, "hi": t} for t in flipkart_rows["product_name"]])
    path = _parquet(flipkart_rows, tmp_path / "listings.parquet", product_name=titles)
    with pytest.raises(BatchError) as info:
        _adapt(path)
    assert info.value.reason == COLUMN_TYPE_INVALID
    assert ("column 'product_name' (the title) is struct<en: string, hi: string>, expected text "
            "or a number") in str(info.value)


def test_a_parquet_list_attribute_refuses_the_batch(tmp_path, fashion_rows):
    colours = pa.array([[c, c] for c in fashion_rows["baseColour"]])
    path = _parquet(fashion_rows, tmp_path / "styles.parquet", baseColour=colours)
    with pytest.raises(BatchError, match=r"'baseColour' \(an attribute\) is list<element: string>") as info:
        _adapt(path, FASHION)
    assert info.value.reason == COLUMN_TYPE_INVALID


def test_unmapped_nested_columns_and_a_list_category_tree_are_read(tmp_path, flipkart_rows):
    """A list of strings is what a json_list tree is; a struct nobody maps is not looked at."""
    trees = pa.array([json.loads(t) for t in flipkart_rows["product_category_tree"]])
    specs = pa.array([{"k": s[:10]} for s in flipkart_rows["product_specifications"]])
    path = _parquet(flipkart_rows, tmp_path / "listings.parquet", product_category_tree=trees,
                    product_specifications=specs)
    canon, errors = _adapt(path)
    assert errors == [None] * len(flipkart_rows)
    assert canon["category_path"].tolist() == to_canonical(flipkart_rows, FLIPKART, "b", "x")[
        "category_path"].tolist()
    assert all(canon["category_path"].notna())


def test_a_json_object_or_array_for_a_text_column_rejects_the_row(tmp_path, flipkart_rows):
    records = flipkart_rows.to_dict(orient="records")
    records[1]["product_name"] = {"en": records[1]["product_name"], "hi": "x"}
    records[2]["retail_price"] = [999, 1299]
    records[3]["product_category_tree"] = json.loads(records[3]["product_category_tree"])  # real array
    records[4]["product_category_tree"] = {"path": "A >> B"}
    path = tmp_path / "listings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    canon, errors = _adapt(path)
    assert errors[0] is None and errors[3] is None and errors[5] is None
    assert errors[1] == (f"{VALUE_TYPE_INVALID}: product_name (the title) is a JSON object, "
                         "expected text or a number")
    assert errors[2].startswith(f"{VALUE_TYPE_INVALID}: retail_price (the price) is a JSON array")
    assert errors[4].startswith(f"{VALUE_TYPE_INVALID}: product_category_tree (the category tree) "
                                "is a JSON object")
    assert canon.at[3, "category_path"] is not None


# --- 4 and 7. control characters ----------------------------------------------------------------

@pytest.mark.parametrize(("column", "value", "found"), [
    ("product_name", "Alisha \x1b[31mSALE\x1b[0m Shorts", "U+001B (ESCAPE) at character 8"),
    ("product_name", "Alisha\x00 Shorts", "U+0000 (NUL) at character 7"),
    ("product_name", "Shorts \u202egnp.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE) at character 8"),
    ("product_name", "Shorts \u2066x\u2069", "U+2066 (LEFT-TO-RIGHT ISOLATE) at character 8"),
    ("product_name", "Shorts\u200f", "U+200F (RIGHT-TO-LEFT MARK) at character 7"),
    ("description", "Key Features\x85of Alisha", "U+0085 (NEXT LINE) at character 13"),
    ("brand", "\x07Alisha", "U+0007 (BELL) at character 1"),
    ("uniq_id", "{id}\x00", "U+0000 (NUL) at character 33"),
    ("uniq_id", "{id}\x00../../etc/passwd", "U+0000 (NUL) at character 33"),
])
def test_a_control_character_rejects_the_row_saying_so(column, value, found, tmp_path, flipkart_rows):
    rows = flipkart_rows.copy()
    rows.at[0, column] = value.replace("{id}", rows.at[0, "uniq_id"])
    _, errors = _adapt(_write(rows, tmp_path, "listings", "csv"))
    assert errors[0] == f"{CONTROL_CHARACTER}: {column} holds {found}"
    assert errors[1:] == [None] * (len(rows) - 1)


def test_line_breaks_and_tabs_inside_text_are_text(tmp_path, flipkart_rows):
    rows = flipkart_rows.copy()
    rows.at[0, "product_name"] = "Alisha\tSolid\r\nWomen's Shorts"
    rows.at[1, "product_name"] = "\u200fShorts"  # a mark at an end is refused, not stripped
    canon, errors = _adapt(_write(rows, tmp_path, "listings", "jsonl"))
    assert errors[0] is None and canon.at[0, "title"] == "Alisha\tSolid\r\nWomen's Shorts"
    assert errors[1].startswith(CONTROL_CHARACTER)
    assert normalize_text("\x00id\x1b ") == "\x00id\x1b" and find_control("a\tb\nc") is None


# --- 5. nesting -------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("as_array", [False, True])
def test_a_record_nesting_100000_levels_is_one_malformed_row(as_array, tmp_path, flipkart_rows):
    lines = [json.dumps(r) for r in flipkart_rows.to_dict(orient="records")]
    lines[2] = lines[2][:-1] + f', "extra": {DEEP}}}'
    path = tmp_path / "listings.jsonl"
    path.write_text("[" + ",\n".join(lines) + "]" if as_array else "\n".join(lines), encoding="utf-8")
    raw = read_listings_file(path)
    where = "record 3" if as_array else "line 3"
    assert raw.attrs[ROW_ERRORS] == {
        2: f"malformed_row: {where}: nesting deeper than {MAX_JSON_DEPTH} levels"}
    errors = source_errors(raw, FLIPKART).tolist()
    assert errors[2].startswith("malformed_row") and errors.count(None) == len(lines) - 1


def test_a_category_tree_cell_nesting_100000_levels_is_unparseable(tmp_path, flipkart_rows):
    rows = flipkart_rows.copy()
    rows.at[1, "product_category_tree"] = DEEP
    canon, errors = _adapt(_write(rows, tmp_path, "listings", "csv"))
    assert errors[1] == "category_unparseable: product_category_tree"
    assert canon.at[1, "category_path"] is None


# --- 6. encodings -------------------------------------------------------------------------------

@pytest.mark.parametrize(("codec", "bom", "found"), [
    ("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16 LE (byte order mark FF FE)"),
    ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 BE (byte order mark FE FF)"),
    ("utf-32-le", codecs.BOM_UTF32_LE, "UTF-32 LE (byte order mark FF FE 00 00)"),
    ("utf-32-be", codecs.BOM_UTF32_BE, "UTF-32 BE (byte order mark 00 00 FE FF)"),
    ("utf-16-le", b"", "UTF-16 LE without a byte order mark"),
])
@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_a_utf16_or_utf32_file_names_its_encoding(codec, bom, found, ext, tmp_path, flipkart_rows):
    text = _write(flipkart_rows, tmp_path, "utf8", ext).read_text(encoding="utf-8")
    path = tmp_path / f"listings.{ext}"
    path.write_bytes(bom + text.encode(codec))
    with pytest.raises(BatchError) as info:
        read_listings_file(path)
    assert info.value.reason == LISTINGS_FILE_ENCODING
    assert str(info.value) == (f"{LISTINGS_FILE_ENCODING}: listings.{ext} "
                               + ("is " if bom else "looks like ") + found
                               + ("" if bom else " (a NUL byte beside every ASCII character)")
                               + "; listings files must be UTF-8")


def test_a_latin1_file_rejects_only_its_non_utf8_rows(tmp_path, flipkart_rows):
    rows = flipkart_rows.copy()
    rows.at[3, "product_name"] = "Caf\u00e9 Mug"
    path = tmp_path / "listings.csv"
    path.write_bytes(rows.to_csv(index=False).encode("latin-1", "replace"))
    _, errors = _adapt(path)
    assert errors[3] == "invalid_utf8: product_name" and errors.count(None) == len(rows) - 1


# --- links and FIFOs ----------------------------------------------------------------------------

def test_a_linked_listings_file_is_found_and_refused(tmp_path, flipkart_rows):
    target = _write(flipkart_rows, tmp_path, "elsewhere", "csv")
    batch = tmp_path / "batch"
    batch.mkdir()
    (batch / "flipkart_com-ecommerce_sample_1050.jsonl").symlink_to(target)
    found = find_listings_file(batch, FLIPKART.listings_file)
    assert found.name.endswith(".jsonl")  # lstat: the link is there, not "missing"
    with pytest.raises(BatchError) as info:
        read_listings_file(found)
    assert info.value.reason == LISTINGS_FILE_NOT_REGULAR
    assert "flipkart_com-ecommerce_sample_1050.jsonl is a symbolic link" in str(info.value)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_a_fifo_listings_file_is_refused_without_blocking(ext, tmp_path):
    path = tmp_path / f"listings.{ext}"
    os.mkfifo(path)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(outcome, path), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], BatchError) and outcome[0].reason == LISTINGS_FILE_NOT_REGULAR
    assert f"listings.{ext} is a FIFO" in str(outcome[0])


def _catch(outcome: list, path: Path) -> None:
    try:
        read_listings_file(path)
    except BatchError as exc:
        outcome.append(exc)


# --- 8. catalog files -----------------------------------------------------------------------------

def _catalog_without_title(tmp_path: Path) -> Path:
    text = (PROJECT_ROOT / "catalogs" / "fashion.yaml").read_text(encoding="utf-8")
    path = tmp_path / "no-title.yaml"
    path.write_text("".join(line for line in text.splitlines(keepends=True)
                            if not line.lstrip().startswith("title:")), encoding="utf-8")
    return path


def test_a_catalog_without_a_required_key_is_one_clear_error(tmp_path, capsys):
    path = _catalog_without_title(tmp_path)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert message.startswith(f"{path}: required key 'columns.title' is missing: write "
                              "`title: <source column>` under `columns:`")
    assert "null" in message  # and how to say there is none
    assert run_command(lambda: load_catalog(path)) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_cli_that_loads_a_broken_catalog_prints_one_line(tmp_path):
    """``python -m validation.staged`` goes through run_command: no traceback, status 2."""
    params = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8").replace(
        "catalog: catalogs/fashion.yaml", f"catalog: {_catalog_without_title(tmp_path)}", 1)
    (tmp_path / "params.yaml").write_text(params, encoding="utf-8")
    env = {**os.environ, "LCP_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run([sys.executable, "-m", "validation.staged", "--params",
                           str(tmp_path / "params.yaml")], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "columns.title" in proc.stderr
