"""CSV files that are safe to open in a spreadsheet (CSV injection, a.k.a. formula injection).

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=HYPERLINK(...)``, ``=cmd|' /C calc'!A0``), and a leading tab or carriage return can hide
one. The rule, from OWASP's "CSV Injection" guidance
(https://owasp.org/www-community/attacks/CSV_Injection):

- a **string** cell that starts with ``=``, ``+``, ``-``, ``@``, tab (``\\t``) or carriage
  return (``\\r``) is written with a single quote ``'`` in front, which makes a spreadsheet show
  it as text;
- a string cell that already starts with ``'`` gets one more, so the transformation is
  reversible: :func:`restore_cell` drops exactly one leading ``'`` and gives the original back;
- cells of numeric columns (int, float, bool dtypes) are numbers, written as pandas writes them:
  ``-12.5`` in a float price column is a negative number to a spreadsheet, not a formula. A
  ``"-12.5"`` in a text (object or string dtype) column is a string cell and gets the quote,
  like any other text starting with a trigger;
- column names are ours (canonical columns), written as they are.

Files are RFC 4180 (``\\r\\n`` line ends, fields quoted when needed) and UTF-8; read them back
with :func:`read_safe_csv` to get every text cell exactly as it was before writing.
"""

from __future__ import annotations

from os import PathLike
from typing import IO, Any

import pandas as pd

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP)."""
QUOTE = "'"
"""What is put in front of such a cell (and of a cell already starting with it)."""


def neutralise_cell(value: Any) -> Any:
    """``value`` made safe for a spreadsheet: ``"'" + value`` when it is a string starting with
    a formula trigger (:data:`FORMULA_TRIGGERS`) or with ``'``; anything else unchanged.

    Examples: ``"=1+1"`` -> ``"'=1+1"``, ``"'quoted"`` -> ``"''quoted"``, ``"-12.5"`` ->
    ``"'-12.5"``, ``-12.5`` (a float) -> ``-12.5``.
    """
    if isinstance(value, str) and value.startswith((*FORMULA_TRIGGERS, QUOTE)):
        return QUOTE + value
    return value


def restore_cell(value: Any) -> Any:
    """The inverse of :func:`neutralise_cell`: a string starting with ``'`` loses that one
    quote; anything else is unchanged. ``restore_cell(neutralise_cell(v)) == v`` for every ``v``.
    """
    if isinstance(value, str) and value.startswith(QUOTE):
        return value[1:]
    return value


def _text_columns(frame: pd.DataFrame) -> list:
    return [c for c in frame.columns
            if pd.api.types.is_object_dtype(frame[c]) or pd.api.types.is_string_dtype(frame[c])]


def to_safe_csv(frame: pd.DataFrame, path: str | PathLike | IO[str]) -> None:
    """Writes ``frame`` as CSV with every text cell neutralised (:func:`neutralise_cell`).

    Args:
        frame: any DataFrame; its text columns (object or string dtype) are neutralised, numeric
            ones are written as numbers. The index is not written.
        path: file path or open text buffer (e.g. the temp file of an atomic write).
    """
    out = frame.copy()
    for column in _text_columns(out):
        out[column] = out[column].map(neutralise_cell)
    out.to_csv(path, index=False, lineterminator="\r\n")


def read_safe_csv(path: str | PathLike | IO[str]) -> pd.DataFrame:
    """Reads a CSV written by :func:`to_safe_csv`, every cell as text, neutralised cells restored.

    Args:
        path: file path or open text buffer.

    Returns:
        A DataFrame of strings (object dtype): empty cells are ``""`` (``keep_default_na=False``),
        numbers are their text as written.
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame.apply(lambda column: column.map(restore_cell)) if len(frame.columns) else frame
