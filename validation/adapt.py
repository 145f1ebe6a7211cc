"""Catalog adapter: a batch's listings file -> canonical listings (``CANONICAL_COLUMNS``)."""

from __future__ import annotations

import json
import math
import string
from datetime import datetime
from pathlib import Path

import pandas as pd

from common.catalog import CANONICAL_COLUMNS, PATH_SEP, Catalog
from validation.errors import BatchError

_CSV = {".csv"}
_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}


def _text(value: object) -> str | None:
    """One source value as text; null-likes and blank strings -> ``None``.

    Integral floats print without ``.0`` (ids from JSON or from a nullable Parquet int column).
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    return text or None


def _stringify(frame: pd.DataFrame) -> pd.DataFrame:
    """All columns as object columns of ``str`` or ``None``."""
    out = {str(c).strip(): pd.Series([_text(v) for v in frame[c].tolist()], dtype=object)
           for c in frame.columns}
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def _read_json_lines(path: Path) -> pd.DataFrame:
    text = path.read_text(encoding="utf-8-sig")
    records = None
    if text.lstrip().startswith("["):  # a plain JSON array of records is accepted too
        try:
            records = json.loads(text)
        except json.JSONDecodeError:
            records = None  # maybe JSON Lines whose records are arrays; parsed below
    if records is None:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BatchError("listings_file_unparseable",
                                 f"{path.name} line {lineno}: {exc}") from exc
    if not isinstance(records, list):
        raise BatchError("listings_file_not_a_table", f"{path.name}: expected JSON records")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise BatchError("listings_file_not_a_table",
                             f"{path.name} record {i + 1} is not a JSON object")
    return pd.DataFrame.from_records(records)


def read_listings_file(path: str | Path) -> pd.DataFrame:
    """Reads a batch's listings file into a raw table of text values.

    The format comes from the extension: ``.csv`` (UTF-8, header row), ``.jsonl``/``.json``/
    ``.ndjson`` (JSON Lines; a JSON array of objects is accepted too) or ``.parquet``.

    Args:
        path: the listings file.

    Returns:
        One row per listing, one object column per source column (names stripped), each value a
        stripped ``str`` or ``None`` (empty cells, JSON nulls, NaN). Index ``0..n-1``.

    Raises:
        BatchError: ``listings_file_missing`` (no such file), ``listings_file_unsupported``
            (unknown extension), ``listings_file_unparseable`` (parser error, bad encoding),
            ``listings_file_not_a_table`` (e.g. JSON lines that are not objects) or
            ``listings_file_empty`` (no rows or no columns).
    """
    path = Path(path)
    if not path.is_file():
        raise BatchError("listings_file_missing", f"{path.name} not found in the batch")
    ext = path.suffix.lower()
    try:
        if ext in _CSV:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""],
                                encoding="utf-8-sig")
        elif ext in _JSONL:
            frame = _read_json_lines(path)
        elif ext in _PARQUET:
            frame = pd.read_parquet(path)
        else:
            raise BatchError("listings_file_unsupported",
                             f"{path.name}: extension {ext or '(none)'} is not csv, jsonl or parquet")
    except BatchError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise BatchError("listings_file_empty", f"{path.name} is empty") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        # pyarrow.ArrowInvalid is a ValueError; a bad Parquet footer is an OSError/ArrowInvalid.
        raise BatchError("listings_file_unparseable", f"{path.name}: {exc}") from exc
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise BatchError("listings_file_empty", f"{path.name} has no rows")
    return _stringify(frame)


def _template_fields(template: str) -> list[str]:
    """Top-level field names of a ``str.format`` template (``"images/{id}.jpg"`` -> ``["id"]``)."""
    names = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field:
            names.append(field.split(".")[0].split("[")[0])
    return names


def _format_key(template: str, row: dict) -> str | None:
    try:
        return template.format(**row)
    except (KeyError, IndexError, ValueError, AttributeError):
        return None


def to_canonical(raw: pd.DataFrame, catalog: Catalog, batch_id: str,
                 ingested_at: str | datetime) -> pd.DataFrame:
    """Maps a raw listings table onto the canonical listing.

    Args:
        raw: output of :func:`read_listings_file` (text or ``None`` values).
        catalog: the catalog adapter (source column of each canonical field, image key template).
        batch_id: id of the batch, copied to every row.
        ingested_at: when the batch was ingested (ISO 8601 string, or a datetime turned into one).

    Returns:
        ``CANONICAL_COLUMNS``, same index as ``raw``: text columns are object columns of ``str``
        or ``None``; ``price`` is float64 (NaN when absent or not a number); ``category_path`` is
        the mapped level columns joined with ``" > "`` (``None`` when any level is blank);
        ``image_key`` is the catalog template formatted with the source row (``None`` when a
        field is null); ``image_sha256`` is ``None`` (filled after the image check).

    Raises:
        BatchError: ``missing_columns`` naming the mapped source columns (including those used
            by the image key template) that the file lacks.
    """
    cols = catalog.columns
    needed = [cols.listing_id, cols.title, *cols.category_path,
              *(c for c in (cols.description, cols.brand, cols.price) if c),
              *_template_fields(catalog.image_key)]
    missing = sorted({c for c in needed if c not in raw.columns})
    if missing:
        raise BatchError("missing_columns",
                         f"listings file lacks mapped source column(s): {', '.join(missing)}")
    if isinstance(ingested_at, datetime):
        ingested_at = ingested_at.isoformat()
    n = len(raw)

    def text(col: str | None) -> pd.Series:
        if col is None:
            return pd.Series([None] * n, index=raw.index, dtype=object)
        return pd.Series([_text(v) for v in raw[col].tolist()], index=raw.index, dtype=object)

    levels = [text(c).tolist() for c in cols.category_path]
    paths = [None if any(v is None for v in vals) else PATH_SEP.join(vals)
             for vals in zip(*levels, strict=True)]
    records = raw.to_dict(orient="records")
    image_keys = [_format_key(catalog.image_key, {k: v for k, v in rec.items() if v is not None})
                  for rec in records]
    price = (pd.to_numeric(text(cols.price), errors="coerce").astype("float64") if cols.price
             else pd.Series([float("nan")] * n, index=raw.index, dtype="float64"))

    def const(value: object) -> pd.Series:
        return pd.Series([value] * n, index=raw.index, dtype=object)

    out = pd.DataFrame({
        "listing_id": text(cols.listing_id),
        "title": text(cols.title),
        "description": text(cols.description),
        "brand": text(cols.brand),
        "price": price,
        "currency": const(catalog.currency),
        "category_path": pd.Series(paths, index=raw.index, dtype=object),
        "image_key": pd.Series(image_keys, index=raw.index, dtype=object),
        "image_sha256": const(None),
        "catalog": const(catalog.name),
        "batch_id": const(batch_id),
        "ingested_at": const(ingested_at),
    })
    return out[list(CANONICAL_COLUMNS)]
