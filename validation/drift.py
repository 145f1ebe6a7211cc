"""Drift of a batch against the listings store: label distribution and price distribution.

Drift warns; it blocks a batch only when ``validate.drift_blocks`` is true. Both measures compare
the batch with the latest listings of the same catalog already in the store (read from the
store's index columns, no image is opened).

In the validation step the measures run inside the GX checkpoint, as the two drift expectations
of :mod:`validation.expectations` (so the batch's Data Docs page shows them with their observed
values); they call the functions below, and :func:`drift_summary` turns their results into the
report's ``drift`` section and warnings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from common.params import ValidateParams

LABEL_DRIFT = "label_drift"
"""Reason code of the label drift expectation and prefix of its warning."""
PRICE_DRIFT = "price_drift"
"""Reason code of the price drift expectation and prefix of its warning."""


def js_distance_of_counts(batch_counts: Mapping[str, int], store_counts: Mapping[str, int]) -> float:
    """Jensen-Shannon distance between two label distributions given as counts.

    See :func:`label_js_distance`; a label missing on one side has count 0 there.

    Args:
        batch_counts: label -> number of batch rows with it (counts >= 0).
        store_counts: label -> number of store listings with it.

    Returns:
        The distance (float in [0, 1]).

    Raises:
        ValueError: when either side counts no row.
    """
    if sum(batch_counts.values()) <= 0 or sum(store_counts.values()) <= 0:
        raise ValueError("label drift needs labels on both sides")
    labels = sorted(set(batch_counts) | set(store_counts))
    pv = np.array([batch_counts.get(x, 0) for x in labels], dtype=np.float64)
    qv = np.array([store_counts.get(x, 0) for x in labels], dtype=np.float64)
    return float(jensenshannon(pv / pv.sum(), qv / qv.sum(), base=2))


def label_js_distance(batch_labels: Sequence[str], store_labels: Sequence[str]) -> float:
    """Jensen-Shannon distance between two label distributions.

    ``JSD(P, Q) = sqrt(0.5 * KL(P || M) + 0.5 * KL(Q || M))`` with ``M = (P + Q) / 2`` and base-2
    logarithms, so it lies in ``[0, 1]``: 0 for equal distributions, 1 for disjoint ones (Lin,
    "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory 37(1), 1991;
    computed by ``scipy.spatial.distance.jensenshannon``).

    Args:
        batch_labels: category paths of the batch, one per listing.
        store_labels: category paths of the store, one per listing.

    Returns:
        The distance (float in [0, 1]) over the union of labels.

    Raises:
        ValueError: when either sequence is empty.
    """
    if not batch_labels or not store_labels:
        raise ValueError("label drift needs labels on both sides")
    return js_distance_of_counts(Counter(batch_labels), Counter(store_labels))


def price_ks_statistic(batch_prices: Sequence[float], store_prices: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs,
    ``D = sup_x |F_batch(x) - F_store(x)|`` (``scipy.stats.ks_2samp``), in [0, 1].

    Args:
        batch_prices: prices of the batch (float64, currency units; NaN already removed).
        store_prices: prices in the store (same unit).

    Raises:
        ValueError: when either sequence is empty.
    """
    if len(batch_prices) == 0 or len(store_prices) == 0:
        raise ValueError("price drift needs prices on both sides")
    return float(ks_2samp(np.asarray(batch_prices, dtype=np.float64),
                          np.asarray(store_prices, dtype=np.float64)).statistic)


def drift_summary(js: float | None, ks: float | None, batch_rows: int, store_rows: int,
                  params: ValidateParams) -> dict:
    """The report's ``drift`` section from the two measures, with a warning per threshold crossed.

    Args:
        js: label Jensen-Shannon distance, or ``None`` when not measured.
        ks: price KS statistic, or ``None`` when not measured.
        batch_rows: batch rows the label measure counted.
        store_rows: store listings the label measure counted.
        params: ``drift_label_js_max``, ``drift_price_ks_max``, ``drift_min_rows``,
            ``drift_blocks``.

    Returns:
        ``{"label_js_distance": float | None, "price_ks_statistic": float | None,
        "batch_rows": int, "store_rows": int, "thresholds": {...}, "warnings": [str]}``;
        a warning (``"label_drift: ..."``, ``"price_drift: ..."``) names each measure over its
        threshold.
    """
    warnings = []
    if js is not None and js > params.drift_label_js_max:
        warnings.append(f"{LABEL_DRIFT}: Jensen-Shannon distance {js:.3f} > {params.drift_label_js_max}")
    if ks is not None and ks > params.drift_price_ks_max:
        warnings.append(f"{PRICE_DRIFT}: KS statistic {ks:.3f} > {params.drift_price_ks_max}")
    return {
        "label_js_distance": None if js is None else round(js, 6),
        "price_ks_statistic": None if ks is None else round(ks, 6),
        "batch_rows": batch_rows, "store_rows": store_rows,
        "thresholds": {"label_js_max": params.drift_label_js_max,
                       "price_ks_max": params.drift_price_ks_max,
                       "min_rows": params.drift_min_rows, "blocks": params.drift_blocks},
        "warnings": warnings,
    }


def drift_report(batch_labels: Sequence[str], batch_prices: Sequence[float],
                 store_labels: Sequence[str], store_prices: Sequence[float],
                 params: ValidateParams) -> dict:
    """Measures label and price drift and compares them with the thresholds of ``params``.

    A measure is skipped (``None``) when the batch or the store has fewer than
    ``params.drift_min_rows`` values for it: a handful of rows says nothing about a distribution.

    Args:
        batch_labels: category paths of the batch's rows.
        batch_prices: their non-null prices (float64).
        store_labels: category paths of the store's listings of the same catalog.
        store_prices: their non-null prices.
        params: ``drift_label_js_max``, ``drift_price_ks_max``, ``drift_min_rows``.

    Returns:
        As :func:`drift_summary`.
    """
    enough = params.drift_min_rows
    js = (label_js_distance(batch_labels, store_labels)
          if min(len(batch_labels), len(store_labels)) >= enough else None)
    ks = (price_ks_statistic(batch_prices, store_prices)
          if min(len(batch_prices), len(store_prices)) >= enough else None)
    return drift_summary(js, ks, len(batch_labels), len(store_labels), params)
