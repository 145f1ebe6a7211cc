"""Unit tests of the business-weighted score (common/scoring.py)."""

from __future__ import annotations

import pytest

from common.scoring import business_weighted_score, category_value, credit, listing_credits

SHIRT = "Apparel > Topwear > Shirts"
TSHIRT = "Apparel > Topwear > Tshirts"
JEANS = "Apparel > Bottomwear > Jeans"
WATCH = "Accessories > Watches > Watches"
CREDITS = (0.0, 0.25, 0.5)


def test_exact_leaf_gets_full_credit():
    assert credit(SHIRT, SHIRT, CREDITS) == 1.0


@pytest.mark.parametrize(("predicted", "expected"), [
    (TSHIRT, 0.5),   # same master and sub category
    (JEANS, 0.25),   # same master category only
    (WATCH, 0.0),    # nothing shared
])
def test_partial_level_credit(predicted, expected):
    assert credit(predicted, SHIRT, CREDITS) == expected


def test_empty_credit_table_gives_zero_for_misses():
    assert credit(TSHIRT, SHIRT, ()) == 0.0


def test_most_specific_value_wins():
    table = {"Apparel": 2.0, "Apparel > Topwear": 3.0, TSHIRT: 0.8}
    assert category_value(TSHIRT, table) == 0.8
    assert category_value(SHIRT, table) == 3.0
    assert category_value(JEANS, table) == 2.0


def test_default_value_when_no_prefix_matches():
    assert category_value(WATCH, {"Apparel": 2.0}, default=1.5) == 1.5
    assert category_value(WATCH, {}) == 1.0


def test_score_weights_by_true_category_value():
    table = {"Accessories > Watches": 3.0}
    # watch right (value 3), shirt wrong with no shared level (value 1): 3 / 4
    score = business_weighted_score([WATCH, SHIRT], [WATCH, WATCH], table, CREDITS)
    assert score == pytest.approx(0.75)


def test_score_with_partial_credit():
    score = business_weighted_score([SHIRT, SHIRT], [SHIRT, TSHIRT], {}, CREDITS)
    assert score == pytest.approx((1.0 + 0.5) / 2)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        business_weighted_score([SHIRT], [SHIRT, JEANS], {}, CREDITS)
    with pytest.raises(ValueError):
        listing_credits([SHIRT, JEANS], [SHIRT], {}, CREDITS)


def test_empty_or_zero_value_raises():
    with pytest.raises(ValueError):
        business_weighted_score([], [], {}, CREDITS)
    with pytest.raises(ValueError):
        business_weighted_score([SHIRT], [SHIRT], {"Apparel": 0.0}, CREDITS)


def test_equals_plain_accuracy_with_zero_credit_and_unit_values():
    true = [SHIRT, TSHIRT, JEANS, WATCH, SHIRT]
    pred = [SHIRT, SHIRT, JEANS, JEANS, TSHIRT]
    accuracy = sum(p == t for p, t in zip(pred, true, strict=True)) / len(true)
    assert business_weighted_score(true, pred, {}, (0.0, 0.0, 0.0), 1.0) == pytest.approx(accuracy)


def test_top_value_categories_rank_by_summed_value():
    import numpy as np

    from common.scoring import top_value_categories

    true = [WATCH, SHIRT, SHIRT, SHIRT, SHIRT, JEANS]
    values = np.array([3.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # four shirts (4.0) outweigh one watch (3.0); ties would break by path
    assert top_value_categories(true, values, 2) == [SHIRT, WATCH]
    assert top_value_categories(true, values, 0) == []
    assert top_value_categories(true, values, 10) == [SHIRT, WATCH, JEANS]


def test_category_recall():
    import math

    from common.scoring import category_recall

    true = [SHIRT, SHIRT, SHIRT, SHIRT, JEANS]
    pred = [SHIRT, TSHIRT, SHIRT, SHIRT, SHIRT]
    assert category_recall(true, pred, SHIRT) == pytest.approx(0.75)
    assert category_recall(true, pred, JEANS) == 0.0
    assert math.isnan(category_recall(true, pred, WATCH))
