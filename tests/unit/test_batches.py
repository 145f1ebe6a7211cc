"""The date a batch id carries, and the order of listing versions it gives."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from common.batches import (
    BatchDateError,
    batch_date,
    is_release_id,
    parse_batch_date,
    version_order,
)


@pytest.mark.parametrize(("batch_id", "expected"), [
    ("fashion-2026-11-02", date(2026, 11, 2)),
    ("fashion-2026-11-02.release-3", date(2026, 11, 2)),  # a release belongs to its origin's week
    ("b0001", None),
    ("fashion-week-one", None),
])
def test_the_date_of_a_batch_id(batch_id, expected):
    assert parse_batch_date(batch_id) == expected == batch_date(batch_id)


@pytest.mark.parametrize(("batch_id", "message"), [
    ("fashion-2026-02-30", "2026-02-30 is not a valid date: day is out of range for month"),
    ("fashion-2026-13-40", "2026-13-40 is not a valid date: month must be in 1..12"),
])
def test_an_impossible_date_is_named_with_what_is_wrong(batch_id, message):
    with pytest.raises(BatchDateError) as info:
        parse_batch_date(batch_id)
    assert str(info.value) == message
    assert batch_date(batch_id) is None


def test_release_ids():
    assert is_release_id("fashion-2026-11-02.release-1")
    assert not is_release_id("fashion-2026-11-02") and not is_release_id("release-1")


def test_the_batch_date_outranks_ingested_at():
    """A later week wins over an earlier week's row whatever time either carries, a release
    ranks with its origin's week, and ``ingested_at`` then the id break ties within one week."""
    rows = pd.DataFrame([
        ("fashion-2026-11-09", "2026-11-09T00:00:00+00:00", "next week"),
        ("fashion-2026-11-02", "2099-01-01T00:00:00+00:00", "stale, claims 2099"),
        ("fashion-2026-11-02.release-1", "2099-06-01T00:00:00+00:00", "released late"),
        ("b0001", "2100-01-01T00:00:00+00:00", "undated"),
        ("fashion-2026-11-09", "2026-11-09T00:00:00+00:00", "next week"),
    ], columns=["batch_id", "ingested_at", "title"])
    ordered = version_order(rows)
    assert list(ordered["title"]) == ["undated", "stale, claims 2099", "released late",
                                      "next week", "next week"]
    assert list(ordered.index) == [3, 1, 2, 0, 4]  # stable
