"""Catalog adapter: a batch's listings file -> canonical listings (``CANONICAL_COLUMNS``)."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import string
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from common.catalog import CANONICAL_COLUMNS, PATH_SEP, Catalog
from common.text import normalize_text
from validation.errors import BatchError

ROW_ERRORS = "row_errors"
"""Key of ``frame.attrs`` in :func:`read_listings_file`'s result: ``{row index: reason}`` for the
records that could not be read as a row (wrong field count, undecodable JSON, not an object,
a key given twice). Such a row is all ``None`` in the frame and is rejected alone."""
MALFORMED_ROW = "malformed_row"
"""Reason code of a record that cannot be read as a row (:data:`ROW_ERRORS`)."""

_CSV = {".csv"}
_JSONL = {".jsonl", ".json", ".ndjson"}
_PARQUET = {".parquet", ".pq"}
EXTENSIONS = (".csv", ".jsonl", ".json", ".ndjson", ".parquet", ".pq")
"""Listings file extensions read by :func:`read_listings_file`, in lookup order."""

_SURROGATE = re.compile("[\udc80-\udcff]")
"""Bytes that were not UTF-8, kept by the ``surrogateescape`` error handler as lone surrogates."""
_LINE_END = re.compile(r"\r\n|\r|\n")
"""Record separators of JSON Lines. Not ``str.splitlines``: it also cuts at U+2028, U+2029 and
U+0085, which a JSON string may hold raw, and at \\x0b, \\x0c, \\x1c-\\x1e (one record read as two)."""
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _has_bad_bytes(value: object) -> bool:
    return isinstance(value, str) and _SURROGATE.search(value) is not None


def _clean(value: str) -> str:
    """Replaces undecodable bytes (lone surrogates) by U+FFFD, so the text can be written."""
    if _SURROGATE.search(value) is None:
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def find_listings_file(batch_dir: str | Path, name: str) -> Path:
    """The listings file of a batch: ``name`` itself, else the one file with the same stem and
    another supported extension (a catalog declaring ``listings.csv`` also reads a batch that
    ships ``listings.jsonl`` or ``listings.parquet``).

    Args:
        batch_dir: the batch folder.
        name: the catalog's ``listings_file``.

    Returns:
        The path to read; ``batch_dir / name`` when nothing matches (reading it then raises
        ``listings_file_missing``).

    Raises:
        BatchError: ``listings_file_ambiguous`` when several files share the stem.
    """
    batch_dir = Path(batch_dir)
    exact = batch_dir / name
    if exact.is_file():
        return exact
    stem = Path(name).stem
    found = [batch_dir / f"{stem}{ext}" for ext in EXTENSIONS if (batch_dir / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise BatchError("listings_file_ambiguous",
                         f"several listings files in the batch: {', '.join(p.name for p in found)}")
    return found[0] if found else exact


def _text(value: object) -> str | None:
    """One source value as text (:func:`common.text.normalize_text`); null-likes, blank and
    invisible-only strings -> ``None``.

    Integral floats print without ``.0`` (ids from JSON or from a nullable Parquet int column);
    bytes (a Parquet binary column) are read as UTF-8, undecodable bytes kept as lone surrogates.
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
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "surrogateescape")
    return normalize_text(str(value))


def _column_names(names: list[object], file_name: str) -> list[str]:
    """Normalised column names (:func:`_text`; a blank one becomes ``Unnamed: <i>``).

    Raises:
        BatchError: ``duplicate_columns`` when two columns have the same name (after
            normalisation): which one holds the listing's value is ambiguous.
    """
    out = [_text(name) or f"Unnamed: {i}" for i, name in enumerate(names)]
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(out):
        seen.setdefault(name, []).append(i + 1)
    twice = {name: where for name, where in seen.items() if len(where) > 1}
    if twice:
        named = "; ".join(f"{name[:80]!r} (columns {', '.join(map(str, where))})"
                          for name, where in list(twice.items())[:5])
        raise BatchError("duplicate_columns",
                         f"{file_name}: the header names a column more than once, so which value "
                         f"a listing has is ambiguous: {named}")
    return out


