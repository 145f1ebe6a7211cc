"""Unit tests of the training package's pure parts: title hashing, presets, model shapes, split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from common.params import TrainParams
from training.model import build_model
from training.prepare import stratified_split
from training.presets import TrainPreset, to_tensor_batch
from training.text import encode_titles, hash_feature, select_bags, title_features


def test_title_features_lowercase_words_bigrams_trigrams():
    feats = title_features("Red SHIRT")
    assert feats[:3] == ["w:red", "w:shirt", "b:red shirt"]
    assert "c:<re" in feats and "c:rt>" in feats
    assert title_features("") == []


def test_hash_is_stable_across_processes():
    """Python's hash() is salted per process; ours must not be."""
    here = [hash_feature(f, 1 << 18) for f in ("w:shirt", "b:red shirt", "c:<re")]
    code = ("from training.text import hash_feature;"
            "print([hash_feature(f, 1 << 18) for f in ('w:shirt', 'b:red shirt', 'c:<re')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == str(here)
    assert all(1 <= h < 1 << 18 for h in here)


def test_encode_titles_offsets_and_empty_title():
    ids, offsets = encode_titles(["red shirt", "", None], 1024)
    assert ids.dtype == torch.long and offsets.dtype == torch.long
    assert offsets.tolist()[0] == 0 and offsets.shape == (3,)
    n_first = len(title_features("red shirt"))
    assert offsets.tolist() == [0, n_first, n_first + 1]
    assert ids[n_first:].tolist() == [0, 0]  # empty bags get the reserved id 0
    assert int(ids.max()) < 1024


def test_select_bags_matches_reencoding():
    titles = ["red shirt", "blue jeans men", "", "watch"]
    ids, offsets = encode_titles(titles, 4096)
    sub_ids, sub_offsets = select_bags(ids, offsets, [3, 1])
    ref_ids, ref_offsets = encode_titles([titles[3], titles[1]], 4096)
    assert torch.equal(sub_ids, ref_ids) and torch.equal(sub_offsets, ref_offsets)


def test_to_tensor_batch_shape_and_flip():
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x = to_tensor_batch(images)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32
    flipped = TrainPreset(hflip_prob=1.0)(images)
    assert torch.allclose(flipped, x.flip(-1))
    with pytest.raises(ValueError):
        to_tensor_batch(images.astype(np.float32))


@pytest.mark.parametrize("branches", ["fused", "image", "text"])
def test_model_forward_shapes(branches):
    torch.manual_seed(0)
    params = TrainParams(branches=branches, text_buckets=1024, text_dim=16, weights="none")
    model, pretrained = build_model(7, params)
    assert pretrained is False
    assert (model.image_encoder is None) == (branches == "text")
    assert (model.text_encoder is None) == (branches == "image")
    ids, offsets = encode_titles(["a red shirt", "shoes", ""], 1024)
    images = torch.randn(3, 3, 32, 32)
    model.eval()
    logits = model(images if branches != "text" else None, ids, offsets)
    assert logits.shape == (3, 7)


def test_stratified_split_is_deterministic_and_keeps_singletons_in_train():
    frame = pd.DataFrame({
        "listing_id": [str(i) for i in range(41)],
        "category_path": ["A > B > C"] * 20 + ["A > B > D"] * 20 + ["X > Y > Z"],
    })
    side = stratified_split(frame, 0.1, seed=7)
    assert side.tolist() == stratified_split(frame, 0.1, seed=7).tolist()
    assert (side == "val").sum() == 4
    assert side.iloc[-1] == "train"
    assert set(side[frame.category_path == "A > B > C"]) == {"train", "val"}


@pytest.mark.parametrize("total_steps", [1, 3, 4, 5, 8, 200])
def test_lr_schedule_is_valid_for_tiny_and_long_runs(total_steps):
    """A week with a few hundred listings gives a handful of steps: the schedule must still run."""
    from training.train import make_lr_scheduler

    layer = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scheduler = make_lr_scheduler(optimizer, 0.1, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) <= 0.1 + 1e-9 and min(rates) > 0
    if total_steps >= 4:
        assert rates[0] < max(rates)  # warm-up
        assert rates[-1] < max(rates)  # annealing


def test_level_accuracies_count_shared_leading_levels():
    from training.evaluate import level_accuracies

    true = ["A > B > C", "A > B > C", "A > X > Y", "D > E > F"]
    pred = ["A > B > C", "A > B > Z", "A > B > Y", "G > E > F"]
    assert level_accuracies(true, pred) == {
        "level_1_accuracy": 0.75, "level_2_accuracy": 0.5, "level_3_accuracy": 0.25}
