"""Warm start through the real pipeline: ``train.init: champion`` in ``dvc repro``, real registry.

The session's tiny workspace (~300 real fashion listings, 10 leaves) is copied with a registry
of its own; its model is registered as v1 and given the alias ``champion``. A new weekly batch
of real listings of an 11th article type (a leaf the champion never saw) is written to the
store and versioned (the golden set frozen); ``dvc repro`` then runs with ``train.init: champion`` and
``train.warm_epochs: 1`` (against ``train.epochs: 2``). To tell "started from the champion"
from "trained into something similar", the warm run's learning rate is 1e-8: after its epoch
every copied tensor is still the champion's within 1e-5, while a scratch model is nowhere near.

Checked: ``models/init`` holds the champion's checkpoint byte for byte and is a DVC dep of the
train stage (a champion move makes ``dvc status`` report train changed; the same champion does
not), the run trained one epoch, the new leaf is among the model's classes with a fresh row,
the known leaves' rows and the encoders are the champion's, the MLflow run is tagged
``lcp.init = champion:v1`` (and still ``pretrained_weights``), and ``promotion.reproduce``
re-runs the version (pulling ``models/init``) to the same metrics. Without a champion,
``fetch_init`` says scratch and why.

About 3-4 minutes on the shared 2-core box (two ``dvc repro``, one of them the reproduction).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.integration.test_promotion_champion import copy_state, retrain
from tests.integration.test_promotion_registry import NAME, client_for
from tests.integration.test_training_stages import N_CLASSES

pytestmark = pytest.mark.integration

WARM_LR = 1e-8
NEW_BATCH = "2025-01-20"
NEW_LISTINGS = 30


def add_new_leaf_batch(fashion_dir: Path, store: Path) -> str:
    """Writes a batch of real listings of the article type ranked just after the tiny store's
    ``N_CLASSES`` (a leaf the store does not hold), the way the tiny store's own batches were
    written (``tests.integration.test_training_stages.build_workspace``); returns its path."""
    from common.catalog import PATH_SEP
    from common.store import CANONICAL_COLUMNS, batch_file, image_path
    from tests.integration.test_training_stages import _content_key

    styles = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip")
    styles = styles[[(fashion_dir / "images" / f"{i}.jpg").exists() for i in styles["id"]]]
    article = styles["articleType"].value_counts().index[N_CLASSES]
    picked = styles[styles["articleType"] == article].copy()
    picked["path"] = picked["masterCategory"] + PATH_SEP + picked["subCategory"] + PATH_SEP + picked["articleType"]
    path = picked["path"].value_counts().index[0]
    picked = picked[picked["path"] == path].sort_values("id").head(NEW_LISTINGS)
    rows = []
    for r in picked.itertuples():
        data = (fashion_dir / "images" / f"{r.id}.jpg").read_bytes()
        key, sha = _content_key(data)
        image_path(store, key).parent.mkdir(parents=True, exist_ok=True)
        image_path(store, key).write_bytes(data)
        rows.append({"listing_id": str(r.id), "title": str(r.productDisplayName), "description": None,
                     "brand": None, "price": None, "currency": "INR", "attributes": None, "category_path": path,
                     "image_key": key, "image_sha256": sha, "catalog": "fashion", "batch_id": NEW_BATCH,
                     "ingested_at": pd.Timestamp(NEW_BATCH, tz="UTC")})
    batch_file(store, NEW_BATCH).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows)[list(CANONICAL_COLUMNS)].to_parquet(batch_file(store, NEW_BATCH), index=False)
    return path


@pytest.fixture(scope="module")
def warm(tiny_trained, fashion_dir, tmp_path_factory):
    from ingestion.versioning import version_data
    from ingestion.workspace import run_dvc
    from promotion.register import register_challenger
    from training.pipeline import INIT, fetch_init

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    state = copy_state(tiny_trained["state"], tmp_path_factory.mktemp("warm") / "state")
    # the golden set stays frozen: its subject (the growing set) has its own tests
    params = tiny_trained["params"].with_overrides({"train": {"init": "champion", "warm_epochs": 1},
                                                    "prepare": {"golden_policy": "frozen"}})
    client = client_for(state)
    out = {"state": state, "params": params, "client": client}
    out["no_champion"] = fetch_init(state, params)

    v1 = register_challenger(state, tiny_trained["params"], tiny_trained["data"],
                             tiny_trained["trained"].workspace_commit, "test_dag", "v1")
    client.set_registered_model_alias(NAME, "champion", v1.version)
    out["v1"] = v1.version
    out["champion_ckpt"] = torch.load(state.workspace / "models" / "model.pt", map_location="cpu",
                                      weights_only=True)
    out["champion_bytes"] = hashlib.sha256((state.workspace / "models" / "model.pt").read_bytes()).hexdigest()

    out["new_leaf"] = add_new_leaf_batch(fashion_dir, state.listings_store)
    data = version_data(state, params, note="test: a batch with a new leaf")
    commit = retrain(state, init="champion", warm_epochs=1, lr=WARM_LR)
    ws = state.workspace
    out["init_json"] = json.loads((ws / INIT / "init.json").read_text())
    out["init_bytes"] = hashlib.sha256((ws / INIT / "model.pt").read_bytes()).hexdigest()
    out["log"] = json.loads((ws / "models" / "train_log.json").read_text())
    out["ckpt"] = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)
    out["lock"] = yaml.safe_load((ws / "dvc.lock").read_text())
    out["train_split"] = pd.read_parquet(ws / "data" / "prepared" / "train.parquet", columns=["batch_id"])
    warm_params = params.with_overrides({"train": {"lr": WARM_LR}})
    v2 = register_challenger(state, warm_params, data, commit, "test_dag", "v2-warm")
    out["v2"], out["run_tags"] = v2.version, client.get_run(v2.run_id).data.tags

    # the same champion: nothing for DVC to re-run; a new champion: the train stage changed
    fetch_init(state, params)
    run_dvc(ws, "add", "-q", INIT)
    out["status_same"] = run_dvc(ws, "status", "train")
    client.set_registered_model_alias(NAME, "champion", v2.version)
    out["moved"] = fetch_init(state, params)
    run_dvc(ws, "add", "-q", INIT)
    out["status_moved"] = run_dvc(ws, "status", "train")
    # back as it was, so that the workspace matches the commit v2 names
    client.set_registered_model_alias(NAME, "champion", v1.version)
    fetch_init(state, params)
    run_dvc(ws, "add", "-q", INIT)
    return out


def test_without_a_champion_the_run_is_from_scratch_and_says_why(warm):
    assert warm["no_champion"] == {"init": "scratch", "reason": f"no champion of {NAME} yet"}


def test_the_champion_checkpoint_is_the_train_stage_dependency(warm):
    assert warm["init_json"]["init"] == "champion" and warm["init_json"]["version"] == warm["v1"]
    assert warm["init_bytes"] == warm["champion_bytes"]  # the registered checkpoint, byte for byte
    deps = {d["path"] for d in warm["lock"]["stages"]["train"]["deps"]}
    assert "models/init" in deps
    assert "changed" not in warm["status_same"] and "up to date" in warm["status_same"].lower()
    assert warm["moved"]["version"] == warm["v2"]
    assert "models/init" in warm["status_moved"] and "modified" in warm["status_moved"]


def test_warm_run_trains_warm_epochs_and_knows_the_new_leaf(warm):
    log, ckpt = warm["log"], warm["ckpt"]
    assert log["init"] == f"champion:v{warm['v1']}"
    assert [e["epoch"] for e in log["epochs"]] == [0]  # warm_epochs 1, not train.epochs 2
    assert warm["new_leaf"] not in warm["champion_ckpt"]["labels"]
    assert warm["new_leaf"] in ckpt["labels"]
    assert set(ckpt["labels"]) == set(warm["champion_ckpt"]["labels"]) | {warm["new_leaf"]}
    leaf_head = log["init_heads"][f"heads.{len(log['levels']) - 1}"]
    assert leaf_head["new"] == [warm["new_leaf"]] and leaf_head["dropped"] == []
    assert leaf_head["copied"] == len(warm["champion_ckpt"]["labels"])


def test_the_warm_run_replays_the_new_batch_and_records_what_it_trained_on(warm):
    """The champion (trained from scratch on the whole store) lists its batches; the warm run
    keeps every listing of the new batch and replays the earlier ones (all of them: the tiny
    store holds fewer than train.replay_size), and its checkpoint lists the batches for the
    next week's plan."""
    log, ckpt, old = warm["log"], warm["ckpt"], warm["champion_ckpt"]
    assert old["replay"]["runs_since_full"] == 0 and NEW_BATCH not in old["replay"]["trained_batches"]
    assert log["replay"] == "replay" and f"champion v{warm['v1']}" in log["replay_reason"]
    train = warm["train_split"]
    counts = log["replay_counts"]["train"]
    assert counts["new"] == int((train["batch_id"] == NEW_BATCH).sum()) > 0
    assert counts["replayed"] == counts["earlier"] == int((train["batch_id"] != NEW_BATCH).sum())
    assert ckpt["replay"] == {"trained_batches": sorted([*old["replay"]["trained_batches"], NEW_BATCH]),
                              "runs_since_full": 1}


