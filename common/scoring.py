"""The business-weighted score, the one number the promotion gate compares.

    score = sum_i v(y_i) * credit(yhat_i, y_i) / sum_i v(y_i)

over the listings i of the golden test set, where

* ``v(c)`` is the business value of the true category ``c``: the entry of
  ``score.value_table`` (params.yaml) for the most specific prefix of ``c``'s path that has one
  (a table key may name any taxonomy level), else ``score.default_value``;
* ``credit(yhat, y)`` is 1 when the predicted leaf path equals the true one, else
  ``level_credit[k]`` where ``k`` is the number of leading levels the two paths share.

It generalises the value-weighted accuracy used by Criteo's catalogue team to rank product
classifiers (with ``level_credit`` all zeros and ``v`` constant it is plain leaf accuracy).
The value table in params.yaml is example configuration, not a measured fact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from common.catalog import PATH_SEP, split_path


def category_value(path: str, value_table: Mapping[str, float], default: float = 1.0) -> float:
    """Business value of a category: the most specific matching prefix of ``path`` wins.

    Args:
        path: category path, levels joined by ``" > "``.
        value_table: values keyed by a category path prefix (any level).
        default: value of a category no prefix of which is in the table.

    Returns:
        The value, a float >= 0.
    """
    levels = split_path(path)
    for depth in range(len(levels), 0, -1):
        key = PATH_SEP.join(levels[:depth])
        if key in value_table:
            return float(value_table[key])
    return float(default)


def credit(predicted: str, true: str, level_credit: Sequence[float]) -> float:
    """Credit of one prediction: 1 for the exact path, ``level_credit[k]`` for k shared levels.

    Args:
        predicted: predicted category path.
        true: true category path.
        level_credit: credit by number of shared leading levels, index 0 .. depth - 1; a
            shared prefix longer than the table takes its last entry.

    Returns:
        A credit in [0, 1].
    """
    p, t = split_path(predicted), split_path(true)
    if p == t:
        return 1.0
    shared = 0
    for a, b in zip(p, t, strict=False):
        if a != b:
            break
        shared += 1
    if not level_credit:
        return 0.0
    return float(level_credit[min(shared, len(level_credit) - 1)])


def listing_credits(true_paths: Sequence[str], predicted_paths: Sequence[str], value_table: Mapping[str, float],
                    level_credit: Sequence[float], default_value: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-listing values and credits, the terms of the score (used for resampling too).

    Returns:
        ``(values, credits)``, two float64 arrays of shape ``(n,)``.

    Raises:
        ValueError: when the two sequences differ in length.
    """
    if len(true_paths) != len(predicted_paths):
        raise ValueError(f"{len(true_paths)} true paths but {len(predicted_paths)} predictions")
    values = np.array([category_value(t, value_table, default_value) for t in true_paths], dtype=np.float64)
    credits = np.array(
        [credit(p, t, level_credit) for p, t in zip(predicted_paths, true_paths, strict=True)],
        dtype=np.float64,
    )
    return values, credits


def business_weighted_score(true_paths: Sequence[str], predicted_paths: Sequence[str],
                            value_table: Mapping[str, float], level_credit: Sequence[float],
                            default_value: float = 1.0) -> float:
    """The business-weighted score (module docstring), a float in [0, 1].

    Raises:
        ValueError: when the sequences differ in length, are empty, or all values are 0.
    """
    values, credits = listing_credits(true_paths, predicted_paths, value_table, level_credit, default_value)
    total = values.sum()
    if len(values) == 0 or total <= 0:
        raise ValueError("the business-weighted score needs at least one listing of positive value")
    return float((values * credits).sum() / total)


def top_value_categories(true_paths: Sequence[str], values: np.ndarray, n: int) -> list[str]:
    """The ``n`` true categories carrying the most business value in a set of listings.

    A category's value is ``sum_i v(y_i)`` over the listings whose true category is it (its
    weight in the business-weighted score), so a frequent cheap category can outrank a rare
    dear one. Ties break by category path, for a stable order.

    Args:
        true_paths: N true category paths.
        values: float array ``(N,)``, ``v(y_i)`` (see :func:`listing_credits`).
        n: how many categories; 0 returns none.

    Returns:
        Up to ``n`` category paths, most valuable first.
    """
    totals: dict[str, float] = {}
    for path, value in zip(true_paths, values, strict=True):
        totals[path] = totals.get(path, 0.0) + float(value)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [path for path, _ in ranked[:max(n, 0)]]


def category_recall(true_paths: Sequence[str], predicted_paths: Sequence[str], category: str) -> float:
    """Leaf recall of one category: the share of its listings predicted exactly.

    Returns:
        A float in [0, 1], or ``nan`` when no listing's true category is ``category``.
    """
    hits = [p == t for p, t in zip(predicted_paths, true_paths, strict=True) if t == category]
    return float(np.mean(hits)) if hits else float("nan")
