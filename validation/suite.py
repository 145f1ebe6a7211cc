"""The ``listings_batch`` expectation suite, defined in code and versioned with the project."""

from __future__ import annotations

from common.catalog import CANONICAL_COLUMNS
from common.params import ValidateParams
from validation.errors import DETAIL_COLUMNS, DUPLICATE_IMAGE, IMAGE_ERROR, SOURCE_ERROR
from validation.gx_setup import gx

SUITE_NAME = "listings_batch"
REQUIRED_COLUMNS = (*CANONICAL_COLUMNS, *DETAIL_COLUMNS)


def build_suite(taxonomy: frozenset[str], params: ValidateParams) -> gx.ExpectationSuite:
    """Builds the expectation suite a batch of canonical listings must meet.

    Every expectation carries ``meta={"reason": <code>, "critical": True}``; the code names the
    rejection reason of the rows it flags. Column-level expectations flag rows (a failing row is
    quarantined); ``column_missing`` expectations are table-level (the batch is quarantined).

    Args:
        taxonomy: valid category paths (``" > "``-joined), from
            :func:`validation.taxonomy.load_taxonomy`.
        params: ``title_min_length`` / ``title_max_length`` (characters), ``max_price``
            (currency units; price >= 0), ``currencies`` (known ISO 4217 codes).

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
        E.ExpectColumnValuesToBeUnique(column="listing_id", meta=meta("duplicate_listing_id")),
        E.ExpectColumnValuesToNotBeNull(column="title", meta=meta("missing_title")),
        E.ExpectColumnValueLengthsToBeBetween(
            column="title", min_value=params.title_min_length,
            max_value=params.title_max_length, meta=meta("title_length_out_of_range")),
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
    ]
    return gx.ExpectationSuite(
        name=SUITE_NAME, expectations=expectations,
        meta={"notes": "Defined in validation/suite.py; rebuilt on every run, do not edit here."},
    )
