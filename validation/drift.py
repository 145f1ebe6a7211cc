"""Drift of a batch against the listings store: label distribution and price distribution.

Drift warns; it blocks a batch only when ``validate.drift_blocks`` is true. Both measures compare
the batch's good rows with the latest listings of the same catalog already in the store (read from
the store's index columns, no image is opened).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from common.params import ValidateParams


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
    p, q = Counter(batch_labels), Counter(store_labels)
    labels = sorted(set(p) | set(q))
    pv = np.array([p[x] for x in labels], dtype=np.float64)
    qv = np.array([q[x] for x in labels], dtype=np.float64)
    return float(jensenshannon(pv / pv.sum(), qv / qv.sum(), base=2))


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


def drift_report(batch_labels: Sequence[str], batch_prices: Sequence[float],
                 store_labels: Sequence[str], store_prices: Sequence[float],
                 params: ValidateParams) -> dict:
    """Measures label and price drift and compares them with the thresholds of ``params``.

    A measure is skipped (``None``) when the batch or the store has fewer than
    ``params.drift_min_rows`` values for it: a handful of rows says nothing about a distribution.

    Args:
        batch_labels: category paths of the batch's good rows.
        batch_prices: their non-null prices (float64).
        store_labels: category paths of the store's listings of the same catalog.
        store_prices: their non-null prices.
        params: ``drift_label_js_max``, ``drift_price_ks_max``, ``drift_min_rows``.

    Returns:
        ``{"label_js_distance": float | None, "price_ks_statistic": float | None,
        "batch_rows": int, "store_rows": int, "thresholds": {...}, "warnings": [str]}``;
        a warning names each measure over its threshold.
    """
    enough = params.drift_min_rows
    js = (label_js_distance(batch_labels, store_labels)
          if min(len(batch_labels), len(store_labels)) >= enough else None)
    ks = (price_ks_statistic(batch_prices, store_prices)
          if min(len(batch_prices), len(store_prices)) >= enough else None)
    warnings = []
    if js is not None and js > params.drift_label_js_max:
        warnings.append(f"label_drift: Jensen-Shannon distance {js:.3f} > {params.drift_label_js_max}")
    if ks is not None and ks > params.drift_price_ks_max:
        warnings.append(f"price_drift: KS statistic {ks:.3f} > {params.drift_price_ks_max}")
    return {
        "label_js_distance": None if js is None else round(js, 6),
        "price_ks_statistic": None if ks is None else round(ks, 6),
        "batch_rows": len(batch_labels), "store_rows": len(store_labels),
        "thresholds": {"label_js_max": params.drift_label_js_max,
                       "price_ks_max": params.drift_price_ks_max, "min_rows": enough,
                       "blocks": params.drift_blocks},
        "warnings": warnings,
    }
