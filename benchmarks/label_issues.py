"""Benchmark: how many deliberately wrong labels confident learning finds on a real fresh batch.

The platform's own pipeline (the step CLIs, in a temporary state folder) trains a champion on
the first weekly batch of the fashion catalog; the second batch is ingested and validated but
never trained on. Then, for each seed, 5 % of that fresh batch's accepted listings get a wrong
label: a sibling leaf (same parent category path), or another leaf of the same top-level
category when the leaf has no sibling. :func:`monitoring.label_issues.find_label_issues` runs on
the champion's out-of-sample probabilities, and the flags are compared with the flips:

* recall = flips flagged / flips;
* precision = flips flagged / flags (a flag on an unflipped listing counts against it, although
  some of those are real label errors of the catalog: they are printed too).

The model's probabilities do not depend on the given labels, so one prediction serves all seeds.

Command::

    .venv/bin/python benchmarks/label_issues.py [--data ../shared/datasets/fashion-product-images]
        [--epochs N] [--seeds 5] [--share 0.05] [--out label_issues_benchmark.csv]
    # or on make demo's state: v1 (trained on week 1) on week 2's fresh listings, no training
    .venv/bin/python benchmarks/label_issues.py --state .state --version 1 --batch fashion-2026-11-09
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def flip_to_siblings(labels: list[str], share: float, seed: int, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Gives ``share`` of the listings another leaf: a sibling under the same parent path, else
    another leaf of the same top level, else any other class.

    Args:
        labels: N category paths (``A > B > C``).
        share: the fraction to flip, in (0, 1).
        seed: the draw's seed.
        classes: the leaf paths to choose from (the model's classes: a flip to a class the
            model does not know could not be judged).

    Returns:
        ``(noisy_labels, flipped_indices)``.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    flipped = np.sort(rng.choice(n, size=max(1, round(share * n)), replace=False))
    noisy = list(labels)
    for i in flipped:
        path = labels[i]
        parent, top = path.rsplit(" > ", 1)[0], path.split(" > ")[0]
        for pool in ([c for c in classes if c != path and c.rsplit(" > ", 1)[0] == parent],
                     [c for c in classes if c != path and c.split(" > ")[0] == top],
                     [c for c in classes if c != path]):
            if pool:
                noisy[i] = pool[rng.integers(len(pool))]
                break
    return noisy, flipped


def _step(env: dict, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def champion_on_fresh_batch(data: Path, root: Path, epochs: int | None) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """Trains on week 1 through the pipeline's CLIs and predicts week 2's accepted listings.

    Returns:
        ``(fresh listings, probabilities (N, C), classes, timings in seconds)``.
    """
    import yaml

    from common.state import State
    from common.store import image_path, read_store
    from training.inference import load_checkpoint, predict_paths

    state = State(root / "state").ensure()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if epochs is not None:
        params["train"]["epochs"] = epochs
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "LCP_STATE_DIR": str(state.root), "LCP_PARAMS": str(params_file),
           "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}
    env.pop("LCP_FEED_URL", None)
    timings = {}
    t0 = time.perf_counter()
    _step(env, "ingestion.feed", "publish", "--source", str(data), "--weeks", "2", "--start", "2026-11-02",
          "--params", str(params_file))
    _step(env, "ingestion.ingest", "--cutoff", "2026-11-08T00:00:00+00:00", "--params", str(params_file))
    _step(env, "validation.staged")
    _step(env, "ingestion.versioning", "version", "--params", str(params_file))
    timings["week1_data_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _step(env, "ingestion.versioning", "repro", "--params", str(params_file))
    timings["train_s"] = time.perf_counter() - t0
    # the fresh batch: ingested and validated into the store, never trained on
    _step(env, "ingestion.ingest", "--cutoff", "2026-11-15T00:00:00+00:00", "--params", str(params_file))
    _step(env, "validation.staged")
    store = read_store(state.listings_store)
    fresh = store[store["batch_id"] == store["batch_id"].max()].reset_index(drop=True)
    t0 = time.perf_counter()
    loaded = load_checkpoint(state.workspace / "models" / "model.pt")
    _, probs = predict_paths(loaded, fresh, [str(image_path(state.listings_store, k)) for k in fresh["image_key"]])
    timings["predict_s"] = time.perf_counter() - t0
    return fresh, probs, loaded.labels, timings


def version_on_batch(state_dir: Path, version: str, batch_id: str) -> tuple[pd.DataFrame, np.ndarray, list[str], dict]:
    """A registered version of an existing state (e.g. ``make demo``'s v1, trained on week 1)
    predicting a later batch's listings it never saw (not in an earlier batch, not golden).

    Returns:
        ``(fresh listings, probabilities (N, C), classes, timings in seconds)``.
    """
    import mlflow

    from common.params import load_params
    from common.state import State
    from common.store import image_path, read_store
    from training.inference import load_checkpoint, predict_paths

    state = State(state_dir)
    mlflow.set_tracking_uri(state.tracking_uri)
    name = load_params(state.workspace / "params.yaml").registry.model_name
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    store = read_store(state.listings_store)
    earlier = set(read_store(state.listings_store, exclude_batches=[batch_id])["listing_id"])
    golden = set(pd.read_parquet(state.golden_dir / "golden.parquet")["listing_id"])
    fresh = store[(store["batch_id"] == batch_id) & ~store["listing_id"].isin(earlier | golden)]
    fresh = fresh.reset_index(drop=True)
    t0 = time.perf_counter()
    loaded = load_checkpoint(next(local.rglob("model.pt")))
    _, probs = predict_paths(loaded, fresh, [str(image_path(state.listings_store, k)) for k in fresh["image_key"]])
    return fresh, probs, loaded.labels, {"predict_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    from monitoring.label_issues import find_label_issues

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "fashion-product-images")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml's)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=None, help="CSV of one row per seed")
    parser.add_argument("--state", type=Path, default=None,
                        help="reuse an existing state (e.g. make demo's) instead of training: with --version, --batch")
    parser.add_argument("--version", default="1")
    parser.add_argument("--batch", default=None, help="the later batch the version never saw")
    args = parser.parse_args(argv)
    if args.state:
        fresh, probs, classes, timings = version_on_batch(args.state, args.version, args.batch)
    else:
        with tempfile.TemporaryDirectory(prefix="lcp-label-issues-") as tmp:
            fresh, probs, classes, timings = champion_on_fresh_batch(args.data, Path(tmp), args.epochs)
    truth = fresh["category_path"].astype(str).tolist()
    known = [t in set(classes) for t in truth]
    ids, titles = fresh["listing_id"].astype(str).tolist(), fresh["title"].astype(str).tolist()
    clean = find_label_issues(ids, titles, truth, probs, classes)
    accuracy = float(np.mean([classes[int(p)] == t for p, t in zip(probs.argmax(axis=1), truth, strict=True)]))
    print(f"fresh batch: {len(fresh)} listings ({sum(known)} of known categories), champion leaf accuracy "
          f"{accuracy:.4f}; flags with no flip (candidate real label errors): {len(clean.issues)}")
    rows = []
    for seed in range(args.seeds):
        noisy, flipped = flip_to_siblings(truth, args.share, seed, classes)
        found = find_label_issues(ids, titles, noisy, probs, classes)
        flagged = {ids.index(i) for i in found.issues["listing_id"]}
        hits = len(flagged & set(flipped.tolist()))
        rows.append({"seed": seed, "flips": len(flipped), "flags": len(flagged), "flips_flagged": hits,
                     "recall": hits / len(flipped), "precision": hits / len(flagged) if flagged else 0.0})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}))
    table = pd.DataFrame(rows)
    summary = {"listings": len(fresh), "share": args.share, "seeds": args.seeds, "champion_accuracy": round(accuracy, 4),
               "recall_mean": round(table["recall"].mean(), 4), "recall_min": round(table["recall"].min(), 4),
               "precision_mean": round(table["precision"].mean(), 4),
               "precision_min": round(table["precision"].min(), 4),
               "flags_without_flips": len(clean.issues), **{k: round(v, 1) for k, v in timings.items()}}
    print(json.dumps(summary))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
