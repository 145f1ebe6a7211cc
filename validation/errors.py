"""Errors of the validation step."""

from __future__ import annotations

IMAGE_ERROR = "image_error"
"""Column added before validation: the :func:`validation.images.check_image` reason, or null."""
SOURCE_ERROR = "source_error"
"""Column added before validation: the :func:`validation.adapt.source_errors` reasons, or null."""
DUPLICATE_IMAGE = "duplicate_image"
"""Column added before validation: ``"duplicate_image: ..."`` when the image's SHA-256 is already
held by another listing (in the store or earlier in the batch), else null."""
PREVIOUS_CATEGORY = "previous_category"
"""Column added before validation: the category the store holds for the listing id (an update
of a listing seen before), else null. A different category is a relabel: a warning, never a
rejection."""
DETAIL_COLUMNS = (IMAGE_ERROR, SOURCE_ERROR, DUPLICATE_IMAGE)
"""Columns whose (``"; "``-joined) values are the rejection reasons of the rows they flag; the
suite expects them null."""


REPORT_VALUE_CHARS = 500
"""Longest text value copied into a report: GX validates a copy cut to this length (its results
and Data Docs hold no more), and warnings cut values with :func:`shorten` (an ellipsis and the
length). The quarantined rows themselves (``rejected.csv``) keep them whole."""


def shorten(value: object, limit: int = REPORT_VALUE_CHARS) -> object:
    """``value`` cut to ``limit`` characters plus ``…`` when it is a longer string; else as is."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}… ({len(value)} characters)"
    return value


class BatchError(Exception):
    """A batch that cannot be validated row by row; the whole batch is quarantined.

    Attributes:
        reason: short machine-readable code, e.g. ``"listings_file_missing"``; used as the key of
            the report's ``reasons`` counter.
        detail: human explanation (file name, parser message, missing columns...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)
