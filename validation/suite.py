"""The ``listings_batch`` expectation suite, defined in code and versioned with the project."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.catalog import CANONICAL_COLUMNS
from common.params import ValidateParams
from validation.drift import LABEL_DRIFT, PRICE_DRIFT
from validation.errors import (
    DETAIL_COLUMNS,
    DUPLICATE_IMAGE,
    IMAGE_ERROR,
    PREVIOUS_CATEGORY,
    SOURCE_ERROR,
)
from validation.expectations import (
    ExpectColumnJsDistanceToStoreToBeAtMost,
    ExpectColumnKsStatisticToStoreToBeAtMost,
)
from validation.gx_setup import gx

SUITE_NAME = "listings_batch"
REQUIRED_COLUMNS = (*CANONICAL_COLUMNS, *DETAIL_COLUMNS, PREVIOUS_CATEGORY)
DRIFT_REASONS = (LABEL_DRIFT, PRICE_DRIFT)
"""``meta["reason"]`` of the drift expectations: they never flag rows (see :func:`build_suite`)."""
RELABEL = "relabel"
"""``meta["reason"]`` of the relabel expectation: a warning listing the updates that change a
listing's category, never a rejection."""
WARNING_REASONS = (*DRIFT_REASONS, RELABEL)
"""Reasons of the expectations that warn and never flag rows."""
MAX_LISTING_ID_CHARS = 256
"""Longest listing id: ids name image files (255 bytes on most filesystems) and report rows."""


@dataclass(frozen=True)
class StoreReference:
    """What the drift expectations compare a batch with: the store's listings of its catalog.

    Attributes:
        catalog: the catalog name (for the Data Docs text).
        labels: category path of each listing (latest versions, this batch excluded).
        prices: their non-null prices (float64, currency units).
    """

    catalog: str
    labels: Sequence[str] = field(default_factory=tuple)
    prices: Sequence[float] = field(default_factory=tuple)


def drift_expectations(reference: StoreReference, params: ValidateParams) -> list:
    """The label and price drift expectations of a batch against ``reference``.

    Both are computed by GX on the batch rows whose source cells and image passed the checks
    made before GX (``source_error``, ``image_error`` and ``duplicate_image`` null: GX's
    ``row_condition``), so a category that suddenly floods the feed, or prices that jump, show as
    drift even when those rows fail another expectation. ``severity`` is ``warning`` and
    ``meta["critical"]`` false unless ``params.drift_blocks``; the ``description`` is what the
    batch's Data Docs page prints next to the observed value.

    Args:
        reference: the store side.
        params: ``drift_label_js_max``, ``drift_price_ks_max``, ``drift_min_rows``,
            ``drift_blocks``.

    Returns:
        ``[label drift expectation, price drift expectation]``.
    """
    from great_expectations.expectations.row_conditions import Column

    checked = (Column(SOURCE_ERROR).is_null() & Column(IMAGE_ERROR).is_null()
               & Column(DUPLICATE_IMAGE).is_null())
    blocks = params.drift_blocks
    severity = "critical" if blocks else "warning"
    policy = ("Severity critical: over the threshold the whole batch is quarantined "
              "(validate.drift_blocks: true)." if blocks else
              "Severity warning: over the threshold the batch is still accepted, with a warning "
              "in its report (validate.drift_blocks: false).")

    def description(measure: str, n_store: int, max_value: float) -> str:
        """What the Data Docs page prints: the measure, its scope, the threshold and the policy."""
        return (f"{measure} this batch's rows whose source cells and image passed, against the "
                f"{n_store} listings of catalog '{reference.catalog}' already in the store must be "
                f"at most {max_value}. Measured when both sides have at least "
                f"{params.drift_min_rows} values. {policy}")

    shared = {"min_rows": params.drift_min_rows, "row_condition": checked, "severity": severity}
    labels = Counter(reference.labels)
    prices = Counter(float(p) for p in reference.prices)
    values = sorted(prices)
    return [
        ExpectColumnJsDistanceToStoreToBeAtMost(
            column="category_path", reference_counts=dict(sorted(labels.items())),
            max_value=params.drift_label_js_max, meta={"reason": LABEL_DRIFT, "critical": blocks}, **shared,
            description=description("Label drift: the Jensen-Shannon distance (base 2, 0 = same, 1 = "
                                    "disjoint) between the category distribution of",
                                    sum(labels.values()), params.drift_label_js_max)),
        ExpectColumnKsStatisticToStoreToBeAtMost(
            column="price", reference_values=values, reference_counts=[prices[v] for v in values],
            max_value=params.drift_price_ks_max, meta={"reason": PRICE_DRIFT, "critical": blocks}, **shared,
            description=description("Price drift: the two-sample Kolmogorov-Smirnov statistic (largest "
                                    "gap between the empirical CDFs, 0..1) of the prices of",
                                    sum(prices.values()), params.drift_price_ks_max)),
    ]


