"""Benchmark: image encoder modes against each other and against the title baseline, on a golden set.

Reads a workspace after a run of the platform (``<state>/workspace`` after ``make demo``: the
listings store, ``data/prepared/{train,val,golden}.parquet`` and their images), and for each
``train.image_encoder`` asked (``scratch``: today's CNN from scratch; ``frozen``: heads on the
cached embeddings of the pretrained encoder, ``train.encoder``) and each seed, runs the real
stages in a scratch copy of the workspace: ``embed`` (frozen: the embedding cache is shared by
every run, so images are embedded once), ``train`` and ``evaluate``, with the workspace's own
``params.yaml`` (its catalog, branches, epochs...) and only ``train.image_encoder`` and
``train.seed`` changed. Then prints, per mode and seed, the golden set's leaf accuracy, macro-F1,
business-weighted score, train and embed seconds; and per mode, against the evaluate stage's
title baseline (TF-IDF + linear SVM on the titles, fitted on the same training split) and
against ``scratch``, the paired bootstrap 95% interval of the leaf-accuracy difference
(:func:`promotion.gate.paired_bootstrap_delta` with every listing of value 1 and 0/1 credits;
2,000 resamples), per seed. Figures: docs/measurements.md.

Commands::

    .venv/bin/python benchmarks/classifier_modes.py --workspace <state>/workspace \\
        --modes scratch frozen --seeds 1 2 3 --json out.json [--set train.epochs=20]
    .venv/bin/python benchmarks/classifier_modes.py --workspace <state>/workspace \
        --branches image --modes scratch frozen --seeds 1 2 3
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


def _workspace_copy(source: Path, target: Path, cache: Path) -> None:
    """A workspace holding links to the source's data (read only) and its own models/reports;
    ``data/embeddings`` is the shared cache."""
    (target / "data").mkdir(parents=True)
    for name in ("listings", "prepared", "golden", "label_issues"):
        if (source / "data" / name).exists():
            (target / "data" / name).symlink_to((source / "data" / name).resolve())
    for name in ("retired_categories.json",):
        if (source / "data" / name).exists():
            shutil.copy(source / "data" / name, target / "data" / name)
    (target / "data" / "embeddings").symlink_to(cache)
    (target / "models").mkdir()
    (target / "models" / "init").mkdir()
    (target / "models" / "init" / "init.json").write_text(json.dumps({"init": "scratch"}))


def parse_overrides(pairs: list[str]) -> dict:
    """``["train.epochs=20", "train.sampling=balanced"]`` -> ``{"train": {"epochs": 20, ...}}``
    (values read as YAML, so numbers and lists keep their types)."""
    import yaml

    overrides: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set wants group.key=value, got {pair!r}")
        group, name = key.split(".", 1)
        overrides.setdefault(group, {})[name] = yaml.safe_load(value)
    return overrides


def run_mode(source: Path, mode: str, seed: int, cache: Path, branches: str | None = None,
             overrides: dict | None = None) -> dict:
    """Embeds (frozen), trains and evaluates one configuration in a scratch workspace.

    Returns:
        ``{"mode", "seed", "metrics", "train_seconds", "embed", "predictions"}``; ``predictions``
        is ``{listing_id: predicted path}`` of the golden set.
    """
    import pandas as pd

    from common.params import load_params
    from training.embeddings import embed_store
    from training.evaluate import PREDICTIONS, evaluate
    from training.train import train

    overrides = overrides or {}
    params = load_params(source / "params.yaml").with_overrides(
        {**overrides, "train": {**overrides.get("train", {}), "image_encoder": mode, "seed": seed,
                                "init": "scratch", **({"branches": branches} if branches else {})}})
    with tempfile.TemporaryDirectory(prefix=f"modes-{mode}-{seed}-") as tmp:
        ws = Path(tmp)
        _workspace_copy(source, ws, cache)
        embed = embed_store(ws, params)
        t0 = time.perf_counter()
        train(ws, params, resume=False)
        train_seconds = time.perf_counter() - t0
        metrics = evaluate(ws, params)
        predicted = pd.read_csv(ws / PREDICTIONS, dtype=str, keep_default_na=False)
    return {"mode": mode, "seed": seed, "metrics": metrics, "train_seconds": round(train_seconds, 1),
            "embed": embed, "predictions": dict(zip(predicted["listing_id"], predicted["predicted_path"],
                                                    strict=True))}


def accuracy_interval(golden, a: dict[str, str], b: dict[str, str]) -> tuple[float, float, float]:
    """Leaf accuracy of ``a`` minus ``b`` on the golden set, and its paired bootstrap 95% interval."""
    import numpy as np

    from promotion.gate import paired_bootstrap_delta

    ids, true = golden["listing_id"].astype(str), golden["category_path"].astype(str)
    ca = np.array([a[i] == t for i, t in zip(ids, true, strict=True)], dtype=float)
    cb = np.array([b[i] == t for i, t in zip(ids, true, strict=True)], dtype=float)
    low, high = paired_bootstrap_delta(np.ones(len(ca)), ca, cb)
    return float(ca.mean() - cb.mean()), low, high


def main() -> int:
    import pandas as pd

    from common.params import load_params
    from training.evaluate import classification_metrics, title_baseline_predictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["scratch", "frozen"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--scratch-seeds", nargs="+", type=int, default=None,
                        help="seeds of mode scratch (default: --seeds); a CNN from scratch costs "
                             "minutes a seed where the heads on embeddings cost seconds")
    parser.add_argument("--branches", choices=["fused", "image", "text"], default=None,
                        help="train.branches for every run (default: the workspace's); image: the "
                             "image-only model (titles unread), as for a catalog without titles")
    parser.add_argument("--cache", type=Path, default=None,
                        help="embedding cache to share (default: the workspace's data/embeddings)")
    parser.add_argument("--set", nargs="*", default=[], metavar="GROUP.KEY=VALUE",
                        help="params overrides for every run, e.g. train.epochs=20 train.sampling=balanced")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args()
    source = args.workspace.resolve()
    cache = (args.cache or source / "data" / "embeddings").resolve()
    cache.mkdir(parents=True, exist_ok=True)
    params = load_params(source / "params.yaml")
    prepared = source / "data" / "prepared"
    golden = pd.read_parquet(prepared / "golden.parquet", columns=["listing_id", "title", "category_path"])
    train_split = pd.read_parquet(prepared / "train.parquet", columns=["title", "category_path"])
    name, predicted = title_baseline_predictions(train_split, golden)
    baseline = {"metrics": classification_metrics(golden["category_path"].astype(str).tolist(), predicted,
                                                  params.score),
                "predictions": dict(zip(golden["listing_id"].astype(str), predicted, strict=True))}
    print(f"golden listings: {len(golden)}; baseline {name}: accuracy "
          f"{baseline['metrics']['accuracy']:.4f}, macro-F1 {baseline['metrics']['macro_f1']:.4f}")
    runs = []
    for mode in args.modes:
        for seed in (args.scratch_seeds or args.seeds) if mode == "scratch" else args.seeds:
            run = run_mode(source, mode, seed, cache, args.branches, parse_overrides(args.set))
            runs.append(run)
            m = run["metrics"]
            vs_base = accuracy_interval(golden, run["predictions"], baseline["predictions"])
            run["vs_baseline"] = vs_base
            if args.json:  # every run so far, with its golden predictions: a stopped run keeps its figures
                args.json.write_text(json.dumps({"baseline": {"model": name, **baseline["metrics"]},
                                                 "golden_predictions_of": "listing_id", "runs": runs},
                                                indent=1, default=str))
            print(f"{mode:8s} seed {seed}: accuracy {m['accuracy']:.4f} macro-F1 {m['macro_f1']:.4f} "
                  f"score {m['business_weighted_score']:.4f} train {run['train_seconds']:.0f} s "
                  f"embedded {run['embed'].get('embedded')} in {run['embed'].get('seconds')} s | "
                  f"vs baseline {vs_base[0]:+.4f} [{vs_base[1]:+.4f}, {vs_base[2]:+.4f}]", flush=True)
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in args.modes}
    if "scratch" in by_mode and len(by_mode) > 1:
        for mode, mode_runs in by_mode.items():
            if mode == "scratch":
                continue
            scratch_runs = by_mode["scratch"]
            for i, run in enumerate(mode_runs):  # the scratch run of the same position, else the first
                ref = scratch_runs[i] if i < len(scratch_runs) else scratch_runs[0]
                run["vs_scratch"] = accuracy_interval(golden, run["predictions"], ref["predictions"])
                d = run["vs_scratch"]
                print(f"{mode} seed {run['seed']} vs scratch seed {ref['seed']}: "
                      f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]")
    for mode, mode_runs in by_mode.items():
        acc = [r["metrics"]["accuracy"] for r in mode_runs]
        f1 = [r["metrics"]["macro_f1"] for r in mode_runs]
        print(f"{mode}: accuracy mean {sum(acc) / len(acc):.4f} (min {min(acc):.4f}, max {max(acc):.4f}); "
              f"macro-F1 mean {sum(f1) / len(f1):.4f} (min {min(f1):.4f}, max {max(f1):.4f}); n={len(acc)}")
    if args.json:
        args.json.write_text(json.dumps({"baseline": {"model": name, **baseline["metrics"]}, "runs": runs},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
