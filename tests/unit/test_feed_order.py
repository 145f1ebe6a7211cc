"""publish(order="time"): the catalog in its own time order, cut into consecutive weeks."""

from __future__ import annotations

import pandas as pd
import pytest

from common.catalog import load_catalog
from ingestion.feed import publish, time_order

FASHION = load_catalog("catalogs/fashion.yaml")


def _key(frame: pd.DataFrame) -> list[tuple[int, int]]:
    return list(zip(frame["year"].astype(int), frame["id"].astype(int), strict=True))


def test_weeks_follow_the_ordering_column_ties_by_numeric_id(tmp_path, fashion_dir):
    ids = publish(fashion_dir, tmp_path / "feed", 4, FASHION, limit=240, order="time")
    weeks = [pd.read_csv(tmp_path / "feed" / b / "styles.csv", dtype=str) for b in ids]
    assert [len(w) for w in weeks] == [60, 60, 60, 60]
    keys = [k for w in weeks for k in _key(w)]
    assert keys == sorted(keys)  # week after week, and inside each week: (year, id) ascending
    assert max(_key(weeks[0])) < min(_key(weeks[1]))
    assert weeks[0]["year"].astype(int).min() < weeks[-1]["year"].astype(int).max()
    for batch, week in zip(ids, weeks, strict=True):  # every listing's image travels with it
        assert {f"{i}.jpg" for i in week["id"]} == {p.name for p in (tmp_path / "feed" / batch / "images").iterdir()}
    again = publish(fashion_dir, tmp_path / "again", 4, FASHION, limit=240, order="time")
    assert [pd.read_csv(tmp_path / "again" / b / "styles.csv", dtype=str)["id"].tolist() for b in again] == \
        [w["id"].tolist() for w in weeks]


def test_the_hash_order_mixes_years_in_every_week(tmp_path, fashion_dir):
    ids = publish(fashion_dir, tmp_path / "feed", 3, FASHION, limit=240)
    years = [set(pd.read_csv(tmp_path / "feed" / b / "styles.csv", dtype=str)["year"]) for b in ids]
    assert all(len(y) > 1 for y in years) and years[0] & years[-1]


def test_ids_compare_as_numbers_and_text_as_text():
    frame = pd.DataFrame({"id": ["10", "9", "100", "11"], "year": ["2012", "2011", "2011", ""]})
    assert time_order(frame, FASHION)["id"].tolist() == ["9", "100", "10", "11"]  # blank year last
    words = pd.DataFrame({"id": ["b", "a", "c"], "year": ["x", "x", "w"]})
    assert time_order(words, FASHION)["id"].tolist() == ["c", "a", "b"]


def test_a_catalog_without_an_ordering_column_cannot_be_published_in_time_order(tmp_path, flipkart_dir):
    flipkart = load_catalog("catalogs/flipkart.yaml")
    assert flipkart.order_by is None
    with pytest.raises(ValueError, match="declares no ordering column"):
        publish(flipkart_dir, tmp_path / "feed", 2, flipkart, limit=20, order="time")
    with pytest.raises(ValueError, match="order must be one of"):
        publish(flipkart_dir, tmp_path / "feed", 2, flipkart, limit=20, order="random")
