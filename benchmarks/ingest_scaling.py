"""Does adding a batch cost the same whatever the size of the store?

Builds two state folders, one whose listings store holds ~1k listings and one with ~10k (real
listings: fashion, topped up with Flipkart ones, both validated into the store by the real
step), versions each once, then times the same new 1,000-listing fashion batch through
ingest (feed -> staging), validate (GX checkpoint, cross-store duplicate and drift checks) and
version (dvc add + git commit + dvc push). The cross-store checks read the store's index columns,
never its images, so the ratio of the two timings should stay near 1 (target <= 1.3).

Usage::

    .venv/bin/python benchmarks/ingest_scaling.py [--sizes 1000 10000] [--batch 1000] [--no-version]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from common.catalog import load_catalog  # noqa: E402
from common.params import load_params  # noqa: E402
from common.state import State  # noqa: E402
from common.store import read_store  # noqa: E402
from ingestion.feed import catalog_taxonomy  # noqa: E402
from ingestion.ingest import ingest_new_batches  # noqa: E402
from validation.staged import validate_staged_batches  # noqa: E402
from validation.validate import validate_batch  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FASHION, FLIPKART = load_catalog("catalogs/fashion.yaml"), load_catalog("catalogs/flipkart.yaml")


def _write_batch(folder: Path, rows: pd.DataFrame, source: Path, catalog) -> Path:
    (folder / "images").mkdir(parents=True)
    rows.to_csv(folder / catalog.listings_file, index=False)
    for row in rows.to_dict("records"):
        src = source / catalog.image_key.format(**row)
        if src.is_file():
            shutil.copyfile(src, folder / catalog.image_key.format(**row))
    return folder


def _fill_store(state: State, size: int, fashion: pd.DataFrame, flipkart: pd.DataFrame,
                work: Path) -> int:
    params = load_params().validate_
    parts = [(FASHION, DATASETS / "fashion-product-images", fashion.iloc[:size])]
    if size > len(fashion):
        parts.append((FLIPKART, DATASETS / "flipkart-1050", flipkart.iloc[:size - len(fashion)]))
    for i, (catalog, source, rows) in enumerate(parts):
        for j in range(0, len(rows), 2500):  # store partitions of <= 2,500 listings
            batch_id = f"{catalog.name}-seed{i}{j:06d}-2026-10-01"
            chunk = rows.iloc[j:j + 2500]
            folder = _write_batch(work / batch_id, chunk, source, catalog)
            taxonomy = frozenset(catalog_taxonomy(chunk, catalog))
            validate_batch(folder, batch_id, "2026-10-01T00:00:00+00:00", catalog, taxonomy,
                           params, state.listings_store, state.quarantine, state.gx_dir)
            shutil.rmtree(folder)
    return len(read_store(state.listings_store, ["listing_id"]))


def run(size: int, batch_rows: pd.DataFrame, fashion: pd.DataFrame, flipkart: pd.DataFrame,
        root: Path, version: bool, taxonomy: list[str]) -> dict:
    from ingestion.versioning import version_data

    state = State(root / f"store{size}").ensure()
    params = load_params()
    stored = _fill_store(state, size, fashion, flipkart, root / "work")
    if version:
        version_data(state, params, "seed")  # first version of the store, not timed
    feed = root / f"feed{size}"
    _write_batch(feed / "fashion-2026-11-02", batch_rows, DATASETS / "fashion-product-images", FASHION)
    (feed / "taxonomy.json").write_text(json.dumps(taxonomy))

    timings = {}
    start = time.perf_counter()
    ingest_new_batches(state, params, None, str(feed))
    timings["ingest_s"] = time.perf_counter() - start
    start = time.perf_counter()
    outcome = validate_staged_batches(state, params)
    timings["validate_s"] = time.perf_counter() - start
    if version:
        start = time.perf_counter()
        version_data(state, params, "fashion-2026-11-02")
        timings["version_s"] = time.perf_counter() - start
    timings = {k: round(v, 2) for k, v in timings.items()}
    report = outcome["reports"]["fashion-2026-11-02"]
    return {"store_listings_before": stored, **timings,
            "total_s": round(sum(timings.values()), 2),
            "batch_status": report["status"], "batch_accepted": report["accepted_rows"],
            "batch_reasons": report["reasons"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--no-version", dest="version", action="store_false")
    args = parser.parse_args(argv)
    fashion = pd.read_csv(DATASETS / "fashion-product-images" / "styles.csv", dtype=str,
                          keep_default_na=False)
    flipkart = pd.read_csv(DATASETS / "flipkart-1050" / FLIPKART.listings_file, dtype=str,
                           keep_default_na=False)
    taxonomy = catalog_taxonomy(fashion, FASHION)  # declared from the whole catalog
    fashion = fashion.sample(frac=1.0, random_state=0).reset_index(drop=True)
    batch_rows, fashion = fashion.iloc[:args.batch], fashion.iloc[args.batch:]
    results = {}
    with tempfile.TemporaryDirectory(prefix="lcp-scaling-") as tmp:
        for size in args.sizes:
            results[size] = run(size, batch_rows, fashion, flipkart, Path(tmp), args.version,
                                taxonomy)
            print(json.dumps({size: results[size]}), flush=True)
    small, large = results[min(args.sizes)], results[max(args.sizes)]
    print(json.dumps({"ratio_total": round(large["total_s"] / small["total_s"], 3),
                      "ratio_validate": round(large["validate_s"] / small["validate_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
