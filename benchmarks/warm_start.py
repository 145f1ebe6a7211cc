"""Benchmark: weekly retraining from scratch vs warm start from the previous week's model.

A few weeks of the real fashion catalog, in catalog time: listings ordered by the ``year``
column (ties by ``id``), the first ``--listings`` with an image and a year, cut into ``--weeks``
equal weekly batches, so later weeks bring categories earlier ones lacked. A fixed golden set
(every 7th listing of each category, by id: the same stratification as the tests' tiny store)
is held out of training for every week and arm; categories not trained on yet count as errors
for both arms alike.

Each week the store grows by one batch (``common.store.write_partition``), the prepare stage
runs once, and the train and evaluate stages run twice in the same workspace, through the
stages' own functions (no DVC, no MLflow: they would add the same cost to both arms):

* **scratch**: ``train.init: scratch``, ``train.epochs`` epochs;
* **warm**: ``train.init: champion`` from the warm arm's previous week's model (as if each week's
  model had been promoted), ``train.warm_epochs`` epochs; week 1 has no champion, so both arms
  share week 1's scratch model.

Early stopping is off (``train.early_stopping_patience: 0``) so that each arm runs exactly its
epochs and the seconds compare like for like; precision is pinned to fp32 (``train.amp: false``)
so that a rerun trains the same models (CPU, fixed threads). Printed per week and arm: training seconds (the epochs, ``total_seconds`` of the train log),
the train call's wall seconds, epochs run, and golden leaf accuracy and business-weighted score.

Command::

    nice -n 10 .venv/bin/python benchmarks/warm_start.py [--data ../shared/datasets/fashion-product-images]
        [--listings 600] [--weeks 3] [--image-size 32] [--epochs 8] [--warm-epochs 3] [--out warm_start.csv]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def weekly_batches(data: Path, listings: int, weeks: int) -> list[pd.DataFrame]:
    """The first ``listings`` catalog rows in time order (``year``, then ``id``), as ``weeks``
    canonical listing frames of (nearly) equal size, each with its ``batch_id``."""
    from common.catalog import PATH_SEP
    from common.store import CANONICAL_COLUMNS

    styles = pd.read_csv(data / "styles.csv", on_bad_lines="skip").dropna(
        subset=["year", "masterCategory", "subCategory", "articleType"])
    styles = styles[[(data / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    styles = styles.sort_values(["year", "id"], kind="stable").head(listings).reset_index(drop=True)
    frames = []
    for w in range(weeks):
        part = styles.iloc[w * len(styles) // weeks:(w + 1) * len(styles) // weeks]
        batch_id = (pd.Timestamp("2026-11-02") + pd.Timedelta(weeks=w)).date().isoformat()
        frames.append(pd.DataFrame([{
            "listing_id": str(r.id), "title": str(r.productDisplayName), "description": None, "brand": None,
            "price": None, "currency": "INR", "attributes": None,
            "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, r.articleType]),
            "image_key": str(data / "images" / f"{r.id}.jpg"), "image_sha256": "", "catalog": "fashion",
            "batch_id": batch_id, "ingested_at": f"{batch_id}T00:00:00+00:00",
        } for r in part.itertuples()])[list(CANONICAL_COLUMNS)])
    return frames


def golden_of(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Every 7th listing of each category (by id) over all weeks: fixed, never trained on."""
    every = pd.concat(frames, ignore_index=True).sort_values(["category_path", "listing_id"])
    return every[every.groupby("category_path").cumcount() % 7 == 0].reset_index(drop=True)


def add_week(ws: Path, frame: pd.DataFrame) -> None:
    """Writes one weekly batch into the workspace's listings store (its images copied in)."""
    from common.store import write_partition

    files = [Path(p) for p in frame["image_key"]]
    images = [(f, hashlib.sha256(f.read_bytes()).hexdigest(), ".jpg") for f in files]
    write_partition(ws / "data" / "listings", frame["batch_id"].iloc[0], frame, images)


