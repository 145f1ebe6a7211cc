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
            "brand": None, "price": None, "currency": "INR", "attributes": None,
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
    ckpt = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert {"model", "epoch", "best", "params", "labels", "pretrained", "image_size"} <= set(ckpt)
    # the finished run's checkpoint: the served weights, without the training state to resume from
    assert ckpt["finished"] is True and "train_state" not in ckpt
    # one head per taxonomy level: 3 levels on the fashion catalog
    assert sum(1 for k in ckpt["model"] if k.startswith("heads.") and k.endswith(".weight")) == 3
    assert ckpt["epoch"] == 1 and ckpt["pretrained"] is False and ckpt["image_size"] == 32
    assert ckpt["params"] == params.to_dict()
    assert ckpt["labels"] == sorted(ckpt["labels"]) and len(ckpt["labels"]) == N_CLASSES
    log = json.loads((ws / "models" / "train_log.json").read_text())
    assert len(log["epochs"]) == 2 and log["img_per_s"] > 0
    assert 0.0 <= log["val_accuracy"] <= 1.0
    assert 0.0 <= log["val_business_weighted_score"] <= 1.0
    assert log["levels"][-1] == N_CLASSES and len(log["levels"]) == 3
    assert log["pretrained"] is False and log["weights_source"] is None
    # temperature and threshold fitted on the val split after training, stored with the weights
    cal = ckpt["calibration"]
    assert log["calibration"] == cal and cal["target_precision"] == params.score.target_precision
    assert cal["temperature"] > 0 and cal["n"] == len(pd.read_parquet(ws / "data" / "prepared" / "val.parquet"))
    assert cal["nll"] <= cal["nll_uncalibrated"] + 1e-6  # T minimises the val NLL; T = 1 was a candidate
    if cal["threshold"] is None:
        assert cal["coverage"] == 0.0 and cal["precision"] is None
    else:
        assert 0.0 < cal["threshold"] <= 1.0 and cal["precision"] >= cal["target_precision"]


def test_train_resumes_finished_run_without_retraining(workspace):
    from training.train import train

    ws, params, _ = workspace
    before = (ws / "models" / "model.pt").stat().st_mtime_ns
    log = train(ws, params)
    assert len(log["epochs"]) == 2 and log["epochs_run"] == []
    assert (ws / "models" / "model.pt").stat().st_mtime_ns == before


def test_resumed_run_keeps_the_precision_it_started_in(workspace, tmp_path):
    """A retry (possibly on another worker, whose CPU would choose otherwise) resumes in the
    precision stored in the checkpoint, without measuring again. Here the checkpoint says
    bf16 and the params ask for deterministic mode, in which a new run trains in fp32."""
    import torch

    from training.train import train

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 1, "deterministic": True}})
    run = _copy_prepared(ws, tmp_path / "ws", params)
    assert train(run, params)["precision"] == "float32"
    path = run / "models" / "model.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    probe = {"float32": 100.0, "bfloat16": 150.0}
    ckpt.update(precision="bfloat16", precision_probe=probe)  # as a bf16 worker wrote it
    torch.save(ckpt, path)
    log = train(run, params)
    assert (log["precision"], log["precision_probe"]) == ("bfloat16", probe)
    assert [h["epoch"] for h in log["epochs"]] == [0]


def test_pinned_precision_overrides_amp_for_a_new_run(workspace, tmp_path, monkeypatch):
    """``LCP_TRAIN_PRECISION`` (set by ``promotion.reproduce`` to the registered run's precision)
    decides a new run's precision without measuring; a value other than float32 / bfloat16 is
    refused before training."""
    from common.params import PRECISION_ENV
    from training.train import train

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 1, "deterministic": True}})
    monkeypatch.setenv(PRECISION_ENV, "bfloat16")  # deterministic mode alone would train in fp32
    log = train(_copy_prepared(ws, tmp_path / "pinned", params), params)
    assert (log["precision"], log["precision_probe"]) == ("bfloat16", None)
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="expected float32 or bfloat16"):
        train(_copy_prepared(ws, tmp_path / "bad", params), params)