def _frame(columns: list[str], rows: list[list[object]], errors: dict[int, str]) -> pd.DataFrame:
    """Object columns of ``str`` or ``None`` from row lists; ``errors`` kept in ``attrs``.

    Built column by column as object: pandas' default string dtype is Arrow-backed and refuses
    the lone surrogates that keep non-UTF-8 bytes.
    """
    frame = pd.DataFrame({c: pd.Series([_text(row[j]) for row in rows], dtype=object)
                          for j, c in enumerate(columns)}, index=pd.RangeIndex(len(rows)))
    frame.attrs[ROW_ERRORS] = dict(errors)
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    """RFC 4180 CSV, read record by record so that one bad record is rejected alone.

    A record with more or fewer fields than the header is a :data:`MALFORMED_ROW` (which value
    belongs to which column cannot be told); blank lines are skipped.
    """
    # Not UTF-8 bytes are kept as lone surrogates, so that only their rows are quarantined.
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    csv.field_size_limit(max(csv.field_size_limit(), sys.maxsize >> 1))  # long cells are rows too
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header = None
    rows: list[list[object]] = []
    errors: dict[int, str] = {}
    start = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # the record is lost; the reader goes on with the next line
            if header is None or "unexpected end of data" in str(exc):
                # a quote opened and never closed swallows every later line: the file is broken
                raise BatchError("listings_file_unparseable",
                                 f"{path.name} line {start}: {exc} (a quoted field is never "
                                 "closed)" if header else f"{path.name} header: {exc}") from exc
            errors[len(rows)] = f"{MALFORMED_ROW}: line {start}: {exc}"
            rows.append([])
            start = reader.line_num + 1
            continue
        lines = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
        start = reader.line_num + 1
        if not record or (len(record) == 1 and not record[0].strip() and header is not None):
            continue  # a blank line
        if header is None:
            header = _column_names(record, path.name)
            continue
        if len(record) != len(header):
            errors[len(rows)] = (f"{MALFORMED_ROW}: {lines}: {len(record)} fields, the header has "
                                 f"{len(header)}")
            record = []
        rows.append(record)
    if header is None:
        raise BatchError("listings_file_empty", f"{path.name} is empty")
    rows = [r if r else [None] * len(header) for r in rows]
    return _frame(header, rows, errors)


def _json_record(line: str, where: str) -> tuple[dict | None, str | None]:
    """One JSON record -> ``(object, None)`` or ``(None, reason)``."""
    def pairs(items: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"key {twice[0][:80]!r} given more than once")
        return dict(items)

    try:
        record = json.loads(line, object_pairs_hook=pairs)
    except (json.JSONDecodeError, ValueError) as exc:
        return None, f"{MALFORMED_ROW}: {where}: {str(exc)[:200]}"
    if not isinstance(record, dict):
        return None, f"{MALFORMED_ROW}: {where}: a JSON {type(record).__name__}, not an object"
    return record, None


def _array_items(text: str) -> list[str] | None:
    """The source text of each element when ``text`` is one JSON array, else ``None`` (maybe
    JSON Lines whose records are arrays). Each element is then parsed on its own by
    :func:`_json_record`, so an object giving a key twice is malformed here too, where
    ``json.loads`` of the whole array would keep the last value silently."""
    try:
        if not isinstance(json.loads(text), list):
            return None
    except json.JSONDecodeError:
        return None
    decoder, out = json.JSONDecoder(), []
    i = _JSON_SPACE.match(text, text.index("[") + 1).end()  # valid JSON: only spaces before
    while text[i] != "]":
        _, end = decoder.raw_decode(text, i)
        out.append(text[i:end])
        i = _JSON_SPACE.match(text, end).end()
        if text[i] == ",":
            i = _JSON_SPACE.match(text, i + 1).end()
    return out


