"""Publishes a source catalog into a feed as weekly batches (what a marketplace would drop).

The cut is deterministic. ``order="hash"`` (the default): listing ``i`` goes to week
``sha1(id) mod weeks``, so every week is a sample of the whole catalog. ``order="time"``: the
listings are sorted by the catalog's ordering column (``order_by`` of the adapter, e.g. the
fashion catalog's ``year``; ties by listing id) and cut into ``weeks`` consecutive, near-equal
runs, so the weeks meet the catalog as it changed (new categories, a shifting mix). The same
source and arguments always give the same batches. Batch ids are ``<catalog>-<YYYY-MM-DD>``,
the date of the week's Monday; ingest takes the batches dated on or before a run's
data interval end.

CLI::

    python -m ingestion.feed publish --source ../shared/datasets/fashion-product-images \\
        --weeks 2 [--feed DIR] [--start 2026-11-02] [--limit 400] [--catalog catalogs/fashion.yaml] \\
        [--format csv|jsonl|parquet] [--order hash|time]
    python -m ingestion.feed publish --source ../shared/datasets/flipkart-1050 \\
        --catalog catalogs/flipkart.yaml --weeks 2

The catalog's taxonomy is declared into ``<feed>/<taxonomy.file>`` as the catalog says: the
category paths of the whole source catalog (``source: data``) or Google's product taxonomy
(``source: google``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from common.catalog import PATH_SEP, Catalog, google_taxonomy_paths, load_catalog
from common.cli import INPUT_ERROR_STATUS, InputError
from common.params import load_params
from common.state import State

DEFAULT_START = date(2026, 11, 2)


def _bucket(listing_id: str, modulo: int) -> int:
    return int(hashlib.sha1(listing_id.encode()).hexdigest(), 16) % modulo


def _order(listing_id: str) -> str:
    return hashlib.sha1(b"order:" + listing_id.encode()).hexdigest()


FORMATS = ("csv", "jsonl", "parquet")
"""Listings file formats publish can write (validation reads all three)."""

ORDERS = ("hash", "time")
"""How publish cuts a catalog into weeks: a hash sample per week, or the catalog's time order."""


def _natural(values: pd.Series) -> pd.Series:
    """Sort key of a text column: numbers by value when every non-blank cell is one (so that
    ids "9" < "10"), else the text; blanks last."""
    numbers = pd.to_numeric(values.where(values.str.strip() != ""), errors="coerce")
    if numbers.notna().sum() == (values.str.strip() != "").sum():
        return numbers.fillna(float("inf"))
    return values.where(values.str.strip() != "", "\uffff")


