"""Catalog adapter: a batch's listings file -> canonical listings (``CANONICAL_COLUMNS``)."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import string
import sys
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pandas as pd

from common.catalog import CANONICAL_COLUMNS, PATH_SEP, Catalog
from common.files import NotRegularFileError, open_regular
from common.text import find_control, is_null_token, json_depth, normalize_text
from validation.errors import BatchError

ROW_ERRORS = "row_errors"
"""Key of ``frame.attrs`` in :func:`read_listings_file`'s result: ``{row index: reason}`` for the
records that could not be read as a row (wrong field count, undecodable JSON, not an object,
a key given twice). Such a row is all ``None`` in the frame and is rejected alone."""
MALFORMED_ROW = "malformed_row"
"""Reason code of a record that cannot be read as a row (:data:`ROW_ERRORS`): rejects the row."""
LISTINGS_FILE_NOT_REGULAR = "listings_file_not_regular"
"""Reason code: the listings file is a symbolic link, a FIFO, a socket, a device or a folder
(never followed or read); quarantines the batch."""
LISTINGS_FILE_ENCODING = "listings_file_encoding"
"""Reason code: the listings file is UTF-16 or UTF-32 (a byte order mark, or NUL bytes between
ASCII characters), not UTF-8; quarantines the batch."""
COLUMN_TYPE_INVALID = "column_type_invalid"
"""Reason code: a Parquet column the catalog maps holds structs, lists or maps where the
canonical column is one text or number; quarantines the batch (every row has that type)."""
VALUE_TYPE_INVALID = "value_type_invalid"
"""Reason code: a JSON record's value for a mapped column is an object or an array where the
canonical column is one text or number; rejects the row (each record has its own types)."""
CONTROL_CHARACTER = "control_character"
"""Reason code: a mapped text value holds a control character (NUL, ESC of an ANSI escape,
other C0/C1 controls but tab/LF/CR) or a bidi formatting character
(:func:`common.text.find_control`); rejects the row."""
PRICE_NOT_A_NUMBER = "price_not_a_number"
"""Reason code: the price cell is not a finite number in ASCII decimal notation
(:func:`parse_price`); rejects the row."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects read in one JSON record (a listing needs 2 or 3); a
deeper record is a :data:`MALFORMED_ROW`, never handed to ``json.loads``, which raises
``RecursionError`` near Python's recursion limit."""
COLUMN_TYPES = "column_types"
"""Key of ``frame.attrs`` in :func:`read_listings_file`'s result: ``{column: ColumnType}`` of the
Parquet columns that are not scalar (struct, list, map...). Their values are ``None``, except a
list of strings, read as its JSON text (a ``json_list`` category tree)."""
VALUE_TYPES = "value_types"
"""Key of ``frame.attrs``: ``{row index: {column: "a JSON object" | "a JSON array"}}`` of the
JSON values that are not scalars (their value in the frame is their JSON text)."""

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
_ARRAY_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},]', re.DOTALL)
"""A JSON string (skipped whole), a bracket or a comma: enough to find the top-level items of
a JSON array without recursing into them."""
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 LE"), (codecs.BOM_UTF32_BE, "UTF-32 BE"),
         (codecs.BOM_UTF16_LE, "UTF-16 LE"), (codecs.BOM_UTF16_BE, "UTF-16 BE"))
"""Byte order marks of the encodings a listings file must not be in; UTF-32 LE's begins with
UTF-16 LE's, so it is tested first."""
_PRICE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
"""ASCII decimal notation: digits with an optional ``.`` fraction and exponent."""


