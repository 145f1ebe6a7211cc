"""Errors of the validation step."""

from __future__ import annotations


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
