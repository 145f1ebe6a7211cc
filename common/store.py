"""The listings store: accepted canonical listings, partitioned by batch, images content-addressed.

Layout (everything below ``data/listings/`` is tracked by DVC as one directory)::

    data/listings/batches/<batch_id>.parquet     accepted listings of one batch (CANONICAL_COLUMNS)
    data/listings/images/<sha[:2]>/<sha256><ext> image bytes, named by their SHA-256

Writing a batch touches one parquet file and the new images only, so the cost of adding a batch
grows with the batch, not with the store. A listing id that arrives again in a later batch is an
update: :func:`read_store` keeps the row of the latest ``ingested_at`` (ties: latest batch id).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.catalog import CANONICAL_COLUMNS


def batch_file(store: Path, batch_id: str) -> Path:
    """Path of one batch's parquet partition."""
    return Path(store) / "batches" / f"{batch_id}.parquet"


def image_path(store: Path, image_key: str) -> Path:
    """Absolute path of a stored image from its ``image_key`` (relative to the store)."""
    return Path(store) / image_key


def read_store(store: Path) -> pd.DataFrame:
    """Reads all accepted listings, the latest version of each listing id.

    Args:
        store: the ``data/listings`` folder.

    Returns:
        One row per listing id with ``CANONICAL_COLUMNS``, sorted by ``listing_id``;
        an empty frame with those columns when the store is empty.
    """
    files = sorted((Path(store) / "batches").glob("*.parquet"))
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in CANONICAL_COLUMNS})
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    frame = frame.sort_values(["ingested_at", "batch_id"], kind="stable")
    frame = frame.drop_duplicates("listing_id", keep="last")
    return frame.sort_values("listing_id", kind="stable").reset_index(drop=True)[list(CANONICAL_COLUMNS)]