def test_evaluate_outputs(workspace):
    ws, _, golden = workspace
    metrics = json.loads((ws / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "business_weighted_score", "top5_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_golden"] == len(golden)
    assert metrics["top5_accuracy"] >= metrics["accuracy"]
    assert metrics["accuracy"] > 1.0 / N_CLASSES  # titles make even 2 tiny epochs beat chance
    predictions = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str})
    assert list(predictions.columns) == ["listing_id", "true_path", "predicted_path", "probability", "auto"]
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


def test_evaluation_in_chunks_scores_as_one_pass(workspace):
    """The evaluate stage scores the golden set a chunk at a time (never golden x classes at
    once): chunks of 7 rows give what one pass over the whole set gives, and the whole set's
    top-5 hits are those of the full probability matrix."""
    import numpy as np

    from training.calibration import apply_temperature
    from training.evaluate import score_chunks, top_k_hits
    from training.inference import leaf_log_probs, load_checkpoint, split_images

    ws, _, _ = workspace
    golden = pd.read_parquet(ws / "data" / "prepared" / "golden.parquet")
    loaded = load_checkpoint(ws / "models" / "model.pt")
    images = split_images(loaded, ws / "data" / "prepared", "golden", golden)
    small, whole = (score_chunks(loaded, golden, images, 32, chunk=c) for c in (7, len(golden)))
    assert np.array_equal(small["top1"], whole["top1"]) and np.array_equal(small["top5"], whole["top5"])
    assert np.allclose(small["confidence"], whole["confidence"], atol=1e-5)
    full = apply_temperature(leaf_log_probs(loaded, golden, images, 32, temperature=1.0), loaded.temperature)
    assert np.array_equal(whole["top1"], full.argmax(axis=1))
    assert np.array_equal(whole["top5"], top_k_hits(full, loaded.labels, golden["category_path"].tolist(), 5))
    metrics = json.loads((ws / "metrics.json").read_text())
    assert metrics["top5_accuracy"] == pytest.approx(float(np.mean(whole["top5"])))


