"""prepare -> train -> evaluate on a tiny workspace built from ~300 real fashion listings, then
the MLflow pyfunc model (saved and loaded the way promotion does) on a few golden listings."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.catalog import CANONICAL_COLUMNS, PATH_SEP
from common.params import Params, write_params
from common.store import batch_file, image_path

pytestmark = pytest.mark.integration

N_CLASSES = 10
PER_CLASS = 30


def _content_key(data: bytes) -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    return f"images/{sha[:2]}/{sha}.jpg", sha


def build_workspace(fashion_dir: Path, ws: Path) -> pd.DataFrame:
    """Writes a listings store (two batches) and a golden parquet; returns the golden rows."""
    styles = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip")
    styles = styles[[(fashion_dir / "images" / f"{i}.jpg").exists() for i in styles["id"]]]
    top = styles["articleType"].value_counts().index[:N_CLASSES]
    picked = (styles[styles["articleType"].isin(top)].sort_values("id")
              .groupby("articleType", group_keys=False).head(PER_CLASS))
    store = ws / "data" / "listings"
    rows = []
    for r in picked.itertuples():
        data = (fashion_dir / "images" / f"{r.id}.jpg").read_bytes()
        key, sha = _content_key(data)
        dst = image_path(store, key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)
        rows.append({
            "listing_id": str(r.id), "title": str(r.productDisplayName), "description": None,
            "brand": None, "price": None, "currency": "INR",
            "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, r.articleType]),
            "image_key": key, "image_sha256": sha, "catalog": "fashion",
            "batch_id": "", "ingested_at": pd.Timestamp("2025-01-06", tz="UTC"),
        })
    frame = pd.DataFrame(rows)[list(CANONICAL_COLUMNS)]
    half = len(frame) // 2
    for batch_id, part in (("2025-01-06", frame.iloc[:half]), ("2025-01-13", frame.iloc[half:])):
        part = part.assign(batch_id=batch_id)
        batch_file(store, batch_id).parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(batch_file(store, batch_id), index=False)
    ordered = frame.sort_values(["category_path", "listing_id"])
    golden = ordered[ordered.groupby("category_path").cumcount() % 7 == 0].reset_index(drop=True)
    (ws / "data" / "golden").mkdir(parents=True)
    golden.to_parquet(ws / "data" / "golden" / "golden.parquet", index=False)
    return golden


@pytest.fixture(scope="module")
def workspace(fashion_dir: Path, tmp_path_factory) -> tuple[Path, Params, pd.DataFrame]:
    ws = tmp_path_factory.mktemp("workspace")
    golden = build_workspace(fashion_dir, ws)
    params = Params().with_overrides({
        "prepare": {"image_size": 32, "val_fraction": 0.1},
        "train": {"epochs": 2, "batch_size": 32, "text_buckets": 4096, "text_dim": 32,
                  "lr": 0.005, "num_threads": 2, "weights": "none"},
    })
    write_params(params, ws / "params.yaml")
    from training import evaluate, prepare, train

    args = ["--params", str(ws / "params.yaml"), "--workspace", str(ws)]
    prepare.main(args)
    train.main(args)
    evaluate.main(args)
    return ws, params, golden


def test_prepare_outputs_and_golden_isolation(workspace):
    ws, params, golden = workspace
    prepared = ws / "data" / "prepared"
    golden_ids = set(golden["listing_id"])
    sizes = {}
    for split in ("train", "val", "golden"):
        rows = pd.read_parquet(prepared / f"{split}.parquet")
        images = np.load(prepared / f"{split}_images.npy", mmap_mode="r")
        assert images.shape == (len(rows), 32, 32, 3) and images.dtype == np.uint8
        sizes[split] = len(rows)
        if split != "golden":
            assert not golden_ids & set(rows["listing_id"]), f"golden listing in {split}"
    assert sizes["golden"] == len(golden)
    assert sizes["train"] + sizes["val"] + sizes["golden"] == N_CLASSES * PER_CLASS
    assert sizes["val"] > 0


def test_train_outputs_checkpoint_and_log(workspace):
    import torch

    ws, params, _ = workspace
    ckpt = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "epoch", "params", "labels", "pretrained",
            "image_size"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["pretrained"] is False and ckpt["image_size"] == 32
    assert ckpt["params"] == params.to_dict()
    assert ckpt["labels"] == sorted(ckpt["labels"]) and len(ckpt["labels"]) == N_CLASSES
    log = json.loads((ws / "models" / "train_log.json").read_text())
    assert len(log["epochs"]) == 2 and log["img_per_s"] > 0
    assert 0.0 <= log["val_accuracy"] <= 1.0


def test_train_resumes_finished_run_without_retraining(workspace):
    from training.train import train

    ws, params, _ = workspace
    before = (ws / "models" / "model.pt").stat().st_mtime_ns
    log = train(ws, params)
    assert len(log["epochs"]) == 2
    assert (ws / "models" / "model.pt").stat().st_mtime_ns == before


def test_evaluate_outputs(workspace):
    ws, _, golden = workspace
    metrics = json.loads((ws / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "business_weighted_score", "top5_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_golden"] == len(golden)
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    assert metrics["accuracy"] > 1.0 / N_CLASSES  # titles make even 2 tiny epochs beat chance
    predictions = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str})
    assert list(predictions.columns) == ["listing_id", "true_path", "predicted_path", "probability"]
    assert predictions["listing_id"].tolist() == golden["listing_id"].tolist()
    assert (ws / "reports" / "confusion_matrix.png").stat().st_size > 10_000
    # per-level accuracy: coarser levels are never harder than the leaf
    assert metrics["level_1_accuracy"] >= metrics["level_2_accuracy"] >= metrics["level_3_accuracy"]
    assert metrics["level_3_accuracy"] == pytest.approx(metrics["accuracy"])
    # the title-only TF-IDF baseline is scored on the same golden set
    baseline = json.loads((ws / "reports" / "baseline.json").read_text())
    assert 0.0 < baseline["accuracy"] <= 1.0 and baseline["accuracy"] == metrics["baseline_accuracy"]
    per_class = pd.read_csv(ws / "reports" / "per_class.csv")
    assert set(per_class["category_path"]) >= set(golden["category_path"])
    assert per_class["support"].sum() == len(golden)


def test_pyfunc_matches_evaluate_predictions(workspace, tmp_path):
    import mlflow.pyfunc

    import common
    import training
    from training.serving import ListingClassifierModel

    ws, _, golden = workspace
    model_dir = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        model_dir, python_model=ListingClassifierModel(),
        artifacts={"checkpoint": str(ws / "models" / "model.pt")},
        code_paths=[str(Path(training.__file__).parent), str(Path(common.__file__).parent)],
        pip_requirements=["torch", "torchvision"],
    )
    served = mlflow.pyfunc.load_model(str(model_dir))
    few = golden.head(8)
    request = pd.DataFrame({
        "title": few["title"],
        "image_path": [str(image_path(ws / "data" / "listings", k)) for k in few["image_key"]],
    })
    out = served.predict(request)
    assert list(out.columns) == ["category_path", "leaf", "probability"]
    expected = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str}).head(8)
    assert out["category_path"].tolist() == expected["predicted_path"].tolist()
    assert np.allclose(out["probability"], expected["probability"], atol=1e-4)
    assert out["leaf"].tolist() == [p.split(" > ")[-1] for p in out["category_path"]]
