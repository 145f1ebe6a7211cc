"""``train.nproc_per_node: 2`` runs the train stage of ``dvc repro`` under torchrun (gloo, CPU).

The session's tiny state (~300 real fashion listings) is copied; its workspace's params ask for
two training processes (the text branch, one epoch, to keep it short) and the pipeline runs
through ``training.pipeline.run_pipeline`` (``dvc repro``), as the DAG's ``train_evaluate`` runs
it. The train log and checkpoint say two processes trained, and every epoch's ``rows_per_rank``
(each rank's own count, gathered from the ranks) shows two disjoint halves of the split: the
counts sum to the training split and each is half of it within one row per global batch.
About a minute.
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from tests.integration.test_promotion_champion import copy_state, retrain

pytestmark = pytest.mark.integration


def test_the_train_stage_runs_two_gloo_processes_each_on_its_share(tiny_trained, tmp_path):
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    state = copy_state(tiny_trained["state"], tmp_path / "state")
    retrain(state, nproc_per_node=2, branches="text", epochs=1, num_threads=1, amp=False)
    ws = state.workspace
    log = json.loads((ws / "models" / "train_log.json").read_text())
    ckpt = torch.load(ws / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert log["world_size"] == 2 and ckpt["world_size"] == 2
    n = len(pd.read_parquet(ws / "data" / "prepared" / "train.parquet", columns=["listing_id"]))
    batch = ckpt["params"]["train"]["batch_size"]
    for epoch in log["epochs"]:
        shares = epoch["rows_per_rank"]
        assert len(shares) == 2 and sum(shares) == n, epoch
        assert all(abs(s - n / 2) <= -(-n // batch) for s in shares), shares
    assert json.loads((ws / "metrics.json").read_text())["n_golden"] > 0  # evaluate ran after it
