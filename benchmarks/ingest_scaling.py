"""Does adding a batch cost the same whatever the size of the store?

Builds two state folders, one whose listings store holds ~1k listings and one with ~10k (real
listings: fashion, topped up with Flipkart ones, both validated into the store by the real
step), versions each once (the first version adds the store whole; not timed), then times the
same new 1,000-listing fashion batch through ingest (feed -> staging), validate (GX checkpoint,
cross-store duplicate and drift checks) and version (granular ``dvc add`` of the new partition,
git commit, ``dvc push`` of that partition). The cross-store checks read the store's index
columns, never its images, and versioning hashes and uploads only the new partition, so the
ratio of the two timings should stay near 1 (target <= 1.3).

The machine is shared, so each size is measured ``--repeats`` times (default 5) from the same
starting point: the seeded state folder is snapshotted once and restored before every
repetition; the sizes are measured in turn (1k, 10k, 1k, 10k, ...) so that a slow spell hits
both; the median of each phase is reported, in wall-clock seconds and in CPU seconds (this
process and its DVC/git subprocesses). ``ingest`` does not touch the store at all: its ratio
shows how much of a difference is the machine's.

Usage::

    .venv/bin/python benchmarks/ingest_scaling.py [--sizes 1000 10000] [--batch 1000] [--repeats 5] [--no-version]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
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


@contextmanager
def _timed(into: dict, phase: str):
    """Adds ``<phase>_s`` (wall) and ``<phase>_cpu_s`` (this process + finished children) to ``into``."""
    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    wall, used = time.perf_counter(), cpu()
    yield
    into[f"{phase}_s"] = time.perf_counter() - wall
    into[f"{phase}_cpu_s"] = cpu() - used


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def seed(size: int, batch_rows: pd.DataFrame, fashion: pd.DataFrame, flipkart: pd.DataFrame,
         root: Path, version: bool, taxonomy: list[str]) -> dict:
    """Builds the state of one store size, versions it once, and snapshots it.

    Returns:
        ``{"size", "state" (the live state), "snapshot" (its copy), "feed", "stored" (listings
        in the store), "runs": []}``.
    """
    from ingestion.versioning import version_data

    state = State(root / f"store{size}").ensure()
    stored = _fill_store(state, size, fashion, flipkart, root / "work")
    if version:
        version_data(state, load_params(), "seed")  # first version of the store, not timed
    feed = root / f"feed{size}"
    _write_batch(feed / "fashion-2026-11-02", batch_rows, DATASETS / "fashion-product-images", FASHION)
    (feed / "taxonomy.json").write_text(json.dumps(taxonomy))
    snapshot = root / f"snapshot{size}"
    shutil.copytree(state.root, snapshot, symlinks=True)
    return {"size": size, "state": state, "snapshot": snapshot, "feed": feed, "stored": stored,
            "runs": []}


def measure(seeded: dict, version: bool) -> None:
    """Restores the seeded state and times the new batch once; appends to ``seeded["runs"]``."""
    from ingestion.versioning import version_data

    state, params = seeded["state"], load_params()
    shutil.rmtree(state.root)
    shutil.copytree(seeded["snapshot"], state.root, symlinks=True)  # the same starting point
    timings: dict = {}
    with _timed(timings, "ingest"):
        ingest_new_batches(state, params, None, str(seeded["feed"]))
    with _timed(timings, "validate"):
        outcome = validate_staged_batches(state, params)
    versioned = None
    if version:
        with _timed(timings, "version"):
            versioned = version_data(state, params, "fashion-2026-11-02")
    phases = ["ingest", "validate", *(["version"] if version else [])]
    for unit in ("s", "cpu_s"):
        timings[f"total_{unit}"] = sum(timings[f"{p}_{unit}"] for p in phases)
    seeded["runs"].append({k: round(v, 2) for k, v in timings.items()})
    report = outcome.reports["fashion-2026-11-02"]
    seeded["batch"] = {"batch_status": report.status, "batch_accepted": report.accepted_rows,
                       "batch_reasons": report.reasons,
                       "versioned": versioned and {"added": list(versioned.added),
                                                   "pushed": list(versioned.pushed)}}


def summary(seeded: dict, version: bool) -> dict:
    """Median of each phase over the runs, plus the runs and the batch's outcome."""
    phases = ["ingest", "validate", *(["version"] if version else []), "total"]
    keys = [f"{p}_{unit}" for unit in ("s", "cpu_s") for p in phases]
    return {"store_listings_before": seeded["stored"],
            **{k: _median(seeded["runs"], k) for k in keys}, "runs": seeded["runs"],
            **seeded["batch"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per size (median)")
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
        seeded = [seed(size, batch_rows, fashion, flipkart, Path(tmp), args.version, taxonomy)
                  for size in args.sizes]
        # interleaved (1k, 10k, 1k, 10k, ...): a slow spell on the shared machine hits both sizes
        for _ in range(args.repeats):
            for one in seeded:
                measure(one, args.version)
        for one in seeded:
            results[one["size"]] = summary(one, args.version)
            print(json.dumps({one["size"]: results[one["size"]]}), flush=True)
    small, large = results[min(args.sizes)], results[max(args.sizes)]
    phases = ["ingest", "validate", *(["version"] if args.version else []), "total"]
    print(json.dumps({f"ratio_{p}{unit}": round(large[f"{p}{unit}"] / max(small[f"{p}{unit}"], 1e-9), 3)
                      for unit in ("_s", "_cpu_s") for p in phases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
