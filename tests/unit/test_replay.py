"""Replay (``training.replay``): which runs replay, and what a replay run keeps.

The plan reads a real checkpoint file (``torch.save`` of the dict the train stage writes, with
the run's own ``train`` params so that the architectures match) through the same
``champion_checkpoint`` the train stage's warm start uses. The selection is checked on frames
of many leaves, rare ones included (a property test over sizes and leaf counts).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.params import load_params
from training.replay import plan_replay, select_replay, stratified_sample

PARAMS = load_params().with_overrides({"train": {"init": "champion", "replay_size": 100,
                                                 "replay_min_per_leaf": 3, "full_retrain_every": 3}})
STORE = ["b1", "b2", "b3", "b4"]


def _workspace(tmp_path, record: dict | None, train: dict | None = None, version: str = "7"):
    init = tmp_path / "models" / "init"
    init.mkdir(parents=True, exist_ok=True)
    (init / "init.json").write_text(json.dumps({"init": "champion", "version": version}))
    ckpt = {"params": {"train": train or PARAMS.train.model_dump(mode="json")}, "labels": ["a", "b"],
            "model": {"w": torch.zeros(2)}}
    if record is not None:
        ckpt["replay"] = record
    torch.save(ckpt, init / "model.pt")
    return tmp_path


def test_a_run_from_a_champion_that_lists_its_batches_replays_the_new_ones(tmp_path):
    ws = _workspace(tmp_path, {"trained_batches": ["b1", "b2"], "runs_since_full": 0})
    plan = plan_replay(ws, PARAMS, STORE)
    assert (plan.mode, plan.champion, plan.new_batches) == ("replay", "7", ["b3", "b4"])
    assert plan.trained_batches == STORE and plan.runs_since_full == 1
    assert plan.record == {"trained_batches": STORE, "runs_since_full": 1}


@pytest.mark.parametrize(("record", "overrides", "why"), [
    (None, {}, "records no trained batches"),
    ({"trained_batches": ["b1"], "runs_since_full": 2}, {}, "a full run every 3 runs"),
    ({"trained_batches": ["b1"], "runs_since_full": 0}, {"full_retrain": True}, "full_retrain"),
    ({"trained_batches": ["b1"], "runs_since_full": 0}, {"replay_size": 0}, "replay_size is 0"),
    ({"trained_batches": ["b1"], "runs_since_full": 0}, {"init": "scratch"}, "train.init is scratch"),
    ({"trained_batches": ["b1"], "runs_since_full": 0}, {"backbone": "resnet50"}, "another architecture"),
])
def test_full_runs_train_on_every_batch_and_say_why(tmp_path, record, overrides, why):
    ws = _workspace(tmp_path, record)
    plan = plan_replay(ws, PARAMS.with_overrides({"train": overrides}), STORE)
    assert plan.mode == "full" and why in plan.reason
    assert plan.trained_batches == STORE and plan.runs_since_full == 0 and plan.new_batches == []


def test_an_unreadable_champion_checkpoint_means_a_full_run(tmp_path):
    ws = _workspace(tmp_path, {"trained_batches": ["b1"], "runs_since_full": 0})
    (ws / "models" / "init" / "model.pt").write_bytes(b"not a checkpoint")
    plan = plan_replay(ws, PARAMS, STORE)
    assert plan.mode == "full" and "unreadable" in plan.reason


def _frame(sizes: dict[str, int], batch: str, start: int = 0) -> pd.DataFrame:
    rows = [(f"{batch}-{start + i}-{leaf}", leaf, batch) for leaf, n in sizes.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["listing_id", "category_path", "batch_id"])


@settings(max_examples=60, deadline=None)
@given(sizes=st.dictionaries(st.sampled_from([f"leaf{i}" for i in range(12)]), st.integers(1, 80), min_size=1),
       size=st.integers(0, 400), floor=st.integers(1, 6))
def test_the_sample_keeps_every_leaf_its_share_and_its_floor(sizes, size, floor):
    frame = _frame(sizes, "old")
    sample = stratified_sample(frame, size, floor, salt="1:4")
    assert set(sample["category_path"]) == set(sizes)  # no leaf forgotten
    assert sample.index.is_unique and set(sample.index) <= set(frame.index)
    if size >= len(frame):
        assert len(sample) == len(frame)
        return
    counts = sample["category_path"].value_counts()
    for leaf, n in sizes.items():
        assert counts[leaf] == min(n, max(floor, round(size * n / len(frame))))
    assert sample.equals(stratified_sample(frame, size, floor, salt="1:4"))  # seeded, stable


def test_a_replay_run_keeps_every_new_listing_and_a_sample_of_the_rest():
    old = _frame({"a": 300, "b": 150, "rare": 2}, "b1")
    new = _frame({"a": 20, "c": 5}, "b3")
    frames = {"train": pd.concat([old, new], ignore_index=True), "val": pd.concat([old.head(60), new.head(4)],
                                                                                   ignore_index=True)}
    from training.replay import ReplayPlan

    plan = ReplayPlan("replay", "test", "7", ["b3"], ["b1", "b3"], 1)
    kept, plan = select_replay(frames, plan, PARAMS)
    train = kept["train"]
    assert set(train.loc[train["batch_id"] == "b3", "listing_id"]) == set(new["listing_id"])
    replayed = train[train["batch_id"] == "b1"]
    assert 100 <= len(replayed) <= 100 + 3 * 3 and (replayed["category_path"] == "rare").sum() == 2
    assert plan.counts["train"] == {"new": len(new), "replayed": len(replayed), "earlier": len(old)}
    # val: its new listings and earlier ones in the val_fraction ratio (0.1 / 0.9 of 100 -> 12)
    assert plan.counts["val"]["new"] == 4 and plan.counts["val"]["replayed"] <= 12 + 3 * 3
    # another week replays other earlier listings
    other, _ = select_replay(frames, ReplayPlan("replay", "test", "7", ["b3"], ["b1", "b2", "b3"], 1), PARAMS)
    assert set(other["train"]["listing_id"]) != set(train["listing_id"])


def test_a_full_plan_keeps_the_frames():
    from training.replay import ReplayPlan

    frames = {"train": _frame({"a": 30}, "b1"), "val": _frame({"a": 3}, "b1")}
    kept, plan = select_replay(frames, ReplayPlan("full", "test", None, [], ["b1"], 0), PARAMS)
    assert kept["train"].equals(frames["train"]) and plan.counts["train"] == {"new": 30, "replayed": 0,
                                                                             "earlier": 0}
