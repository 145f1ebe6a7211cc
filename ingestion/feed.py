"""Publishes a source catalog into a feed as weekly batches (what a marketplace would drop).

The cut is deterministic: listing ``i`` goes to week ``sha1(id) mod weeks``, so the same
source and arguments always give the same batches. Batch ids are ``<catalog>-<YYYY-MM-DD>``,
the date of the week's Monday; ingest takes the batches dated on or before a run's
data interval end.

CLI::

    python -m ingestion.feed publish --source ../shared/datasets/fashion-product-images \\
        --weeks 2 [--feed DIR] [--start 2026-11-02] [--limit 400] [--catalog catalogs/fashion.yaml]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

from common.catalog import PATH_SEP, Catalog, load_catalog
from common.params import load_params
from common.state import State

DEFAULT_START = date(2026, 11, 2)


def _bucket(listing_id: str, modulo: int) -> int:
    return int(hashlib.sha1(listing_id.encode()).hexdigest(), 16) % modulo


def _order(listing_id: str) -> str:
    return hashlib.sha1(b"order:" + listing_id.encode()).hexdigest()


def catalog_taxonomy(frame: pd.DataFrame, catalog: Catalog) -> list[str]:
    """The category paths present in a source frame: the catalog's own declared taxonomy."""
    levels = frame[catalog.columns.category_path].dropna()
    return sorted({PATH_SEP.join(str(v).strip() for v in row) for row in levels.itertuples(index=False)})


def publish(
    source: Path,
    feed: Path,
    weeks: int,
    catalog: Catalog,
    start: date = DEFAULT_START,
    limit: int | None = None,
) -> list[str]:
    """Cuts a source catalog into ``weeks`` weekly batches in a local feed folder.

    Args:
        source: folder with the catalog's listings file and ``images/``.
        feed: the feed folder to write (created).
        weeks: number of weekly batches, >= 1.
        catalog: the catalog adapter (listings file name, id column, image key template).
        start: date of the first batch (its Monday).
        limit: publish only this many listings (a deterministic sample), e.g. for tests.

    Returns:
        The batch ids written, in date order.

    Raises:
        FileNotFoundError: when the source has no listings file.
        ValueError: when ``weeks`` < 1.
    """
    if weeks < 1:
        raise ValueError("weeks must be >= 1")
    frame = pd.read_csv(source / catalog.listings_file, dtype=str, keep_default_na=False,
                        on_bad_lines="skip")
    id_col = catalog.columns.listing_id
    feed.mkdir(parents=True, exist_ok=True)
    taxonomy = catalog_taxonomy(frame, catalog)  # declared from the whole catalog, not the sample
    (feed / catalog.taxonomy).write_text(json.dumps(taxonomy, indent=0), encoding="utf-8")
    if limit:
        frame = frame.iloc[frame[id_col].map(_order).argsort()].head(limit)
    week_of = frame[id_col].map(lambda i: _bucket(i, weeks))
    batch_ids = []
    for week in range(weeks):
        batch_id = f"{catalog.name}-{(start + timedelta(weeks=week)).isoformat()}"
        rows = frame[week_of == week].sort_values(id_col, key=lambda s: s.map(_order))
        tmp = feed / f".{batch_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        rows.to_csv(tmp / catalog.listings_file, index=False)
        for row in rows.to_dict("records"):
            rel = catalog.image_key.format(**row)
            src = source / rel
            if src.is_file():
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        shutil.rmtree(feed / batch_id, ignore_errors=True)
        tmp.rename(feed / batch_id)
        batch_ids.append(batch_id)
    return batch_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestion.feed", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="cut a source catalog into weekly batches in a feed folder")
    pub.add_argument("--source", type=Path, required=True)
    pub.add_argument("--weeks", type=int, default=2)
    pub.add_argument("--feed", type=Path, default=None, help="feed folder (default: <state>/feed)")
    pub.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START)
    pub.add_argument("--limit", type=int, default=None)
    pub.add_argument("--catalog", default=None, help="catalog adapter (default: params.yaml's)")
    pub.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog or load_params(args.params).catalog)
    feed = args.feed or Path(State.from_env().feed_url)
    ids = publish(args.source, feed, args.weeks, catalog, args.start, args.limit)
    print(json.dumps({"feed": str(feed), "batches": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
