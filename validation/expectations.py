"""Custom GX expectations: label and price drift of a batch against the listings store.

GX Core has no two-sample drift expectation for these measures, so two are defined here, the way
GX 1.x extends its catalogue (subclasses of ``ColumnAggregateExpectation`` that ask GX for a
built-in metric and decide in ``_validate``):

- :class:`ExpectColumnJsDistanceToStoreToBeAtMost`: Jensen-Shannon distance (base 2) between the
  column's value distribution in the batch and the store's (reference counts carried by the
  expectation), from GX's ``column.value_counts`` metric.
- :class:`ExpectColumnKsStatisticToStoreToBeAtMost`: two-sample Kolmogorov-Smirnov statistic
  between the column's values in the batch and the store's (reference value counts), from the
  same metric.

GX computes the batch side over the rows selected by the expectation's ``row_condition``; the
figures come from :mod:`validation.drift` (scipy), so the report and the Data Docs page show the
same numbers. Each result's ``observed_value`` is the measure (or a "not measured: ..." text when
either side has fewer than ``min_rows`` values) and ``details`` holds ``measured``,
``batch_rows`` and ``store_rows``. The suite gives them ``severity`` ``warning`` unless
``validate.drift_blocks`` is true, and a ``description`` that the Data Docs page prints.

Importing this module registers both expectation types with GX; :mod:`validation.suite` imports
it, so any code that loads the suite or its results through the GX project has them.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from validation.drift import js_distance_of_counts, price_ks_statistic
from validation.gx_setup import gx

ColumnAggregateExpectation = gx.expectations.expectation.ColumnAggregateExpectation

VALUE_COUNTS = "column.value_counts"
"""GX's built-in metric: the column's non-null values and their counts (a pandas Series)."""


def _not_measured(batch_rows: int, store_rows: int, min_rows: int) -> dict:
    return {"success": True, "result": {
        "observed_value": (f"not measured: {batch_rows} batch row(s), {store_rows} store "
                           f"listing(s); at least {min_rows} on each side are needed"),
        "details": {"measured": False, "batch_rows": batch_rows, "store_rows": store_rows}}}


class ExpectColumnJsDistanceToStoreToBeAtMost(ColumnAggregateExpectation):
    """Expect the Jensen-Shannon distance between the column's distribution and the store's to be
    at most ``max_value``.

    ``JSD(P, Q) = sqrt(0.5 * KL(P || M) + 0.5 * KL(Q || M))``, ``M = (P + Q) / 2``, base-2
    logarithms, in [0, 1] (Lin 1991; :func:`validation.drift.js_distance_of_counts`). ``P`` is
    the batch's value distribution (nulls excluded), ``Q`` the reference counts.

    Attributes:
        reference_counts: value -> number of store listings with it.
        max_value: largest distance that passes.
        min_rows: below this many values on either side nothing is measured (success).
    """

    reference_counts: dict[str, int]
    max_value: float
    min_rows: int = 1
    catch_exceptions: bool = True  # a failed measure is reported, never a crash of the run

    metric_dependencies: ClassVar[tuple[str, ...]] = (VALUE_COUNTS,)
    success_keys: ClassVar[tuple[str, ...]] = ("reference_counts", "max_value", "min_rows")
    args_keys: ClassVar[tuple[str, ...]] = ("column", "max_value")

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                  execution_engine=None) -> dict:
        counts = {str(k): int(n) for k, n in metrics[VALUE_COUNTS].items()}
        batch_rows, store_rows = sum(counts.values()), sum(self.reference_counts.values())
        if min(batch_rows, store_rows) < max(self.min_rows, 1):
            return _not_measured(batch_rows, store_rows, self.min_rows)
        js = round(js_distance_of_counts(counts, self.reference_counts), 6)
        return {"success": js <= self.max_value, "result": {
            "observed_value": js,
            "details": {"measured": True, "batch_rows": batch_rows, "store_rows": store_rows}}}


class ExpectColumnKsStatisticToStoreToBeAtMost(ColumnAggregateExpectation):
    """Expect the two-sample Kolmogorov-Smirnov statistic between the column's values and the
    store's to be at most ``max_value``.

    ``D = sup_x |F_batch(x) - F_store(x)|`` over the empirical CDFs, in [0, 1]
    (:func:`validation.drift.price_ks_statistic`, ``scipy.stats.ks_2samp``); nulls excluded.

    Attributes:
        reference_values: the distinct store values (floats, e.g. prices in currency units).
        reference_counts: how many store listings have each of them (same length).
        max_value: largest statistic that passes.
        min_rows: below this many values on either side nothing is measured (success).
    """

    reference_values: list[float]
    reference_counts: list[int]
    max_value: float
    min_rows: int = 1
    catch_exceptions: bool = True  # a failed measure is reported, never a crash of the run

    metric_dependencies: ClassVar[tuple[str, ...]] = (VALUE_COUNTS,)
    success_keys: ClassVar[tuple[str, ...]] = (
        "reference_values", "reference_counts", "max_value", "min_rows")
    args_keys: ClassVar[tuple[str, ...]] = ("column", "max_value")

    def _validate(self, metrics: dict, runtime_configuration: dict | None = None,
                  execution_engine=None) -> dict:
        counts = metrics[VALUE_COUNTS]
        batch = np.repeat(np.asarray(counts.index, dtype=np.float64),
                          np.asarray(counts.to_numpy(), dtype=np.int64))
        store = np.repeat(np.asarray(self.reference_values, dtype=np.float64),
                          np.asarray(self.reference_counts, dtype=np.int64))
        if min(len(batch), len(store)) < max(self.min_rows, 1):
            return _not_measured(len(batch), len(store), self.min_rows)
        ks = round(price_ks_statistic(batch, store), 6)
        return {"success": ks <= self.max_value, "result": {
            "observed_value": ks,
            "details": {"measured": True, "batch_rows": len(batch), "store_rows": len(store)}}}