def test_evaluate_reports_calibration_and_coverage_at_the_stored_threshold(workspace):
    """metrics.json's confidence figures agree with predictions.csv and the checkpoint: ECE of
    the served (calibrated) probabilities, ECE of the uncalibrated ones recomputed from the
    checkpoint, coverage / precision / value coverage at the stored threshold."""
    import torch

    from training.calibration import expected_calibration_error
    from training.inference import leaf_log_probs, load_checkpoint

    ws, params, golden = workspace
    metrics = json.loads((ws / "metrics.json").read_text())
    cal = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)["calibration"]
    predictions = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str})
    correct = (predictions["predicted_path"] == predictions["true_path"]).to_numpy()
    for key in ("ece", "ece_uncalibrated", "coverage", "value_coverage"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["temperature"] == pytest.approx(cal["temperature"])
    assert metrics["auto_threshold"] == cal["threshold"]
    assert metrics["ece"] == pytest.approx(expected_calibration_error(predictions["probability"], correct), abs=1e-6)
    loaded = load_checkpoint(ws / "models" / "model.pt")
    images = np.load(ws / "data" / "prepared" / "golden_images.npy")
    raw = np.exp(leaf_log_probs(loaded, golden, images, temperature=1.0)).max(axis=1)
    assert metrics["ece_uncalibrated"] == pytest.approx(expected_calibration_error(raw, correct), abs=1e-6)
    if cal["temperature"] != pytest.approx(1.0, abs=1e-3):
        assert not np.allclose(raw, predictions["probability"], atol=1e-4)  # T changed the served probability
    auto = predictions["auto"].to_numpy(dtype=bool)
    threshold = cal["threshold"]
    served = predictions["probability"].to_numpy(dtype=np.float32)  # the CSV holds float32 values
    assert auto.tolist() == ([False] * len(auto) if threshold is None else (served >= threshold).tolist())
    assert metrics["coverage"] == pytest.approx(auto.mean())
    assert metrics["auto_precision"] == (pytest.approx(correct[auto].mean()) if auto.any() else None)
    from common.scoring import category_value

    values = np.array([category_value(p, params.score.value_table, params.score.default_value)
                       for p in predictions["true_path"]])
    assert metrics["value_coverage"] == pytest.approx(values[auto].sum() / values.sum())


def test_pyfunc_matches_evaluate_predictions(workspace, tmp_path, monkeypatch):
    import mlflow.pyfunc

    import common
    import training
    from training.serving import ListingClassifierModel, model_input

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
    paths = [str(image_path(ws / "data" / "listings", k)) for k in few["image_key"]]
    request = model_input(few.assign(image_path=paths))
    assert {"title", "currency", "image_path"} <= set(request.columns)
    out = served.predict(request)
    # the image may come as the encoded bytes instead of a path: same predictions
    as_bytes = request.drop(columns=["image_path"]).assign(image_bytes=[Path(p).read_bytes() for p in paths])
    pd.testing.assert_frame_equal(served.predict(as_bytes), out)
    # with an image root, paths are read relative to it, and a path that leaves it is refused
    monkeypatch.setenv("LCP_SERVING_IMAGE_ROOT", str(ws / "data" / "listings"))
    relative = request.assign(image_path=few["image_key"].tolist())
    pd.testing.assert_frame_equal(served.predict(relative), out)
    pd.testing.assert_frame_equal(served.predict(request), out)  # absolute, inside the root
    for escape in ("../../models/model.pt", str(ws / "models" / "model.pt"), "a/../../x.jpg"):
        with pytest.raises(ValueError, match=r"row 2 \(listing_id \S+\): image_path .* is outside the image root"):
            served.predict(relative.assign(image_path=[*relative["image_path"][:2], escape,
                                                       *relative["image_path"][3:]]))
    # nothing is read through a link, even one placed inside the root (the one image loader,
    # common.images.open_rgb, opens with O_NOFOLLOW): the row is refused, naming why
    served_root = tmp_path / "served"
    served_root.mkdir()
    (served_root / "linked.jpg").symlink_to(paths[0])
    monkeypatch.setenv("LCP_SERVING_IMAGE_ROOT", str(served_root))
    with pytest.raises(ValueError, match=r"row 0 .*symbolic link"):
        served.predict(request.head(1).assign(image_path=["linked.jpg"]))
    monkeypatch.delenv("LCP_SERVING_IMAGE_ROOT")
    # the structured fields are read: without them the probabilities change. Compared exactly:
    # two tiny epochs on titles this distinct leave the top probabilities within 1e-5 of 1
    # (0.99990-1.0), where np.allclose's tolerance hides the fields' effect (~1e-6)
    assert not np.array_equal(served.predict(request[["title", "image_path"]])["probability"].to_numpy(),
                              out["probability"].to_numpy())
    assert list(out.columns) == ["category_path", "leaf", "probability", "auto"]
    expected = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str}).head(8)
    assert out["category_path"].tolist() == expected["predicted_path"].tolist()
    assert np.allclose(out["probability"], expected["probability"], atol=1e-4)
    # the calibrated probability, and auto exactly where evaluate's stored threshold said so
    assert out["auto"].dtype == bool and out["auto"].tolist() == expected["auto"].tolist()
    assert out["leaf"].tolist() == [p.split(" > ")[-1] for p in out["category_path"]]