def run_arm(ws: Path, params, init_from: Path | None, init_week: int) -> dict:
    """Trains (from ``init_from``'s checkpoint, week ``init_week``'s model, or from scratch) and
    evaluates on the golden set."""
    from training import evaluate, train

    init = ws / "models" / "init"
    shutil.rmtree(init, ignore_errors=True)
    init.mkdir(parents=True)
    if init_from is None:
        (init / "init.json").write_text(json.dumps({"init": "scratch", "reason": "benchmark: scratch arm"}))
    else:
        shutil.copyfile(init_from, init / "model.pt")
        (init / "init.json").write_text(json.dumps({"init": "champion", "version": f"week{init_week}"}))
    t0 = time.perf_counter()
    log = train.train(ws, params, resume=False)
    wall = time.perf_counter() - t0
    metrics = evaluate.evaluate(ws, params)
    return {"init": log["init"], "epochs": len(log["epochs"]), "train_s": log["total_seconds"],
            "train_wall_s": wall, "classes": log["num_classes"], "golden_accuracy": metrics["accuracy"],
            "golden_score": metrics["business_weighted_score"]}


def main(argv: list[str] | None = None) -> int:
    from common.params import Params, write_params
    from training.prepare import prepare

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "fashion-product-images")
    parser.add_argument("--listings", type=int, default=600)
    parser.add_argument("--weeks", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument("--warm-epochs", type=int, default=None, help="train.warm_epochs (default: params.yaml's)")
    parser.add_argument("--threads", type=int, default=2, help="train.num_threads")
    parser.add_argument("--out", type=Path, default=None, help="CSV, one row per week and arm")
    args = parser.parse_args(argv)

    base = Params()
    # fp32 pinned: amp auto picks bf16 by timing a step, which under load can go either way and
    # changes week 1's model, hence the whole warm chain
    train_over = {"num_threads": args.threads, "early_stopping_patience": 0, "amp": False}
    if args.epochs:
        train_over["epochs"] = args.epochs
    if args.warm_epochs:
        train_over["warm_epochs"] = args.warm_epochs
    base = base.with_overrides({"prepare": {"image_size": args.image_size, "golden_policy": "frozen"},
                                "train": train_over})
    scratch = base.with_overrides({"train": {"init": "scratch"}})
    warm = base.with_overrides({"train": {"init": "champion"}})
    frames = weekly_batches(args.data, args.listings, args.weeks)
    golden = golden_of(frames)
    print(f"{sum(map(len, frames))} listings in {args.weeks} weeks, golden {len(golden)} listings, "
          f"{golden['category_path'].nunique()} categories; epochs {base.train.epochs}, warm_epochs "
          f"{base.train.warm_epochs}, image {args.image_size}px, threads {args.threads}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lcp-warm-start-") as tmp:
        ws = Path(tmp) / "ws"
        (ws / "data" / "golden").mkdir(parents=True)
        golden.to_parquet(ws / "data" / "golden" / "golden.parquet", index=False)
        write_params(base, ws / "params.yaml")
        previous_warm: Path | None = None
        for week, frame in enumerate(frames, start=1):
            add_week(ws, frame)
            prepared = prepare(ws, base)
            new = frame["category_path"].nunique()
            for arm, params in (("scratch", scratch), ("warm", warm)):
                if arm == "warm" and previous_warm is None:  # no champion in week 1: the scratch model
                    result = {k: v for k, v in rows[-1].items() if k not in ("week", "arm", "train_rows")}
                    result["init"] = "scratch (no champion)"
                else:
                    result = run_arm(ws, params, previous_warm if arm == "warm" else None, week - 1)
                result = {"week": week, "arm": arm, "train_rows": prepared["train"], **result}
                rows.append(result)
                kept = Path(tmp) / f"{arm}-week{week}.pt"
                if arm == "warm" or previous_warm is None:
                    shutil.copyfile(ws / "models" / "model.pt", kept)
                if arm == "warm":
                    previous_warm = kept
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
                                 | {"week_categories": new}), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table[["week", "arm", "init", "train_rows", "classes", "epochs", "train_s", "train_wall_s",
                 "golden_accuracy", "golden_score"]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
