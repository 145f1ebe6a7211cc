"""common.csv_safe: no written cell is a live formula, and every text cell reads back unchanged."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.csv_safe import (
    FORMULA_TRIGGERS,
    neutralise_cell,
    read_safe_csv,
    restore_cell,
    to_safe_csv,
)

# any Unicode text a feed can carry in UTF-8 (surrogates cannot be encoded)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
ATTACKS = ["=HYPERLINK(\"http://evil.example\",\"click\")", "=cmd|' /C calc'!A0", "+1+1", "-2+3",
           "@SUM(1+1)", "\t=1+1", "\r=1+1", "'=1+1", "'", ""]


def written_cells(path) -> list[list[str]]:
    """The cells as a spreadsheet reads the file: plain CSV, nothing restored."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("value", ATTACKS)
def test_neutralise_and_restore_are_inverse(value: str) -> None:
    safe = neutralise_cell(value)
    assert not safe.startswith(FORMULA_TRIGGERS)
    assert restore_cell(safe) == value


def test_numbers_are_not_text_cells() -> None:
    assert neutralise_cell(-12.5) == -12.5 and neutralise_cell(None) is None
    assert neutralise_cell("-12.5") == "'-12.5"


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=8))
@example(rows=[(a, "x") for a in ATTACKS])
def test_every_string_survives_write_then_read(rows, tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("csv") / "rejected.csv"
    frame = pd.DataFrame(rows, columns=["title", "reasons"])
    to_safe_csv(frame, path)
    cells = written_cells(path)
    assert cells[0] == ["title", "reasons"]
    assert not [c for row in cells[1:] for c in row if c.startswith(FORMULA_TRIGGERS)]
    assert path.read_bytes().endswith(b"\r\n")
    pd.testing.assert_frame_equal(read_safe_csv(path), frame)


def test_real_titles_with_formulas(fashion_dir, tmp_path) -> None:
    """Real listings, a few given formula titles, and a float price column with negatives."""
    styles = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False).iloc[:40]
    rows = styles[["id", "productDisplayName"]].rename(columns={"productDisplayName": "title"})
    rows.loc[rows.index[:len(ATTACKS)], "title"] = ATTACKS
    rows["price"] = [-12.5 if i % 2 else 999.0 for i in range(len(rows))]
    to_safe_csv(rows, tmp_path / "rejected.csv")

    cells = written_cells(tmp_path / "rejected.csv")
    titles = [row[1] for row in cells[1:]]
    assert not [t for t in titles if t.startswith(FORMULA_TRIGGERS)]
    assert titles[0] == "'" + ATTACKS[0] and titles[len(ATTACKS)] == rows["title"].iloc[len(ATTACKS)]
    assert [row[2] for row in cells[1:3]] == ["999.0", "-12.5"]  # numbers stay numbers
    back = read_safe_csv(tmp_path / "rejected.csv")
    assert back["title"].tolist() == rows["title"].tolist()
    assert back["id"].tolist() == rows["id"].tolist()


def test_reads_from_a_buffer() -> None:
    buffer = io.StringIO()
    to_safe_csv(pd.DataFrame({"title": ["=1+1", "ok"]}), buffer)
    assert buffer.getvalue() == "title\r\n'=1+1\r\nok\r\n"
    assert read_safe_csv(io.StringIO(buffer.getvalue()))["title"].tolist() == ["=1+1", "ok"]