def test_pyfunc_serves_the_calibrated_probability_and_auto_at_the_stored_threshold(workspace, tmp_path):
    """The served probability is ``softmax(log p / T)`` of the checkpoint's temperature, ``auto``
    compares it with the stored threshold; a checkpoint from before calibration (no entry)
    serves the uncalibrated probability and no ``auto`` column, like the versions registered
    before it. Another stored threshold changes ``auto`` and nothing else."""
    import torch

    from training.inference import leaf_log_probs, load_checkpoint
    from training.serving import ListingClassifierModel, model_input

    ws, _, golden = workspace
    ckpt = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)
    paths = [str(image_path(ws / "data" / "listings", k)) for k in golden["image_key"]]
    request = model_input(golden.assign(image_path=paths))

    def serve(checkpoint: dict) -> pd.DataFrame:
        path = tmp_path / f"model-{len(list(tmp_path.iterdir()))}.pt"
        torch.save(checkpoint, path)
        wrapper = ListingClassifierModel()
        wrapper.loaded = load_checkpoint(path)
        return wrapper.predict(None, request)

    out = serve(ckpt)
    raw = leaf_log_probs(load_checkpoint(ws / "models" / "model.pt"), request, paths, temperature=1.0)
    t = ckpt["calibration"]["temperature"]
    calibrated = torch.softmax(torch.from_numpy(raw) / t, dim=1).numpy().max(axis=1)
    assert np.allclose(out["probability"], calibrated, atol=1e-5)
    # a threshold in the middle of the served probabilities: auto splits the listings there
    levels = np.unique(out["probability"].to_numpy(dtype=np.float32))
    middle = float(levels[len(levels) // 2])
    split = serve({**ckpt, "calibration": {**ckpt["calibration"], "threshold": middle}})
    assert split["auto"].tolist() == (out["probability"] >= np.float32(middle)).tolist()
    assert 0 < split["auto"].sum() < len(split)
    pd.testing.assert_frame_equal(split.drop(columns="auto"), out.drop(columns="auto"))
    none = serve({**ckpt, "calibration": {**ckpt["calibration"], "threshold": None}})
    assert not none["auto"].any()  # no threshold reached the target: nothing auto-categorised
    legacy = serve({k: v for k, v in ckpt.items() if k != "calibration"})
    assert list(legacy.columns) == ["category_path", "leaf", "probability"]
    assert np.allclose(legacy["probability"], np.exp(raw).max(axis=1), atol=1e-5)
    assert legacy["category_path"].tolist() == out["category_path"].tolist()  # T never moves the top leaf


def _copy_prepared(ws: Path, dst: Path, params: Params) -> Path:
    import shutil

    shutil.copytree(ws / "data" / "prepared", dst / "data" / "prepared")
    write_params(params, dst / "params.yaml")
    return dst


def test_training_from_a_weights_file_records_it(workspace, tmp_path):
    """``train.weights: <file>`` starts the backbone from that file; the checkpoint and the train
    log (which registration turns into the run's tags) say so and name the file."""
    import torch
    import torchvision

    from training.train import train

    ws, params, _ = workspace
    torch.manual_seed(3)
    weights = tmp_path / "resnet18.pth"
    torch.save({"model": torchvision.models.resnet18().state_dict()}, weights)
    params = params.with_overrides({"train": {"weights": str(weights), "epochs": 1}})
    run = _copy_prepared(ws, tmp_path / "ws", params)
    log = train(run, params)
    assert log["pretrained"] is True and log["weights_source"] == f"file {weights.resolve()}"
    assert torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)["pretrained"] is True


def test_early_stopping_keeps_the_best_epoch(workspace, tmp_path):
    """A learning rate far too high wrecks the model after its first epochs: training stops
    after ``patience`` epochs without a better validation score, and the checkpoint serves the
    best epoch's weights (re-scoring them on val gives the best epoch's score)."""
    from training.train import train

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 12, "lr": 3.0,
                                              "schedule": "cosine", "early_stopping_patience": 2}})
    run = _copy_prepared(ws, tmp_path / "ws", params)
    log = train(run, params)
    assert log["stopped_early"] is True
    epochs = [h["epoch"] for h in log["epochs"]]
    assert len(epochs) == log["best_epoch"] + 1 + 2 < 12
    best = log["epochs"][log["best_epoch"]]["val_business_weighted_score"]
    assert all(h["val_business_weighted_score"] <= best for h in log["epochs"])
    rescored = train(run, params, test_only=True)
    assert rescored["business_weighted_score"] == pytest.approx(best, abs=1e-9)
    # a retried task does not train again once stopped
    assert len(train(run, params)["epochs"]) == len(epochs)