def build_suite(taxonomy: frozenset[str], params: ValidateParams,
                reference: StoreReference | None = None, *, titles: bool = True) -> gx.ExpectationSuite:
    """Builds the expectation suite a batch of canonical listings must meet.

    Every row or schema expectation carries ``meta={"reason": <code>, "critical": True}``; the
    code names the rejection reason of the rows it flags. Column-level expectations flag rows (a
    failing row is quarantined); ``column_missing`` expectations are table-level (the batch is
    quarantined). With a ``reference``, the two drift expectations of :func:`drift_expectations`
    follow (reasons :data:`DRIFT_REASONS`); they describe the batch as a whole and never flag
    rows. The relabel expectation (reason :data:`RELABEL`, severity warning) lists, on the Data
    Docs page, the listings whose category differs from their stored version; it never flags
    rows either.

    Args:
        taxonomy: valid category paths (``" > "``-joined), from
            :func:`validation.taxonomy.load_taxonomy`.
        params: ``title_min_length`` / ``title_max_length`` (characters), ``max_price``
            (currency units; price >= 0), ``currencies`` (known ISO 4217 codes), and the
            ``drift_*`` thresholds.
        reference: the store's listings of the batch's catalog, for the drift expectations.
        titles: whether the catalog maps a title (``columns.title``); without one the two title
            expectations (``missing_title``, ``title_length_out_of_range``) are left out.

    Returns:
        An unsaved suite named ``"listings_batch"``.
    """
    E = gx.expectations

    def meta(reason: str) -> dict:
        return {"reason": reason, "critical": True}

    expectations = [E.ExpectColumnToExist(column=c, meta=meta("column_missing"))
                    for c in REQUIRED_COLUMNS]
    expectations += [
        E.ExpectColumnValuesToNotBeNull(column="listing_id", meta=meta("missing_listing_id")),
        E.ExpectColumnValueLengthsToBeBetween(column="listing_id", min_value=1,
                                              max_value=MAX_LISTING_ID_CHARS,
                                              meta=meta("listing_id_too_long")),
        E.ExpectColumnValuesToBeUnique(column="listing_id", meta=meta("duplicate_listing_id")),
    ]
    if titles:
        expectations += [
            E.ExpectColumnValuesToNotBeNull(column="title", meta=meta("missing_title")),
            E.ExpectColumnValueLengthsToBeBetween(
                column="title", min_value=params.title_min_length,
                max_value=params.title_max_length, meta=meta("title_length_out_of_range")),
        ]
    expectations += [
        E.ExpectColumnValuesToNotBeNull(column="category_path", meta=meta("missing_category")),
        E.ExpectColumnValuesToBeInSet(column="category_path", value_set=sorted(taxonomy),
                                      meta=meta("unknown_category")),
        E.ExpectColumnValuesToBeOfType(column="price", type_="float64", meta=meta("wrong_dtype")),
        E.ExpectColumnValuesToBeBetween(column="price", min_value=0, max_value=params.max_price,
                                        meta=meta("price_out_of_range")),
        E.ExpectColumnValuesToBeInSet(column="currency", value_set=sorted(params.currencies),
                                      meta=meta("unknown_currency")),
        E.ExpectColumnValuesToBeNull(column=SOURCE_ERROR, meta=meta("source_invalid")),
        E.ExpectColumnValuesToBeNull(column=IMAGE_ERROR, meta=meta("image_invalid")),
        E.ExpectColumnValuesToBeNull(column=DUPLICATE_IMAGE, meta=meta("duplicate_image")),
        E.ExpectColumnPairValuesToBeEqual(
            column_A=PREVIOUS_CATEGORY, column_B="category_path",
            ignore_row_if="either_value_is_missing", severity="warning",
            meta={"reason": RELABEL, "critical": False},
            description=("Relabel (warning): a listing that arrives again is an update and its "
                         "latest version wins, but a changed category is also the commonest "
                         "labelling error. Each unexpected row is a listing whose category "
                         f"differs from the one the store holds ({PREVIOUS_CATEGORY}); check it.")),
    ]
    if reference is not None:
        expectations += drift_expectations(reference, params)
    return gx.ExpectationSuite(
        name=SUITE_NAME, expectations=expectations,
        meta={"notes": "Defined in validation/suite.py; rebuilt on every run, do not edit here."},
    )