def time_order(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """The listings sorted by the catalog's ordering column, ties by listing id (both compared
    as numbers when they are numbers).

    Raises:
        ValueError: when the catalog declares no ``order_by`` column or the source lacks it.
    """
    column, id_col = catalog.order_by, catalog.columns.listing_id
    if not column:
        raise ValueError(f"catalog {catalog.name!r} declares no ordering column (order_by): "
                         "it cannot be published in time order")
    if column not in frame.columns:
        raise ValueError(f"the source has no column {column!r} (order_by of catalog {catalog.name!r})")
    keys = pd.DataFrame({"t": _natural(frame[column].astype(str)), "i": _natural(frame[id_col].astype(str))},
                        index=frame.index)
    return frame.loc[keys.sort_values(["t", "i"], kind="stable").index]


def catalog_taxonomy(frame: pd.DataFrame, catalog: Catalog) -> list[str]:
    """The declared taxonomy of a catalog, as sorted ``" > "``-joined category paths.

    ``taxonomy.source: data``: the paths present in ``frame`` (the whole source catalog), built
    exactly as validation builds a listing's path (:meth:`Catalog.category_levels`, so a parsed
    tree is truncated to ``max_depth``). ``taxonomy.source: google``: every path of Google's
    product taxonomy file of at most ``catalog.depth`` levels.
    """
    if catalog.taxonomy.source == "google":
        return google_taxonomy_paths(catalog.taxonomy.google_file, catalog.depth)
    cells = frame[catalog.category_columns].itertuples(index=False)
    paths = set()
    for row in cells:
        values = [None if v is None or pd.isna(v) or not str(v).strip() else str(v) for v in row]
        levels = catalog.category_levels(values)
        if levels:
            paths.add(PATH_SEP.join(levels))
    return sorted(paths)


def _write_listings(rows: pd.DataFrame, path: Path, fmt: str) -> None:
    if fmt == "csv":
        # RFC 4180 quoting and CRLF line ends: embedded newlines, bare CRs and quotes survive
        rows.to_csv(path, index=False, lineterminator="\r\n")
    elif fmt == "jsonl":
        rows.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        rows.to_parquet(path, index=False)


def publish(
    source: Path,
    feed: Path,
    weeks: int,
    catalog: Catalog,
    start: date = DEFAULT_START,
    limit: int | None = None,
    fmt: str = "csv",
    order: str = "hash",
) -> list[str]:
    """Cuts a source catalog into ``weeks`` weekly batches in a local feed folder.

    Args:
        source: folder with the catalog's listings file and ``images/``.
        feed: the feed folder to write (created).
        weeks: number of weekly batches, >= 1.
        catalog: the catalog adapter (listings file name, id column, image key template).
        start: date of the first batch (its Monday).
        limit: publish only this many listings (a deterministic sample), e.g. for tests.
        fmt: listings file format, one of :data:`FORMATS`; the file is named
            ``<stem of catalog.listings_file>.<fmt>``.
        order: ``"hash"`` (each week a hash sample of the catalog) or ``"time"`` (consecutive
            runs of the catalog's time order, :func:`time_order`).

    Returns:
        The batch ids written, in date order.

    Raises:
        FileNotFoundError: when the source has no listings file.
        ValueError: when ``weeks`` < 1, ``fmt`` or ``order`` is unknown, or ``order="time"``
            for a catalog without an ordering column.
    """
    if weeks < 1:
        raise ValueError("weeks must be >= 1")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    listings_name = f"{Path(catalog.listings_file).stem}.{fmt}"
    frame = pd.read_csv(source / catalog.listings_file, dtype=str, keep_default_na=False,
                        on_bad_lines="skip")
    id_col = catalog.columns.listing_id
    feed.mkdir(parents=True, exist_ok=True)
    taxonomy = catalog_taxonomy(frame, catalog)  # declared from the whole catalog, not the sample
    (feed / catalog.taxonomy.file).write_text(json.dumps(taxonomy, indent=0), encoding="utf-8")
    if limit:
        frame = frame.iloc[frame[id_col].map(_order).argsort()].head(limit)
    if order == "time":
        frame = time_order(frame, catalog)
        week_of = pd.Series(np.arange(len(frame)) * weeks // max(len(frame), 1), index=frame.index)
    else:
        week_of = frame[id_col].map(lambda i: _bucket(i, weeks))
    batch_ids = []
    for week in range(weeks):
        batch_id = f"{catalog.name}-{(start + timedelta(weeks=week)).isoformat()}"
        rows = frame[week_of == week]
        if order == "hash":
            rows = rows.sort_values(id_col, key=lambda s: s.map(_order))
        tmp = feed / f".{batch_id}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        _write_listings(rows, tmp / listings_name, fmt)
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
    pub.add_argument("--format", choices=FORMATS, default="csv", help="listings file format")
    pub.add_argument("--order", choices=ORDERS, default="hash",
                     help="hash: each week a sample of the catalog; time: the catalog's own time order")
    pub.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog or load_params(args.params).catalog)
    except InputError as exc:  # one line naming the file and the key, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    feed = args.feed or Path(State.from_env().feed_url)
    ids = publish(args.source, feed, args.weeks, catalog, args.start, args.limit, args.format, args.order)
    print(json.dumps({"feed": str(feed), "batches": ids}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
