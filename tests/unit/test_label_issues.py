"""monitoring.label_issues: confident learning (cleanlab) over a model's class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.label_issues import ISSUE_COLUMNS, find_label_issues

CLASSES = ["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Footwear > Shoes > Casual Shoes",
           "Accessories > Watches > Watches"]


def _probs(true: np.ndarray, rng: np.random.Generator, sharp: float = 0.9) -> np.ndarray:
    """Probabilities of a good model: ``sharp`` on the true class, the rest spread at random."""
    n, c = len(true), len(CLASSES)
    rest = rng.dirichlet(np.ones(c - 1), size=n) * (1 - sharp)
    probs = np.zeros((n, c))
    for i, t in enumerate(true):
        probs[i, [j for j in range(c) if j != t]] = rest[i]
        probs[i, t] = sharp
    return probs


def test_flipped_labels_are_flagged_and_the_rest_are_not():
    rng = np.random.default_rng(0)
    true = rng.integers(0, len(CLASSES), size=400)
    given = true.copy()
    flipped = rng.choice(400, size=20, replace=False)
    given[flipped] = (true[flipped] + 1) % len(CLASSES)  # a sibling or neighbour category
    ids = [f"L{i}" for i in range(400)]
    found = find_label_issues(ids, [f"title {i}" for i in range(400)], [CLASSES[g] for g in given],
                              _probs(true, rng), CLASSES)
    assert list(found.issues.columns) == list(ISSUE_COLUMNS)
    assert set(found.issues["listing_id"]) == {ids[i] for i in flipped}
    # least confident first; the suggestion is the model's class, the confidence the given label's
    assert found.issues["self_confidence"].is_monotonic_increasing
    row = found.issues.iloc[0]
    i = int(row["listing_id"][1:])
    assert row["suggested_label"] == CLASSES[true[i]] and row["given_label"] == CLASSES[given[i]]
    assert found.to_dict() == {"flagged": 20, "checked": 400, "unknown_label": 0, "flagged_share": 0.05}


def test_a_label_the_model_does_not_know_is_counted_not_flagged():
    rng = np.random.default_rng(1)
    true = rng.integers(0, len(CLASSES), size=100)
    labels = [CLASSES[t] for t in true]
    labels[:5] = ["Home > Decor > Candles"] * 5  # a category newer than the model
    found = find_label_issues([str(i) for i in range(100)], ["t"] * 100, labels, _probs(true, rng), CLASSES)
    assert found.checked == 95 and found.unknown_label == 5
    assert not set(found.issues["listing_id"]) & {str(i) for i in range(5)}


def test_shapes_that_disagree_are_refused():
    with pytest.raises(ValueError, match="do not agree"):
        find_label_issues(["a", "b"], ["x", "y"], [CLASSES[0], CLASSES[1]], np.ones((3, 4)) / 4, CLASSES)
