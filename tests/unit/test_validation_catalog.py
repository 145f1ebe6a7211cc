"""Catalog adapters as configuration, and the drift measures."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pydantic import ValidationError

from common.catalog import Catalog, load_catalog
from common.params import ValidateParams
from validation.adapt import source_errors, to_canonical
from validation.drift import (
    drift_report,
    drift_summary,
    js_distance_of_counts,
    label_js_distance,
    price_ks_statistic,
)

FLIPKART = load_catalog("catalogs/flipkart.yaml")
FASHION = load_catalog("catalogs/fashion.yaml")


def test_tree_parsed_and_truncated() -> None:
    cell = '["Clothing >> Women\'s Clothing >> Lingerie, Sleep & Swimwear >> Shorts >> X"]'
    assert FLIPKART.category_levels([cell]) == ["Clothing", "Women's Clothing"]
    deeper = FLIPKART.model_copy(update={"category": FLIPKART.category.model_copy(
        update={"max_depth": 4})})
    assert deeper.category_levels([cell])[-1] == "Shorts" and deeper.depth == 4
    assert FLIPKART.category_levels(["[not json"]) is None
    assert FLIPKART.category_levels(['["A >>  >> B"]']) is None


def test_fashion_levels_and_taxonomy_shorthand() -> None:
    assert FASHION.category_levels(["Apparel", " Topwear ", "Tshirts"]) == [
        "Apparel", "Topwear", "Tshirts"]
    assert FASHION.category_levels(["Apparel", None, "Tshirts"]) is None
    data = FASHION.model_dump()
    data["taxonomy"] = "my_taxonomy.json"  # the short form: a file name
    assert Catalog.model_validate(data).taxonomy.file == "my_taxonomy.json"


def test_exactly_one_category_source() -> None:
    data = FLIPKART.model_dump()
    data["columns"]["category_path"] = ["a", "b"]
    with pytest.raises(ValidationError, match="exactly one"):
        Catalog.model_validate(data)
    data = FLIPKART.model_dump()
    data["taxonomy"] = {"source": "google"}
    with pytest.raises(ValidationError, match="google_file"):
        Catalog.model_validate(data)


def test_flipkart_row_to_canonical_and_source_errors() -> None:
    raw = pd.DataFrame({
        "uniq_id": ["a1", "a2"], "product_name": ["Alisha Solid Women's Cycling Shorts", "x\udce9y"],
        "description": ["Key Features\nof Alisha", None], "brand": [None, "Alisha"],
        "retail_price": ["999.0", "12 rupees"],
        "product_category_tree": ['["Clothing >> Women\'s Clothing >> Shorts"]', "[oops"],
    }, dtype=object)
    canon = to_canonical(raw, FLIPKART, "b", "2026-11-02")
    assert canon.at[0, "category_path"] == "Clothing > Women's Clothing"
    assert canon.at[0, "price"] == 999.0 and canon.at[0, "currency"] == "INR"
    assert canon.at[0, "description"] == "Key Features\nof Alisha" and canon.at[0, "brand"] is None
    assert canon.at[1, "title"] == "x\ufffdy" and math.isnan(canon.at[1, "price"])
    errors = source_errors(raw, FLIPKART).tolist()
    assert errors[0] is None
    assert errors[1] == ("invalid_utf8: product_name; price_not_a_number: '12 rupees'; "
                         "category_unparseable: product_category_tree")


def test_drift_measures() -> None:
    assert label_js_distance(["a", "b"], ["b", "a"]) == pytest.approx(0.0)
    assert label_js_distance(["a"], ["b"]) == pytest.approx(1.0)  # disjoint, base 2
    # P=(1,0), Q=(.5,.5): JSD^2 = .5*KL(P||M) + .5*KL(Q||M), M=(.75,.25)
    kl_p = math.log2(1 / 0.75)
    kl_q = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert label_js_distance(["a"], ["a", "b"]) == pytest.approx(math.sqrt(0.5 * kl_p + 0.5 * kl_q))
    assert price_ks_statistic([1, 2, 3], [1, 2, 3]) == pytest.approx(0.0)
    assert price_ks_statistic([1, 2], [10, 20]) == pytest.approx(1.0)
    params = ValidateParams(drift_min_rows=2)
    report = drift_report(["a", "a"], [1.0, 2.0], ["b", "b"], [1.0, 2.0], params)
    assert report["warnings"] == ["label_drift: Jensen-Shannon distance 1.000 > 0.3"]
    assert report["price_ks_statistic"] == 0.0
    small = drift_report(["a"], [], ["b"] * 5, [1.0] * 5, params)
    assert small["label_js_distance"] is None and small["warnings"] == []


def test_drift_from_counts_and_the_report_section() -> None:
    """The GX drift expectation works from value counts: same distance as from the labels."""
    batch, store = ["a"] * 3 + ["b"], ["a", "b", "b", "c"]
    assert js_distance_of_counts({"a": 3, "b": 1}, {"a": 1, "b": 2, "c": 1}) == pytest.approx(
        label_js_distance(batch, store))
    assert js_distance_of_counts({"a": 2}, {"a": 5, "z": 0}) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="both sides"):
        js_distance_of_counts({"a": 1}, {})
    params = ValidateParams(drift_label_js_max=0.3, drift_price_ks_max=0.5, drift_blocks=True)
    section = drift_summary(0.31, 0.5, 40, 900, params)  # at the threshold passes, over it warns
    assert section["warnings"] == ["label_drift: Jensen-Shannon distance 0.310 > 0.3"]
    assert (section["batch_rows"], section["store_rows"], section["thresholds"]["blocks"]) == (40, 900, True)
    assert drift_summary(None, None, 3, 0, params)["warnings"] == []