def _read_json_lines(path: Path) -> pd.DataFrame:
    """JSON Lines (or one JSON array of objects); a line that is not a JSON object, or gives a
    key twice, is a :data:`MALFORMED_ROW` rejected alone."""
    text = path.read_bytes().decode("utf-8-sig", "surrogateescape")
    items: list[tuple[str, str]] = []  # (where, JSON text of one record)
    if text.lstrip().startswith("["):  # a plain JSON array of records is accepted too
        items = [(f"record {i + 1}", rec) for i, rec in enumerate(_array_items(text) or [])]
    if not items:
        items = [(f"line {n}", line) for n, line in enumerate(_LINE_END.split(text), start=1)
                 if line.strip()]
    if not items:
        raise BatchError("listings_file_empty", f"{path.name} has no record")
    records: list[dict | None] = []
    errors: dict[int, str] = {}
    for where, line in items:
        record, error = _json_record(line, where)
        if error:
            errors[len(records)] = error
        records.append(record)
    if not any(r is not None for r in records):
        raise BatchError("listings_file_not_a_table",
                         f"{path.name}: no line is a JSON object ({next(iter(errors.values()))})")
    names = list(dict.fromkeys(k for rec in records if rec for k in rec))
    columns = _column_names(names, path.name)  # keys that differ only by normalisation
    rows = [[None] * len(names) if rec is None else [rec.get(k) for k in names] for rec in records]
    return _frame(columns, rows, errors)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    columns = _column_names(pq.read_schema(path).names, path.name)  # before pyarrow may refuse
    table = pq.ParquetFile(path).read()
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return _frame(columns, [list(row) for row in zip(*data, strict=True)] if data else [], {})


def read_listings_file(path: str | Path) -> pd.DataFrame:
    """Reads a batch's listings file into a raw table of text values.

    The format comes from the extension: ``.csv`` (UTF-8, header row; RFC 4180 quoting, so
    quoted cells may hold commas, doubled quotes and newlines), ``.jsonl``/``.json``/``.ndjson``
    (JSON Lines; a JSON array of objects is accepted too) or ``.parquet``. Bytes that are not
    UTF-8 inside a cell do not fail the file: they are kept as lone surrogates
    (``surrogateescape``) so that :func:`source_errors` quarantines just that row. A record that
    cannot be read as a row (a CSV record with another field count than the header, a JSON line
    that does not parse, is not an object or gives a key twice) does not fail the file either:
    it is an all-``None`` row whose reason (``malformed_row: line N: ...``) is in
    ``frame.attrs[ROW_ERRORS]``, and :func:`source_errors` rejects it alone. Every value and
    column name is normalised (:func:`common.text.normalize_text`: NFC, invisible characters
    stripped from both ends, invisible-only values ``None``).

    Args:
        path: the listings file.

    Returns:
        One row per record, one object column per source column (names normalised), each value
        a normalised ``str`` or ``None`` (empty cells, JSON nulls, NaN). Index ``0..n-1``;
        ``attrs[ROW_ERRORS]``: ``{index: reason}`` of the malformed records.

    Raises:
        BatchError: ``listings_file_missing`` (no such file), ``listings_file_unsupported``
            (unknown extension), ``listings_file_unparseable`` (parser error, bad encoding),
            ``listings_file_not_a_table`` (no JSON line is an object), ``duplicate_columns``
            (a column named twice) or ``listings_file_empty`` (no rows or no columns).
    """
    path = Path(path)
    if not path.is_file():
        raise BatchError("listings_file_missing", f"{path.name} not found in the batch")
    ext = path.suffix.lower()
    try:
        if ext in _CSV:
            frame = _read_csv(path)
        elif ext in _JSONL:
            frame = _read_json_lines(path)
        elif ext in _PARQUET:
            frame = _read_parquet(path)
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
    names = [str(c) for c in frame.columns]
    if any(_has_bad_bytes(c) or "\x00" in c for c in names):
        raise BatchError("listings_file_unparseable",
                         f"{path.name}: the header row is not UTF-8 text (not a listings table)")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise BatchError("listings_file_empty", f"{path.name} has no rows")
    return frame


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