class ColumnType(NamedTuple):
    """A Parquet column's type that is not a scalar (:data:`COLUMN_TYPES`)."""

    found: str  # Arrow's name of the type, e.g. "struct<en: string, hi: string>"
    text_list: bool  # a list of strings (read as JSON text, as a json_list tree cell is)


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
        ``listings_file_missing``). Entries are found as they are (``lstat``, no link
        followed): a symbolic link or a FIFO under that name is found, and reading it refuses
        it (``listings_file_not_regular``) instead of reporting the file missing.

    Raises:
        BatchError: ``listings_file_ambiguous`` when several files share the stem.
    """
    batch_dir = Path(batch_dir)
    exact = batch_dir / name
    if os.path.lexists(exact):
        return exact
    stem = Path(name).stem
    found = [batch_dir / f"{stem}{ext}" for ext in EXTENSIONS
             if os.path.lexists(batch_dir / f"{stem}{ext}")]
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


def _decode(data: bytes, name: str) -> str:
    """The text of a CSV or JSON Lines file: UTF-8 (a UTF-8 byte order mark is dropped); bytes
    that are not UTF-8 are kept as lone surrogates (``surrogateescape``), so that only their
    rows are quarantined.

    Raises:
        BatchError: :data:`LISTINGS_FILE_ENCODING` for a UTF-16 or UTF-32 file (its byte order
            mark, or UTF-16 without one: NUL bytes between ASCII characters), which would
            otherwise read as one row of NULs and surrogates.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise BatchError(LISTINGS_FILE_ENCODING,
                             f"{name} is {encoding} (byte order mark {bom.hex(' ').upper()}); "
                             "listings files must be UTF-8")
    head = data[:4096]
    if len(head) >= 8:
        even, odd = head[0::2].count(0) / len(head[0::2]), head[1::2].count(0) / len(head[1::2])
        if min(even, odd) < 0.1 and max(even, odd) > 0.9:  # text in UTF-8 holds no NUL at all
            encoding = "UTF-16 LE" if odd > even else "UTF-16 BE"
            raise BatchError(LISTINGS_FILE_ENCODING,
                             f"{name} looks like {encoding} without a byte order mark (a NUL byte "
                             "beside every ASCII character); listings files must be UTF-8")
    return data.decode("utf-8-sig", "surrogateescape")


def _read_csv(data: bytes, name: str) -> pd.DataFrame:
    """RFC 4180 CSV, read record by record so that one bad record is rejected alone.

    A record with more or fewer fields than the header is a :data:`MALFORMED_ROW` (which value
    belongs to which column cannot be told); blank lines are skipped.
    """
    text = _decode(data, name)
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
                                 f"{name} line {start}: {exc} (a quoted field is never "
                                 "closed)" if header else f"{name} header: {exc}") from exc
            errors[len(rows)] = f"{MALFORMED_ROW}: line {start}: {exc}"
            rows.append([])
            start = reader.line_num + 1
            continue
        lines = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
        start = reader.line_num + 1
        if not record or (len(record) == 1 and not record[0].strip() and header is not None):
            continue  # a blank line
        if header is None:
            header = _column_names(record, name)
            continue
        if len(record) != len(header):
            errors[len(rows)] = (f"{MALFORMED_ROW}: {lines}: {len(record)} fields, the header has "
                                 f"{len(header)}")
            record = []
        rows.append(record)
    if header is None:
        raise BatchError("listings_file_empty", f"{name} is empty")
    rows = [r if r else [None] * len(header) for r in rows]
    return _frame(header, rows, errors)


def _json_record(line: str, where: str) -> tuple[dict | None, str | None]:
    """One JSON record -> ``(object, None)`` or ``(None, reason)``; a record nesting deeper
    than :data:`MAX_JSON_DEPTH` is refused before it is parsed."""
    def pairs(items: list[tuple[str, object]]) -> dict:
        keys = [k for k, _ in items]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"key {twice[0][:80]!r} given more than once")
        return dict(items)

    if json_depth(line) > MAX_JSON_DEPTH:
        return None, f"{MALFORMED_ROW}: {where}: nesting deeper than {MAX_JSON_DEPTH} levels"
    try:
        record = json.loads(line, object_pairs_hook=pairs)
    except (json.JSONDecodeError, ValueError) as exc:
        return None, f"{MALFORMED_ROW}: {where}: {str(exc)[:200]}"
    except RecursionError:  # not reached under MAX_JSON_DEPTH; never let one record stop the file
        return None, f"{MALFORMED_ROW}: {where}: nesting too deep to read"
    if not isinstance(record, dict):
        return None, f"{MALFORMED_ROW}: {where}: a JSON {type(record).__name__}, not an object"
    return record, None