def test_the_warm_run_reuses_the_champions_precision_probe(warm):
    """On the same machine, for the same training step (the warm run differs by its lr, epochs
    and init only), the champion's measured img/s decide again: nothing is measured."""
    record, log = warm["champion_ckpt"].get("precision_probe_record"), warm["log"]
    if record is None:  # nothing was measured for the champion (no native bf16 here): nothing to reuse
        assert warm["champion_ckpt"]["precision_probe"] is None and log["precision_probe"] is None
        return
    assert record["source"] == "measured" and record["rates"] == warm["champion_ckpt"]["precision_probe"]
    assert log["precision_probe_source"] == f"champion:v{warm['v1']}"
    assert log["precision_probe"] == record["rates"] and log["precision"] == warm["champion_ckpt"]["precision"]
    assert warm["ckpt"]["precision_probe_record"]["source"] == f"champion:v{warm['v1']}"


def test_copied_weights_started_from_the_champion(warm):
    """At lr 1e-8 one epoch moves no weight by 1e-5: what is left is where training started."""
    old, new = warm["champion_ckpt"], warm["ckpt"]
    s_old, s_new = old["model"], new["model"]
    # (not BatchNorm's running statistics: every forward pass in training mode moves them)
    for name in ("text_encoder.embedding.weight", "text_encoder.mlp.0.weight", "image_encoder.conv1.weight",
                 "image_encoder.layer4.1.conv2.weight", "field_encoder.embedding.weight"):
        assert torch.allclose(s_new[name], s_old[name], atol=1e-5), name
    # rows by label: every leaf the champion knew keeps its row; the new leaf's row is fresh
    leaf = f"heads.{max(int(k.split('.')[1]) for k in s_new if k.startswith('heads.'))}.weight"
    j_new = new["labels"].index(warm["new_leaf"])
    for j_old, label in enumerate(old["labels"]):
        row = s_new[leaf][new["labels"].index(label)]
        assert torch.allclose(row, s_old[leaf][j_old], atol=1e-5), label
        assert not torch.allclose(s_new[leaf][j_new], s_old[leaf][j_old], atol=1e-3)
    # a model from scratch is nowhere near the champion
    from common.params import TrainParams
    from training.model import build_model

    torch.manual_seed(new["params"]["train"]["seed"])
    scratch, _ = build_model(new["labels"], TrainParams.model_validate(new["params"]["train"]))
    gap = (scratch.state_dict()["text_encoder.mlp.0.weight"] - s_old["text_encoder.mlp.0.weight"]).abs().max()
    assert gap > 1e-2


def test_the_run_is_tagged_with_its_start_and_keeps_the_pretrained_tag(warm):
    tags = warm["run_tags"]
    assert tags["lcp.init"] == f"champion:v{warm['v1']}"
    assert tags["pretrained_weights"] == "False"


def test_a_warm_started_version_reproduces(warm):
    from promotion.reproduce import reproduce_version

    result = reproduce_version(warm["state"], warm["params"], warm["v2"])
    assert result["match"], result
    reproduced = json.loads((Path(result["workdir"]) / "models" / "train_log.json").read_text())
    assert reproduced["init"] == f"champion:v{warm['v1']}"