def _attributes_json(names: list[str], columns: list[list[str | None]], n: int) -> list[str | None]:
    """Per row, a JSON object of the named attribute values that are not null (``None`` if none)."""
    out: list[str | None] = []
    for i in range(n):
        kept = {name: values[i] for name, values in zip(names, columns, strict=True) if values[i] is not None}
        out.append(json.dumps(kept, ensure_ascii=False) if kept else None)
    return out


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
        or ``None`` (undecodable bytes shown as U+FFFD); ``price`` is float64 (NaN when absent or
        not a number, which :func:`source_errors` reports); ``category_path`` is the levels from
        :meth:`common.catalog.Catalog.category_levels` joined with ``" > "`` (``None`` when a
        level is blank or the tree cell cannot be parsed);
        ``image_key`` is the catalog template formatted with the source row (``None`` when a
        field is null); ``image_sha256`` is ``None`` (filled after the image check);
        ``attributes`` is a JSON object of the catalog's :attr:`~common.catalog.Catalog.attributes`
        columns with a value, in declaration order (``None`` when none has one).

    Raises:
        BatchError: ``missing_columns`` naming the mapped source columns (including those used
            by the image key template) that the file lacks.
    """
    cols = catalog.columns
    needed = [cols.listing_id, *catalog.category_columns,
              *(c for c in (cols.title, cols.description, cols.brand, cols.price, cols.currency) if c),
              *catalog.attributes, *_template_fields(catalog.image_key)]
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
        return pd.Series([None if (t := _text(v)) is None else _clean(t) for v in raw[col].tolist()],
                         index=raw.index, dtype=object)

    levels = [text(c).tolist() for c in catalog.category_columns]
    paths = [None if (lv := catalog.category_levels(list(vals))) is None else PATH_SEP.join(lv)
             for vals in zip(*levels, strict=True)]
    records = raw.to_dict(orient="records")
    image_keys = [_format_key(catalog.image_key, {k: v for k, v in rec.items() if v is not None})
                  for rec in records]
    price = (pd.to_numeric(text(cols.price), errors="coerce").astype("float64") if cols.price
             else pd.Series([float("nan")] * n, index=raw.index, dtype="float64"))

    def const(value: object) -> pd.Series:
        return pd.Series([value] * n, index=raw.index, dtype=object)

    attributes = _attributes_json(catalog.attributes, [text(c).tolist() for c in catalog.attributes], n)

    out = pd.DataFrame({
        "listing_id": text(cols.listing_id),
        "title": text(cols.title),
        "description": text(cols.description),
        "brand": text(cols.brand),
        "price": price,
        "currency": (text(cols.currency).map(lambda c: c.upper() if c else None)
                     if cols.currency else const(catalog.currency)),
        "attributes": pd.Series(attributes, index=raw.index, dtype=object),
        "category_path": pd.Series(paths, index=raw.index, dtype=object),
        "image_key": pd.Series(image_keys, index=raw.index, dtype=object),
        "image_sha256": const(None),
        "catalog": const(catalog.name),
        "batch_id": const(batch_id),
        "ingested_at": const(ingested_at),
    })
    return out[list(CANONICAL_COLUMNS)]


def _price_error(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return f"price_not_a_number: {value[:40]!r}"
    return None if math.isfinite(number) else f"price_not_a_number: {value[:40]!r}"


def source_errors(raw: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Row-level problems of the source values that the canonical listing cannot show.

    Checked per row: the record could be read as a row (:data:`ROW_ERRORS`, reason
    ``malformed_row: line N: ...``); every mapped text column holds valid UTF-8 (``invalid_utf8: <column>``);
    the price cell, when present, is a finite decimal number (``price_not_a_number: '<cell>'``,
    the wrong-dtype case: :func:`to_canonical` would silently give NaN); a category tree cell,
    when present, parses into a path (``category_unparseable: <column>``).

    Args:
        raw: output of :func:`read_listings_file`.
        catalog: the catalog adapter (:func:`to_canonical` must have accepted ``raw``).

    Returns:
        Object series, index of ``raw``: ``None`` for a clean row, else the reasons joined with
        ``"; "``.
    """
    cols = catalog.columns
    mapped = [c for c in (cols.listing_id, cols.title, cols.description, cols.brand, cols.price,
                          cols.currency, *catalog.category_columns) if c]
    errors: list[list[str]] = [[] for _ in range(len(raw))]
    for i, reason in raw.attrs.get(ROW_ERRORS, {}).items():
        errors[raw.index.get_loc(i)].append(reason)
    for col in dict.fromkeys(mapped):
        for i, value in enumerate(raw[col].tolist()):
            if _has_bad_bytes(value):
                errors[i].append(f"invalid_utf8: {col}")
    if cols.price:
        for i, value in enumerate(raw[cols.price].tolist()):
            problem = _price_error(_text(value))
            if problem and not _has_bad_bytes(value):
                errors[i].append(problem)
    if catalog.category is not None:
        col = catalog.category.column
        for i, value in enumerate(raw[col].tolist()):
            cell = _text(value)
            if cell is not None and not _has_bad_bytes(cell) and catalog.category_levels([cell]) is None:
                errors[i].append(f"category_unparseable: {col}")
    return pd.Series(["; ".join(e) if e else None for e in errors], index=raw.index, dtype=object)