def test_min_steps_and_no_early_stop_while_the_learning_rate_rises(workspace, tmp_path):
    """``min_steps`` raises the epochs of a small catalog; epochs that end inside the one-cycle
    warm-up do not count towards the patience (a rising rate makes val worse on purpose)."""
    from training.train import train, warmup_steps

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 1, "lr": 3.0,
                                              "schedule": "onecycle", "early_stopping_patience": 1}})
    run = _copy_prepared(ws, tmp_path / "ws", params)
    steps = -(-train(run, params)["n_train"] // params.train.batch_size)
    params = params.with_overrides({"train": {"min_steps": 12 * steps}})
    run = _copy_prepared(ws, tmp_path / "ws12", params)
    log = train(run, params)
    warmup = warmup_steps(12 * steps, "onecycle")
    assert warmup == 3 * steps
    epochs = [h["epoch"] for h in log["epochs"]]
    best, last = log["best_epoch"], epochs[-1]
    # train.epochs is 1: the epochs past it come from min_steps; the rate of 3.0 wrecks the model
    # as it rises, so the run stops, but only once an epoch after the warm-up fails too
    assert log["stopped_early"] and last >= 1
    counted = [e for e in range(best + 1, last + 1) if (e + 1) * steps > warmup]
    assert counted == [last]
    assert last - best > 1  # the warm-up epochs without a better score were not counted


def test_killed_training_resumes_from_its_last_checkpoint(workspace, tmp_path):
    """The train CLI is killed (SIGKILL) once an epoch's checkpoint is on disk; the retry
    continues from the next epoch and ends where an uninterrupted run ends. It trains only the
    epochs the killed run had not finished: a retry that retrained from scratch would end at the
    same losses (the run is deterministic), so the epochs it ran are checked too."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from training.train import train

    ws, params, _ = workspace
    # with a weight EMA: its average must resume too, or the val scores of later epochs differ
    params = params.with_overrides({"train": {"epochs": 4, "deterministic": True, "ema_decay": 0.9}})
    killed = _copy_prepared(ws, tmp_path / "killed", params)
    whole = _copy_prepared(ws, tmp_path / "whole", params)
    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--params", str(killed / "params.yaml"),
                             "--workspace", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    ckpt = killed / "models" / "model.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = torch.load(ckpt, map_location="cpu", weights_only=True)
    done = at_kill["epoch"]
    assert done < 3, "the run finished before it could be killed"
    log = train(killed, params)
    assert [h["epoch"] for h in log["epochs"]] == [0, 1, 2, 3]
    assert log["epochs_run"] == list(range(done + 1, 4))  # the finished epochs were not run again
    # their entries are the killed run's own (a re-run would have timed them anew)
    assert log["epochs"][:done + 1] == at_kill["history"] and len(at_kill["history"]) == done + 1
    reference = train(whole, params)
    for a, b in zip(log["epochs"], reference["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-9)


def test_weight_ema_is_what_is_evaluated_and_kept(workspace, tmp_path):
    """With ``ema_decay`` the checkpoint serves the moving average (updated once per optimizer
    step), not the raw weights, and the val score in the log is the average's."""
    import torch

    from training.train import train

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 3, "ema_decay": 0.9,
                                              "early_stopping_patience": 0, "deterministic": True}})
    run = _copy_prepared(ws, tmp_path / "ws", params)
    log = train(run, params)
    ckpt = torch.load(run / "models" / "model.pt", map_location="cpu", weights_only=True)
    steps = 3 * -(-log["n_train"] // params.train.batch_size)
    assert ckpt["ema_updates"] == steps
    # the same run without the average trains the same raw weights (same seed, deterministic)
    # and, were the average not what is kept, would keep the same epoch's same weights
    plain_params = params.with_overrides({"train": {"ema_decay": 0.0}})
    plain = _copy_prepared(ws, tmp_path / "plain", plain_params)
    train(plain, plain_params)
    raw = torch.load(plain / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert "ema_updates" not in raw and set(ckpt["model"]) == set(raw["model"])
    assert not torch.equal(ckpt["model"]["text_encoder.embedding.weight"],
                           raw["model"]["text_encoder.embedding.weight"])
    rescored = train(run, params, test_only=True)
    assert rescored["business_weighted_score"] == pytest.approx(
        log["epochs"][-1]["val_business_weighted_score"], abs=1e-9)


# Runs the train CLI with a spy that writes, per rank, the epochs set on the training sampler
# and the rows of every training batch the dataset assembled (argv[1]: the spy's folder).
_ROW_SPY = """
import json, os, sys
import training.data, training.sampler
out = open(os.path.join(sys.argv.pop(1), f"rows_rank{os.environ.get('RANK', '0')}.jsonl"), "a")
set_epoch, getitem = training.sampler.EpochBatchSampler.set_epoch, training.data.ListingDataset.__getitem__
def spy_set_epoch(self, epoch):
    out.write(json.dumps({"epoch": epoch}) + "\\n")
    out.flush()
    set_epoch(self, epoch)
def spy_getitem(self, batch):
    if self.split.name == "train":
        out.write(json.dumps({"rows": batch.rows.tolist()}) + "\\n")
        out.flush()
    return getitem(self, batch)
training.sampler.EpochBatchSampler.set_epoch = spy_set_epoch
training.data.ListingDataset.__getitem__ = spy_getitem
from training.train import main
main()
"""


def _rows_per_epoch(path: Path) -> dict[int, list[int]]:
    """The spy's record of one rank: epoch -> the training rows it read, in order."""
    epochs: dict[int, list[int]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if "epoch" in entry:
            epoch = epochs.setdefault(entry["epoch"], [])
        else:
            epoch.extend(entry["rows"])
    return epochs


def test_ddp_with_two_gloo_processes_matches_one_process(workspace, tmp_path):
    """``torchrun --nproc_per_node 2`` (gloo, CPU) trains the same model as one process: each
    rank takes half of every global batch and DDP averages the gradients. The text model (no
    BatchNorm, no dropout, fp32 even on a CPU with bf16) makes the two runs equal up to float
    summation order. Equal weights alone would not show the split (ranks that each trained on
    whole batches would average the same gradients), so a spy records the rows each rank read:
    every epoch, the two ranks' rows are disjoint, cover the training split, and are each half."""
    import subprocess
    import sys

    import torch

    from training.sampler import EpochBatchSampler

    ws, params, _ = workspace
    params = params.with_overrides({"train": {"branches": "text", "epochs": 2, "dropout": 0.0,
                                              "num_threads": 1, "deterministic": True, "amp": False}})
    ddp = _copy_prepared(ws, tmp_path / "ddp", params)
    single = _copy_prepared(ws, tmp_path / "single", params)
    (tmp_path / "spy.py").write_text(_ROW_SPY)
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(tmp_path / "spy.py"), str(tmp_path),
                          "--params", str(ddp / "params.yaml"), "--workspace", str(ddp)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "world 2" in out.stdout
    n = len(pd.read_parquet(ddp / "data" / "prepared" / "train.parquet"))
    steps = -(-n // params.train.batch_size)
    seen = [_rows_per_epoch(tmp_path / f"rows_rank{r}.jsonl") for r in (0, 1)]
    assert list(seen[0]) == list(seen[1]) == [0, 1]
    for epoch in (0, 1):
        rows = [seen[r][epoch] for r in (0, 1)]
        assert sorted(rows[0] + rows[1]) == list(range(n)), f"epoch {epoch}: not one share each"
        assert all(abs(len(r) - n / 2) <= steps for r in rows)  # half, within one row per batch
        for rank in (0, 1):  # each rank's share is the one its sampler gives it
            expected = EpochBatchSampler(torch.zeros(n, dtype=torch.long), params.train.batch_size,
                                         seed=params.train.seed, rank=rank, world_size=2)
            expected.set_epoch(epoch)
            assert rows[rank] == torch.cat([b.rows for b in expected]).tolist()
    subprocess.run([sys.executable, "-m", "training.train", "--params", str(single / "params.yaml"),
                    "--workspace", str(single)], check=True, capture_output=True, env=env, timeout=600)
    a = torch.load(ddp / "models" / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(single / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1
    for name, tensor in b["model"].items():
        assert torch.allclose(a["model"][name].float(), tensor.float(), atol=1e-5), name


def test_batch_predict_cli_on_a_listings_file(workspace, tmp_path, capsys):
    """``python -m training.predict`` on a Parquet file of golden listings with image paths
    relative to a root gives the evaluate stage's predictions and a listings/s figure."""
    from training.predict import main

    ws, _, golden = workspace
    listings = golden.assign(image_path=golden["image_key"])  # relative to the store
    listings.to_parquet(tmp_path / "listings.parquet", index=False)
    out = tmp_path / "predictions.csv"
    summary = main(["--model", str(ws / "models" / "model.pt"), "--input", str(tmp_path / "listings.parquet"),
                    "--images-root", str(ws / "data" / "listings"), "--output", str(out)])
    assert summary["listings"] == len(golden) and summary["listings_per_s"] > 0
    got = pd.read_csv(out, dtype={"listing_id": str})
    expected = pd.read_csv(ws / "reports" / "predictions.csv", dtype={"listing_id": str})
    assert got["listing_id"].tolist() == expected["listing_id"].tolist()
    assert got["category_path"].tolist() == expected["predicted_path"].tolist()
    with pytest.raises(ValueError, match="title"):
        listings.drop(columns=["title"]).to_csv(tmp_path / "bad.csv", index=False)
        main(["--model", str(ws / "models" / "model.pt"), "--input", str(tmp_path / "bad.csv")])
    # an unreadable image (a truncated JPEG, a missing file) is an error naming its row
    (tmp_path / "truncated.jpg").write_bytes((ws / "data" / "listings" / golden["image_key"].iloc[0]).read_bytes()[:60])
    for bad in (str(tmp_path / "truncated.jpg"), "no/such/image.jpg"):
        paths = listings["image_path"].tolist()
        paths[3] = bad
        listings.assign(image_path=paths).to_parquet(tmp_path / "bad.parquet", index=False)
        with pytest.raises(ValueError, match=r"row 3 \(listing_id \S+\): cannot read its image \(image_path '.*(truncated|such)"):
            main(["--model", str(ws / "models" / "model.pt"), "--input", str(tmp_path / "bad.parquet"),
                  "--images-root", str(ws / "data" / "listings"), "--output", str(tmp_path / "bad_out.csv")])
        assert not (tmp_path / "bad_out.csv").exists()
    # --skip-bad: both bad images in one file (rows 3 and 7, 7 in another batch of 4): the good
    # rows' predictions, as without them, and the skipped rows with their reasons
    paths = listings["image_path"].tolist()
    paths[3], paths[7] = str(tmp_path / "truncated.jpg"), "no/such/image.jpg"
    listings.assign(image_path=paths).to_parquet(tmp_path / "bad.parquet", index=False)
    skipped_out = tmp_path / "skip.csv"
    summary = main(["--model", str(ws / "models" / "model.pt"), "--input", str(tmp_path / "bad.parquet"),
                    "--images-root", str(ws / "data" / "listings"), "--output", str(skipped_out),
                    "--batch-size", "4", "--skip-bad"])
    assert summary["listings"] == len(golden) - 2
    assert [(s["row"], s["listing_id"]) for s in summary["skipped"]] == [
        (3, golden["listing_id"].iloc[3]), (7, golden["listing_id"].iloc[7])]
    assert "truncated.jpg" in summary["skipped"][0]["reason"] and "such" in summary["skipped"][1]["reason"]
    kept = pd.read_csv(skipped_out, dtype={"listing_id": str})
    good = got.drop(index=[3, 7]).reset_index(drop=True)
    assert kept["listing_id"].tolist() == good["listing_id"].tolist()
    assert kept["category_path"].tolist() == good["category_path"].tolist()
    np.testing.assert_allclose(kept["probability"], good["probability"], atol=1e-6)
    listed = pd.read_csv(summary["skipped_output"], dtype={"listing_id": str})
    assert listed["row"].tolist() == [3, 7] and listed["listing_id"].tolist() == golden["listing_id"].iloc[[3, 7]].tolist()


def test_pyfunc_with_signature_accepts_stored_listings_after_json(workspace, tmp_path):
    """Golden listings go to the served model as JSON records (the serving check's path), with
    the registered signature enforced: null-only optional columns (no description, no brand in
    the fashion catalog) and partial nulls must not trip MLflow's schema check."""
    import json

    import mlflow.pyfunc

    import common
    import training
    from training.serving import ListingClassifierModel, model_input, model_signature

    ws, _, golden = workspace
    model_dir = tmp_path / "signed"
    mlflow.pyfunc.save_model(
        model_dir, python_model=ListingClassifierModel(), signature=model_signature(),
        artifacts={"checkpoint": str(ws / "models" / "model.pt")},
        code_paths=[str(Path(training.__file__).parent), str(Path(common.__file__).parent)],
        pip_requirements=["torch", "torchvision"],
    )
    few = golden.head(5).assign(image_path=[str(image_path(ws / "data" / "listings", k))
                                            for k in golden.head(5)["image_key"]])
    few.loc[few.index[0], "brand"] = "Nike"  # partial nulls in a text column
    assert few["description"].isna().all()
    rows = json.loads(json.dumps(model_input(few).to_dict("records")))
    served = mlflow.pyfunc.load_model(str(model_dir))
    out = served.predict(pd.DataFrame(rows))
    assert len(out) == 5 and out["category_path"].str.count(" > ").eq(2).all()
    # batch_size is in the signature's params schema: it reaches the model (0 is refused there,
    # MLflow would drop a param the schema lacks); any positive size gives the same predictions
    assert served.metadata.get_params_schema().to_dict() == [
        {"name": "batch_size", "type": "long", "default": 256, "shape": None}]
    for size in (1, 2, 64):
        pd.testing.assert_frame_equal(served.predict(pd.DataFrame(rows), params={"batch_size": size}), out)
    with pytest.raises(mlflow.exceptions.MlflowException, match="batch_size must be a positive integer, got 0"):
        served.predict(pd.DataFrame(rows), params={"batch_size": 0})
    # a version logged before the params schema: MLflow ignores the param, the model serves
    old_dir = tmp_path / "signed-before-params"
    old_signature = model_signature()
    old_signature.params = None
    mlflow.pyfunc.save_model(
        old_dir, python_model=ListingClassifierModel(), signature=old_signature,
        artifacts={"checkpoint": str(ws / "models" / "model.pt")},
        code_paths=[str(Path(training.__file__).parent), str(Path(common.__file__).parent)],
        pip_requirements=["torch", "torchvision"],
    )
    old = mlflow.pyfunc.load_model(str(old_dir))
    assert old.metadata.get_params_schema() is None
    pd.testing.assert_frame_equal(old.predict(pd.DataFrame(rows), params={"batch_size": 0}), out)
