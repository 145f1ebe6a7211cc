"""The reason codes of validation and ingest: one table, each code declared once.

A code is what a report's ``reasons`` counter, ``batch_reasons`` and ``rejected.csv``'s
``reasons`` column start with (``"<code>: <detail>"``); the detail says what was found in the
user's terms (the value, the column and its type, the encoding, the date). Each code has a
level:

- ``row``: the listing is rejected alone (quarantined in ``rejected.csv``); the batch's other
  rows are accepted while the bad-row share stays within ``validate.max_bad_row_fraction``;
- ``batch``: the whole batch is quarantined (at ingest, or at validation) with its report;
- ``warning``: reported (report, Data Docs, task log), never a rejection.

The table is what ``docs`` and reviewers read; a test checks that every code the platform
writes is declared here (:func:`level_of` raises for an unknown one).

Only the standard library is imported, so every package can read the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["row", "batch", "warning"]


@dataclass(frozen=True)
class Reason:
    """One reason code.

    Attributes:
        code: the machine-readable code, ``snake_case``.
        level: ``row``, ``batch`` or ``warning`` (see the module doc).
        meaning: what it means, for a reviewer.
    """

    code: str
    level: Level
    meaning: str


_TABLE: tuple[Reason, ...] = (
    # -- whole batch, at ingest (the feed's folder) --
    Reason("batch_name_invalid", "batch", "the batch folder's name is not a plain name (letters, digits, . _ -)"),
    Reason("batch_name_undated", "batch", "the batch folder's name carries no YYYY-MM-DD date at its end"),
    Reason("batch_name_date_invalid", "batch", "the date at the end of the batch folder's name is not a calendar date"),
    Reason("batch_holds_link", "batch", "the batch (or the batch folder itself) holds a symbolic link; links are never followed"),
    Reason("batch_not_a_folder", "batch", "the batch entry in the feed is not a folder (a link, a file, a FIFO...)"),
    Reason("batch_holds_hard_link", "batch", "a file of the batch has other hard links (it may be a file outside the feed)"),
    Reason("batch_file_unreadable", "batch", "a file of the batch cannot be read, or is not a regular file (FIFO, socket, device)"),
    Reason("batch_key_outside_folder", "batch", "an S3 key of the batch resolves outside its folder"),
    # -- whole batch, at validation (the listings file) --
    Reason("listings_file_missing", "batch", "the batch has no listings file of the catalog's name"),
    Reason("listings_file_ambiguous", "batch", "several listings files share the catalog's name with other extensions"),
    Reason("listings_file_empty", "batch", "the listings file holds no row"),
    Reason("listings_file_unparseable", "batch", "the listings file cannot be parsed in its format"),
    Reason("listings_file_unsupported", "batch", "the listings file's extension is not a supported format"),
    Reason("listings_file_not_a_table", "batch", "the listings file parses but is not a table of records"),
    Reason("listings_file_not_regular", "batch", "the listings file is a link, a FIFO or another non-regular file"),
    Reason("listings_file_encoding", "batch", "the listings file is not UTF-8 (the encoding found is named)"),
    Reason("column_type_invalid", "batch", "a canonical column holds values of a non-scalar type (struct, list, map)"),
    Reason("duplicate_columns", "batch", "the listings file names a column twice"),
    Reason("missing_columns", "batch", "a column the catalog maps is absent from the listings file"),
    Reason("column_missing", "batch", "a canonical column is absent after mapping (GX schema check)"),
    Reason("expectation_error", "batch", "a GX expectation raised instead of deciding"),
    Reason("validation_error", "batch", "validating the batch raised an exception (type and message in the report, "
           "traceback in the task log); the store and manifest are left as they were"),
    Reason("no_good_rows", "batch", "every row of the batch was rejected"),
    Reason("bad_row_fraction", "batch", "the share of rejected rows is over validate.max_bad_row_fraction"),
    Reason("label_drift", "warning", "the batch's category mix differs from the store's (Jensen-Shannon distance); "
           "blocks the batch when validate.drift_blocks"),
    Reason("price_drift", "warning", "the batch's price distribution differs from the store's (KS statistic); "
           "blocks the batch when validate.drift_blocks"),
    # -- one row --
    Reason("malformed_row", "row", "the record cannot be read as a row (field count, JSON, nesting, a key twice)"),
    Reason("missing_listing_id", "row", "the listing has no id (null sentinels such as NULL, nan, None count as none)"),
    Reason("listing_id_too_long", "row", "the listing id is longer than the store accepts"),
    Reason("duplicate_listing_id", "row", "the listing id appears twice in the batch"),
    Reason("missing_title", "row", "the listing has no title"),
    Reason("title_length_out_of_range", "row", "the title is shorter or longer than validate allows"),
    Reason("missing_category", "row", "the listing has no category"),
    Reason("unknown_category", "row", "the category is not in the declared taxonomy: held back, released when "
           "the taxonomy gains it"),
    Reason("category_unparseable", "row", "the category cell cannot be parsed as the catalog's category format"),
    Reason("wrong_dtype", "row", "the price is not a number after mapping"),
    Reason("price_not_a_number", "row", "the price text is not a number in plain decimal notation"),
    Reason("price_out_of_range", "row", "the price is outside validate's range"),
    Reason("unknown_currency", "row", "the currency is not one validate accepts"),
    Reason("source_invalid", "row", "a source value is unusable (undecodable bytes, control characters...)"),
    Reason("control_character", "row", "a text value holds a control or bidirectional-formatting character "
           "(named with its code point and position); rejected, never stripped"),
    Reason("invalid_utf8", "row", "a value of the row is not UTF-8 text (its column is named); a detail of source_invalid"),
    Reason("value_type_invalid", "row", "a JSON value for a scalar column is an object or an array"),
    Reason("duplicate_image", "row", "the image is the same file as another listing's"),
    Reason("image_invalid", "row", "the image check failed (the row's detail names which)"),
    Reason("image_key_missing", "row", "the listing names no image"),
    Reason("image_missing", "row", "the image file is not in the batch"),
    Reason("image_path_outside_batch", "row", "the image key leaves the batch folder"),
    Reason("image_not_regular_file", "row", "the image is a link, a FIFO or another non-regular file"),
    Reason("image_unreadable", "row", "the image file cannot be read"),
    Reason("image_empty", "row", "the image file is empty"),
    Reason("image_format_unsupported", "row", "the image is not JPEG, PNG or WebP"),
    Reason("image_mode_unsupported", "row", "the image's pixel mode cannot be converted to RGB"),
    Reason("image_too_large", "row", "the image's header claims more pixels than validate allows"),
    Reason("image_too_small", "row", "the image is smaller than validate's minimum side"),
    Reason("image_undecodable", "row", "the image's pixels cannot be decoded"),
    Reason("image_truncated", "row", "the image's data ends before its pixels (or is corrupt): part of it is fill"),
    Reason("image_corrupt", "row", "the image's structure is damaged (a CRC mismatch, restart markers out of order, "
           "bytes where a marker must be, an impossible segment length)"),
    Reason("image_key_invalid", "row", "the image key cannot name a file (it holds a NUL character)"),
    Reason("image_trailing_data", "row", "bytes follow the image's end marker (another file appended)"),
    Reason("image_blank", "row", "the image is (nearly) one flat colour"),
    Reason("batch_quarantined", "row", "the row was good, but its batch was quarantined whole"),
    # -- warnings --
    Reason("relabel", "warning", "a listing arrives again with another category (the latest version wins)"),
    Reason("retired_category", "warning", "accepted rows of a retired category: stored, not trained on"),
)

REASONS: dict[str, Reason] = {r.code: r for r in _TABLE}
"""Every reason code, by code."""
assert len(REASONS) == len(_TABLE), "a reason code is declared twice"

VALIDATION_ERROR = "validation_error"
UNKNOWN_CATEGORY = "unknown_category"
BATCH_QUARANTINED = "batch_quarantined"
NO_GOOD_ROWS = "no_good_rows"
BAD_ROW_FRACTION = "bad_row_fraction"
EXPECTATION_ERROR = "expectation_error"
RETIRED_CATEGORY = "retired_category"
RELABEL = "relabel"


def code_of(reason: str) -> str:
    """The code a reason text starts with: ``"price_out_of_range: -3"`` -> ``"price_out_of_range"``."""
    return reason.split(":", 1)[0].strip()


def level_of(reason: str) -> Level:
    """The level of a reason (a code, or a ``"<code>: <detail>"`` text).

    Raises:
        KeyError: when the code is not declared in :data:`REASONS` (naming it).
    """
    code = code_of(reason)
    if code not in REASONS:
        raise KeyError(f"reason code {code!r} is not declared in validation.reasons")
    return REASONS[code].level


def table_markdown() -> str:
    """The table as Markdown (code, level, meaning), for the docs."""
    lines = ["| code | level | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{r.code}` | {r.level} | {r.meaning} |" for r in _TABLE]
    return "\n".join(lines)
