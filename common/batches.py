"""Batch ids and the date they carry: what places a batch, and each listing version, in time.

A batch is named ``<catalog>-YYYY-MM-DD``, the Monday of the week it belongs to; a release of
held-back listings is named ``<origin>.release-<k>`` and belongs to its origin's week. That date
orders the versions of a listing (:func:`version_order`): it is the one clock the platform sets
(the feed's folder name, checked at ingest), unlike a file's modification time, which the partner
who wrote the file controls (a listings file dated 2099 must not make its stale row win).
"""

from __future__ import annotations

import re
from datetime import date

import pandas as pd

_DATED = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})(?:\.release-[0-9]+)?$")
"""A batch id's trailing date, optionally followed by a release suffix."""
_RELEASE = re.compile(r"\.release-[0-9]+$")
"""The suffix of a release batch id, ``<origin>.release-<k>``."""


class BatchDateError(ValueError):
    """A batch id ends with ``YYYY-MM-DD`` digits that are no calendar date (``2026-02-30``).

    Attributes:
        text: the date part as written.
        why: what is wrong with it, in the words of :class:`datetime.date`
            (``"day is out of range for month"``).
    """

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why
        super().__init__(f"{text} is not a valid date: {why}")


def is_release_id(batch_id: str) -> bool:
    """Whether ``batch_id`` names a release of held-back listings (``<origin>.release-<k>``)."""
    return bool(_RELEASE.search(batch_id))


def date_text(batch_id: str) -> str | None:
    """The ``YYYY-MM-DD`` at the end of a batch id (before any ``.release-<k>``), unchecked, or
    None when there is none."""
    match = _DATED.search(batch_id)
    return match["date"] if match else None


def parse_batch_date(batch_id: str) -> date | None:
    """The date a batch id carries: ``fashion-2026-11-02`` and ``fashion-2026-11-02.release-1``
    -> 2026-11-02; None when the id ends with no ``YYYY-MM-DD``.

    Raises:
        BatchDateError: when the id ends with ``YYYY-MM-DD`` digits that are no date.
    """
    text = date_text(batch_id)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise BatchDateError(text, str(exc)) from None


def batch_date(batch_id: str) -> date | None:
    """:func:`parse_batch_date`, with None for an invalid date too (for ordering, not checking)."""
    try:
        return parse_batch_date(batch_id)
    except BatchDateError:
        return None


def date_key(batch_id: object) -> str:
    """The first key of :func:`version_order`: the batch id's date as ``YYYY-MM-DD``, ``""`` for
    an id without a valid date (ordered before every dated one). Stored per row by the store's
    index (:mod:`common.store`), so that ordering versions never maps every row's id again."""
    when = batch_date(str(batch_id))
    return when.isoformat() if when else ""


def version_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` sorted oldest version first (the last row of a listing id is its
    latest version).

    Versions are ordered by the date of their batch (:func:`batch_date` of ``batch_id``;
    undated ids, which ingest refuses and only tests or a hand-run validation give, come before
    every dated one), then by ``ingested_at`` (the time the platform staged the batch), then by
    ``batch_id``: a partner's clock never decides which version wins.

    Args:
        frame: rows with ``batch_id`` and ``ingested_at`` columns.

    Returns:
        The same rows, reordered (stable sort; index kept).
    """
    dates = {b: date_key(b) for b in frame["batch_id"].unique()}  # a date per batch, not per row
    key = pd.DataFrame({"d": frame["batch_id"].map(dates), "t": frame["ingested_at"],
                        "b": frame["batch_id"]}, index=frame.index)
    return frame.loc[key.sort_values(["d", "t", "b"], kind="stable").index]
