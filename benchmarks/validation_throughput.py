"""Validation throughput on the full fashion catalog, image checks included.

The source folder already has a batch's layout (``styles.csv`` + ``images/``), so it is validated
in place as one batch (read only) into a temporary store, quarantine and GX project. Prints the
time of the image checks alone (header, full decode, blank check, SHA-256 of every image) and of
the whole step (read, adapt, images, GX checkpoint with Data Docs, store writes), in listings/s.

Usage::

    .venv/bin/python benchmarks/validation_throughput.py [--source ../shared/datasets/fashion-product-images]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.catalog import load_catalog  # noqa: E402
from common.params import load_params  # noqa: E402
from ingestion.feed import catalog_taxonomy  # noqa: E402
from validation.adapt import find_listings_file, read_listings_file, to_canonical  # noqa: E402
from validation.validate import check_images, validate_batch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/datasets/fashion-product-images")
    parser.add_argument("--catalog", default="catalogs/fashion.yaml")
    args = parser.parse_args(argv)
    catalog, params = load_catalog(args.catalog), load_params().validate_

    raw = read_listings_file(find_listings_file(args.source, catalog.listings_file))
    canon = to_canonical(raw, catalog, "bench", "2026-11-02T00:00:00+00:00")
    taxonomy = frozenset(catalog_taxonomy(raw.fillna(""), catalog))
    start = time.perf_counter()
    checks = check_images(args.source, canon["image_key"].tolist(), params)
    images_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="lcp-bench-") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        report = validate_batch(args.source, "bench", "2026-11-02T00:00:00+00:00", catalog,
                                taxonomy, params, tmp / "store", tmp / "quarantine", tmp / "gx")
        total_s = time.perf_counter() - start
    n = len(canon)
    print(json.dumps({
        "listings": n,
        "image_checks_s": round(images_s, 2),
        "image_checks_listings_per_s": round(n / images_s, 1),
        "image_errors": sum(1 for c in checks if c[0]),
        "validate_batch_s": round(total_s, 2),
        "validate_batch_listings_per_s": round(n / total_s, 1),
        "status": report.status, "accepted_rows": report.accepted_rows,
        "reasons": report.reasons,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
