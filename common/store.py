"""The listings store: accepted canonical listings, partitioned by batch, images content-addressed.

Layout (everything below ``data/listings/`` is tracked by DVC as one directory)::

    data/listings/batches/<batch_id>.parquet     accepted listings of one batch (CANONICAL_COLUMNS)
    data/listings/images/<sha[:2]>/<sha256><ext> image bytes, named by their SHA-256

Writing a batch touches one parquet file and the new images only, so the cost of adding a batch
grows with the batch, not with the store.

Updates: a listing id that arrives again in a later batch is an update, and the latest version
wins: :func:`read_store` keeps the row of the latest ``ingested_at`` (ties: the latest batch id,
in string order). The older row stays in its batch's partition (the raw history is never
rewritten); it is only hidden from readers.

The store's index: validation's cross-store checks (duplicate images, label and price drift) need
``listing_id, image_sha256, category_path, price, catalog`` of the latest versions only. They
read them with :func:`read_store` and ``columns=INDEX_COLUMNS``: a Parquet column projection of
each partition (a few bytes per listing), never an image file. Parquet partitions are the index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from common.catalog import CANONICAL_COLUMNS

INDEX_COLUMNS = ("listing_id", "image_sha256", "category_path", "price", "catalog", "batch_id",
                 "ingested_at")
"""Columns the cross-store checks read: enough for duplicates by content hash and drift."""


def batch_file(store: Path, batch_id: str) -> Path:
    """Path of one batch's parquet partition."""
    return Path(store) / "batches" / f"{batch_id}.parquet"


def image_path(store: Path, image_key: str) -> Path:
    """Absolute path of a stored image from its ``image_key`` (relative to the store)."""
    return Path(store) / image_key


def read_store(store: Path, columns: Sequence[str] | None = None,
               exclude_batches: Iterable[str] = ()) -> pd.DataFrame:
    """Reads the accepted listings, the latest version of each listing id.

    Args:
        store: the ``data/listings`` folder.
        columns: the columns to return (default ``CANONICAL_COLUMNS``); only these and the
            ones that decide the latest version (``listing_id, ingested_at, batch_id``) are read
            from the partitions (Parquet column projection).
        exclude_batches: batch ids whose partitions are ignored (e.g. the batch being
            re-validated, so it is not compared with itself).

    Returns:
        One row per listing id with ``columns``, sorted by ``listing_id``; an empty frame with
        those columns when the store is empty. ``price`` is float64, the rest ``str``/``None``.
    """
    columns = list(columns or CANONICAL_COLUMNS)
    skip = {f"{b}.parquet" for b in exclude_batches}
    files = sorted(f for f in (Path(store) / "batches").glob("*.parquet") if f.name not in skip)
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "price" else "object")
                             for c in columns})
    needed = list(dict.fromkeys([*columns, "listing_id", "ingested_at", "batch_id"]))
    frame = pd.concat([pq.read_table(f, columns=needed).to_pandas() for f in files],
                      ignore_index=True)
    frame = frame.sort_values(["ingested_at", "batch_id"], kind="stable")
    frame = frame.drop_duplicates("listing_id", keep="last")
    return frame.sort_values("listing_id", kind="stable").reset_index(drop=True)[columns]