def _array_items(text: str) -> list[str] | None:
    """The source text of each element when ``text`` is one JSON array, else ``None`` (maybe
    JSON Lines whose records are arrays).

    The array is split at its top-level commas by a scan that does not recurse, so a deeply
    nested element is one element (refused by :func:`_json_record`), not a ``RecursionError``.
    Each element is then parsed on its own by :func:`_json_record`, so an object giving a key
    twice is malformed here too, where ``json.loads`` of the whole array would keep the last
    value silently. ``text`` is one array when its brackets match, nothing follows the last,
    and every element within :data:`MAX_JSON_DEPTH` parses as JSON.
    """
    start = text.index("[")
    stack: list[str] = []
    items: list[str] = []
    begin = start + 1
    for token in _ARRAY_TOKEN.finditer(text, start):
        char = token.group()
        if char[0] == '"':
            continue
        if char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}":
            if not stack or stack.pop() != char:
                return None
            if not stack:
                items.append(text[begin:token.start()])
                if text[token.end():].strip():
                    return None
                break
        elif not stack[1:]:  # a comma between two top-level items
            items.append(text[begin:token.start()])
            begin = token.end()
    else:
        return None  # never closed
    if items == [""] or (len(items) == 1 and not items[0].strip()):
        return []
    out = []
    for item in items:
        item = item.strip()
        if not item:
            return None
        if json_depth(item) <= MAX_JSON_DEPTH:
            try:
                json.loads(item)
            except (json.JSONDecodeError, RecursionError):
                return None
        out.append(item)
    return out


def _json_text(value: object) -> tuple[object, str | None]:
    """A JSON value as a cell: objects and arrays as their JSON text, with what they are."""
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False), "a JSON object"
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False), "a JSON array"
    return value, None


def _read_json_lines(data: bytes, name: str) -> pd.DataFrame:
    """JSON Lines (or one JSON array of objects); a line that is not a JSON object, gives a
    key twice or nests deeper than :data:`MAX_JSON_DEPTH` is a :data:`MALFORMED_ROW` rejected
    alone. Object and array values are kept as their JSON text, listed in :data:`VALUE_TYPES`."""
    text = _decode(data, name)
    items: list[tuple[str, str]] = []  # (where, JSON text of one record)
    if text.lstrip().startswith("["):  # a plain JSON array of records is accepted too
        items = [(f"record {i + 1}", rec) for i, rec in enumerate(_array_items(text) or [])]
    if not items:
        items = [(f"line {n}", line) for n, line in enumerate(_LINE_END.split(text), start=1)
                 if line.strip()]
    if not items:
        raise BatchError("listings_file_empty", f"{name} has no record")
    records: list[dict | None] = []
    errors: dict[int, str] = {}
    for where, line in items:
        record, error = _json_record(line, where)
        if error:
            errors[len(records)] = error
        records.append(record)
    if not any(r is not None for r in records):
        raise BatchError("listings_file_not_a_table",
                         f"{name}: no line is a JSON object ({next(iter(errors.values()))})")
    names = list(dict.fromkeys(k for rec in records if rec for k in rec))
    columns = _column_names(names, name)  # keys that differ only by normalisation
    rows: list[list[object]] = []
    kinds: dict[int, dict[str, str]] = {}
    for i, rec in enumerate(records):
        row = []
        for j, key in enumerate(names):
            value, kind = _json_text(rec.get(key)) if rec is not None else (None, None)
            if kind:
                kinds.setdefault(i, {})[columns[j]] = kind
            row.append(value)
        rows.append(row)
    frame = _frame(columns, rows, errors)
    frame.attrs[VALUE_TYPES] = kinds
    return frame


def _read_parquet(fh: BinaryIO, name: str) -> pd.DataFrame:
    """Parquet, read from an open file. Scalar columns become text; a nested column (struct,
    list, map...) is listed in :data:`COLUMN_TYPES` and read as ``None``, except a list of
    strings, read as its JSON text (a ``json_list`` category tree may be one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(fh)
    columns = _column_names(parquet.schema_arrow.names, name)  # before pyarrow may refuse
    table = parquet.read()
    data: list[list[object]] = []
    types: dict[str, ColumnType] = {}
    for j, field in enumerate(table.schema):
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if not pa.types.is_nested(kind):
            data.append(table.column(j).to_pylist())
            continue
        text_list = ((pa.types.is_list(kind) or pa.types.is_large_list(kind))
                     and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)))
        types[columns[j]] = ColumnType(str(field.type), text_list)
        data.append([None if v is None else json.dumps(v, ensure_ascii=False) for v in table.column(j).to_pylist()]
                    if text_list else [None] * table.num_rows)
    frame = _frame(columns, [list(row) for row in zip(*data, strict=True)] if data else [], {})
    frame.attrs[COLUMN_TYPES] = types
    return frame


def read_listings_file(path: str | Path) -> pd.DataFrame:
    """Reads a batch's listings file into a raw table of text values.

    The file is opened with :func:`common.files.open_regular`: a symbolic link is never
    followed, a FIFO never waited on. The format comes from the extension: ``.csv`` (UTF-8,
    header row; RFC 4180 quoting, so quoted cells may hold commas, doubled quotes and
    newlines), ``.jsonl``/``.json``/``.ndjson`` (JSON Lines; a JSON array of objects is
    accepted too) or ``.parquet``. Bytes that are not UTF-8 inside a cell do not fail the file:
    they are kept as lone surrogates (``surrogateescape``) so that :func:`source_errors`
    quarantines just that row; a UTF-16 or UTF-32 file fails it, naming its encoding. A record
    that cannot be read as a row (a CSV record with another field count than the header, a
    JSON line that does not parse, is not an object, gives a key twice or nests deeper than
    :data:`MAX_JSON_DEPTH`) does not fail the file either: it is an all-``None`` row whose
    reason (``malformed_row: line N: ...``) is in ``frame.attrs[ROW_ERRORS]``, and
    :func:`source_errors` rejects it alone. Every value and column name is normalised
    (:func:`common.text.normalize_text`: NFC, invisible characters stripped from both ends,
    invisible-only values ``None``; control characters kept, for :func:`source_errors` to
    refuse).

    Args:
        path: the listings file.

    Returns:
        One row per record, one object column per source column (names normalised), each value
        a normalised ``str`` or ``None`` (empty cells, JSON nulls, NaN). Index ``0..n-1``;
        ``attrs[ROW_ERRORS]``: ``{index: reason}`` of the malformed records;
        ``attrs[COLUMN_TYPES]`` (Parquet) and ``attrs[VALUE_TYPES]`` (JSON): the values that
        are not scalars.

    Raises:
        BatchError: ``listings_file_missing`` (no such file), :data:`LISTINGS_FILE_NOT_REGULAR`
            (a link, FIFO, socket, device or folder), ``listings_file_unsupported`` (unknown
            extension), :data:`LISTINGS_FILE_ENCODING` (UTF-16/32), ``listings_file_unparseable``
            (parser error, a header that is not UTF-8 text or holds a control character),
            ``listings_file_not_a_table`` (no JSON line is an object), ``duplicate_columns`` (a
            column named twice) or ``listings_file_empty`` (no rows or no columns).
    """
    path = Path(path)
    ext = path.suffix.lower()
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        raise BatchError("listings_file_missing", f"{path.name} not found in the batch") from None
    except NotRegularFileError as exc:
        raise BatchError(LISTINGS_FILE_NOT_REGULAR,
                         f"{path.name} is a {exc.kind}, not a regular file: refused (links are "
                         "never followed, FIFOs and devices never read)") from None
    except OSError as exc:
        raise BatchError("listings_file_unparseable", f"{path.name}: {exc.strerror or exc}") from exc
    try:
        with fh:
            if ext in _CSV:
                frame = _read_csv(fh.read(), path.name)
            elif ext in _JSONL:
                frame = _read_json_lines(fh.read(), path.name)
            elif ext in _PARQUET:
                frame = _read_parquet(fh, path.name)
            else:
                raise BatchError("listings_file_unsupported",
                                 f"{path.name}: extension {ext or '(none)'} is not csv, jsonl or parquet")
    except BatchError:
        raise
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        # pyarrow.ArrowInvalid is a ValueError; a bad Parquet footer is an OSError/ArrowInvalid.
        raise BatchError("listings_file_unparseable", f"{path.name}: {exc}") from exc
    for i, column in enumerate(str(c) for c in frame.columns):
        if _has_bad_bytes(column):
            raise BatchError("listings_file_unparseable",
                             f"{path.name}: the header row is not UTF-8 text (not a listings table)")
        if (control := find_control(column)) is not None:
            raise BatchError("listings_file_unparseable",
                             f"{path.name}: the name of column {i + 1}, {column[:80]!r}, holds the "
                             f"control character {control}")
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


def _scalar_columns(catalog: Catalog) -> dict[str, str]:
    """The mapped source columns whose canonical value is one scalar, with what it is called in
    messages (``{"product_name": "the title", ...}``); a ``json_list`` tree column is left out
    (it may hold a list)."""
    cols = catalog.columns
    named = {cols.listing_id: "the listing id", cols.title: "the title",
             cols.description: "the description", cols.brand: "the brand", cols.price: "the price",
             cols.currency: "the currency"}
    out = {c: what for c, what in named.items() if c}
    if catalog.category is None or catalog.category.format != "json_list":
        out.update({c: "a category level" for c in catalog.category_columns if c not in out})
    out.update({c: "an attribute" for c in catalog.attributes if c not in out})
    out.update({c: "an image key field" for c in _template_fields(catalog.image_key) if c not in out})
    return out


def _check_column_types(raw: pd.DataFrame, catalog: Catalog) -> None:
    """Raises :data:`COLUMN_TYPE_INVALID` when a mapped Parquet column is not scalar."""
    types: dict[str, ColumnType] = raw.attrs.get(COLUMN_TYPES, {})
    wrong = [f"column {col!r} ({what}) is {types[col].found}, expected text or a number"
             for col, what in _scalar_columns(catalog).items() if col in types]
    tree = catalog.category
    if tree is not None and tree.format == "json_list" and tree.column in types \
            and not types[tree.column].text_list:
        wrong.append(f"column {tree.column!r} (the category tree) is {types[tree.column].found}, "
                     "expected text or a list of strings")
    if wrong:
        raise BatchError(COLUMN_TYPE_INVALID, "; ".join(wrong))


def parse_price(text: str) -> float:
    """The one price parser of the adapter: what :func:`source_errors` accepts is what
    :func:`to_canonical` stores.

    Accepted: ASCII decimal notation, optionally signed, with a ``.`` fraction and an exponent
    (``999``, ``999.0``, ``-0.5``, ``1e3``); surrounding whitespace is stripped by the reader.
    Refused: thousands separators (``1,299``: the grouping differs between feeds, India's
    ``1,29,999`` and Europe's decimal comma ``1.299,00`` among them, so a guess could store a
    price 1,000 times off), Python's digit grouping ``1_000``, non-ASCII digits
    (Arabic-Indic ``١٢٣``, full-width ``１２３``, which ``float()`` reads and pandas does not),
    ``inf``/``nan``, hexadecimal, units and currency signs.

    Args:
        text: the price cell (not ``None``).

    Returns:
        The price, finite.

    Raises:
        ValueError: ``price_not_a_number: '<cell>'``.
    """
    if _PRICE.fullmatch(text):
        number = float(text)
        if math.isfinite(number):
            return number
    raise ValueError(f"{PRICE_NOT_A_NUMBER}: {text[:40]!r}")


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
        or ``None`` (undecodable bytes shown as U+FFFD; in ``listing_id``, ``title``,
        ``description``, ``brand``, ``currency`` and the category levels a null token such as
        ``NULL``, ``nan``, ``N/A`` or ``undefined`` is ``None``,
        :func:`common.text.is_null_token`); ``price`` is float64 (:func:`parse_price`; NaN
        when absent, a null token, or not a number, which :func:`source_errors` reports);
        ``category_path`` is the levels from
        :meth:`common.catalog.Catalog.category_levels` joined with ``" > "`` (``None`` when a
        level is blank or the tree cell cannot be parsed);
        ``image_key`` is the catalog template formatted with the source row (``None`` when a
        field is null); ``image_sha256`` is ``None`` (filled after the image check);
        ``attributes`` is a JSON object of the catalog's :attr:`~common.catalog.Catalog.attributes`
        columns with a value, in declaration order (``None`` when none has one; their values
        are kept as written, ``NA`` included).

    Raises:
        BatchError: ``missing_columns`` naming the mapped source columns (including those used
            by the image key template) that the file lacks; :data:`COLUMN_TYPE_INVALID` naming
            a mapped Parquet column that holds structs, lists or maps, and its type.
    """
    cols = catalog.columns
    needed = [cols.listing_id, *catalog.category_columns,
              *(c for c in (cols.title, cols.description, cols.brand, cols.price, cols.currency) if c),
              *catalog.attributes, *_template_fields(catalog.image_key)]
    missing = sorted({c for c in needed if c not in raw.columns})
    if missing:
        raise BatchError("missing_columns",
                         f"listings file lacks mapped source column(s): {', '.join(missing)}")
    _check_column_types(raw, catalog)
    if isinstance(ingested_at, datetime):
        ingested_at = ingested_at.isoformat()
    n = len(raw)

    def text(col: str | None, nulls: bool = True) -> pd.Series:
        if col is None:
            return pd.Series([None] * n, index=raw.index, dtype=object)
        return pd.Series([None if (t := _text(v)) is None or (nulls and is_null_token(t)) else _clean(t)
                          for v in raw[col].tolist()], index=raw.index, dtype=object)

    levels = [text(c).tolist() for c in catalog.category_columns]
    paths = [None if (lv := catalog.category_levels(list(vals))) is None else PATH_SEP.join(lv)
             for vals in zip(*levels, strict=True)]
    records = raw.to_dict(orient="records")
    image_keys = [_format_key(catalog.image_key, {k: v for k, v in rec.items() if v is not None})
                  for rec in records]
    price = pd.Series([_price(v) for v in text(cols.price)], index=raw.index, dtype="float64")

    def const(value: object) -> pd.Series:
        return pd.Series([value] * n, index=raw.index, dtype=object)

    attributes = _attributes_json(catalog.attributes,
                                  [text(c, nulls=False).tolist() for c in catalog.attributes], n)

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


def _price(value: str | None) -> float:
    """A canonical price: :func:`parse_price`, NaN when absent or refused."""
    if value is None:
        return math.nan
    try:
        return parse_price(value)
    except ValueError:
        return math.nan


def _price_error(value: str | None) -> str | None:
    if value is None or is_null_token(value):
        return None
    try:
        parse_price(value)
    except ValueError as exc:
        return str(exc)
    return None


def source_errors(raw: pd.DataFrame, catalog: Catalog) -> pd.Series:
    """Row-level problems of the source values that the canonical listing cannot show.

    Checked per row: the record could be read as a row (:data:`ROW_ERRORS`, reason
    ``malformed_row: line N: ...``); a mapped JSON value is a scalar, not an object or array
    (:data:`VALUE_TYPE_INVALID`, ``value_type_invalid: <column> (the title) is a JSON object,
    expected text or a number``; a ``json_list`` tree may be an array); no mapped value holds a
    control or bidi formatting character (:data:`CONTROL_CHARACTER`, ``control_character:
    <column> holds U+0000 (NUL) at character 5``); every mapped text column holds valid UTF-8
    (``invalid_utf8: <column>``); the price cell, when present and not a null token, is a
    finite number in ASCII decimal notation (:func:`parse_price`, ``price_not_a_number:
    '<cell>'``: :func:`to_canonical` stores NaN for it); a category tree cell, when present,
    parses into a path (``category_unparseable: <column>``).

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
    scalar = _scalar_columns(catalog)
    errors: list[list[str]] = [[] for _ in range(len(raw))]
    for i, reason in raw.attrs.get(ROW_ERRORS, {}).items():
        errors[raw.index.get_loc(i)].append(reason)
    tree = catalog.category.column if catalog.category is not None else None
    for i, kinds in raw.attrs.get(VALUE_TYPES, {}).items():
        for col, kind in kinds.items():
            if col in scalar:
                errors[raw.index.get_loc(i)].append(
                    f"{VALUE_TYPE_INVALID}: {col} ({scalar[col]}) is {kind}, expected text or a number")
            elif col == tree and kind != "a JSON array":
                errors[raw.index.get_loc(i)].append(
                    f"{VALUE_TYPE_INVALID}: {col} (the category tree) is {kind}, expected text or an array")
    for col in dict.fromkeys([*scalar, *([tree] if tree else [])]):
        for i, value in enumerate(raw[col].tolist()):
            if isinstance(value, str) and (control := find_control(value)) is not None:
                errors[i].append(f"{CONTROL_CHARACTER}: {col} holds {control}")
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
            if (not is_null_token(cell) and not _has_bad_bytes(cell)
                    and catalog.category_levels([cell]) is None):
                errors[i].append(f"category_unparseable: {col}")
    return pd.Series(["; ".join(e) if e else None for e in errors], index=raw.index, dtype=object)
