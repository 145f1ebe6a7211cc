"""The coverage guardrail against a real MLflow registry (SQLite store) with real models trained
on the same real listings: each side's golden coverage comes from its own stored calibration and
threshold, through its served pyfunc.

The session's tiny workspace (2 epochs, a weak model) is copied with a registry of its own. Steps:

1. ``legacy``: the weak checkpoint with its ``calibration`` entry removed (a version registered
   before calibration: no ``auto`` column served), registered, gated (first run) and promoted.
2. ``lenient``: the same weak weights calibrated at ``score.target_precision: 0.0`` (threshold:
   the lowest val probability, so it auto-categorises nearly all golden listings), registered.
3. ``strict``: trained 8 epochs (a genuine winner on score, see ``test_promotion_champion``) with
   ``target_precision: 1.0``, so it auto-categorises only what it is surest of.
4. ``strict`` gated against ``legacy``: promoted on score, the guardrail skipped, and the reason
   says why (the champion stores no threshold).
5. ``champion`` moved by hand to ``lenient``; ``strict`` gated again: rejected for the coverage
   drop alone, whatever its score; the champion's coverage is what its own checkpoint gives.

About 4-6 minutes on the shared 2-core box besides the session's tiny workspace (the 8-epoch
``dvc repro`` and one fresh-process serving check take most of it).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.integration.test_promotion_champion import (
    STRONG_EPOCHS,
    copy_state,
    gate_params,
    stored_checkpoint,
)
from tests.integration.test_promotion_registry import NAME, client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flow(tiny_trained, tmp_path_factory):
    """Runs the module docstring's steps; returns what each returned."""
    import torch

    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from training.calibration import calibrate_checkpoint
    from training.pipeline import run_pipeline

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    state = copy_state(tiny_trained["state"], tmp_path_factory.mktemp("coverage") / "state")
    params = gate_params(tiny_trained["params"])
    data, golden_rev = tiny_trained["data"], tiny_trained["data"].golden_rev
    commit = tiny_trained["trained"].workspace_commit
    client = client_for(state)
    ws = state.workspace
    checkpoint = ws / "models" / "model.pt"
    original = checkpoint.read_bytes()
    out = {"state": state, "params": params, "golden_rev": golden_rev, "client": client}

    # 1. a champion from before calibration
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out["weak_calibration"] = ckpt.pop("calibration")
    torch.save(ckpt, checkpoint)
    legacy = register_challenger(state, params, data, f"{commit}-legacy", "test_dag", "legacy")
    out["legacy"] = legacy.version
    out["legacy_gate"] = gate_challenger(state, params, legacy.version, golden_rev)
    promote(state, params, out["legacy_gate"])

    # 2. the weak weights, calibrated to auto-categorise (nearly) everything
    checkpoint.write_bytes(original)
    lenient_score = params.score.model_copy(update={"target_precision": 0.0})
    out["lenient_calibration"] = calibrate_checkpoint(checkpoint, ws / "data" / "prepared", lenient_score)
    out["lenient"] = register_challenger(state, params, data, f"{commit}-lenient", "test_dag", "lenient").version
    checkpoint.write_bytes(original)  # the workspace as DVC committed it

    # 3. a genuinely better model that auto-categorises only what it is surest of
    path = ws / "params.yaml"
    values = yaml.safe_load(path.read_text())
    values["train"]["epochs"] = STRONG_EPOCHS
    values["score"]["target_precision"] = 1.0
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    strict_commit = run_pipeline(state, note="test: strict").workspace_commit
    strict_params = params.with_overrides({"train": {"epochs": STRONG_EPOCHS},
                                           "score": {"target_precision": 1.0}})
    out["strict_metrics"] = json.loads((ws / "metrics.json").read_text())
    out["strict"] = register_challenger(state, strict_params, data, strict_commit, "test_dag", "strict").version

    # 4. against the champion without a threshold, 5. against the lenient one
    out["vs_legacy"] = gate_challenger(state, strict_params, out["strict"], golden_rev)
    client.set_registered_model_alias(NAME, "champion", out["lenient"])
    out["vs_lenient"] = gate_challenger(state, strict_params, out["strict"], golden_rev)
    out["description"] = client.get_model_version(NAME, out["strict"]).description
    return out


def cached_predictions(client, version: str, golden_rev: str) -> pd.DataFrame:
    import mlflow

    run_id = client.get_model_version(NAME, version).run_id
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/golden_predictions/{golden_rev}.csv")
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def test_a_first_model_without_threshold_has_no_coverage(flow):
    gate = flow["legacy_gate"]
    assert gate.decision == "promoted" and gate.first_run
    assert gate.coverage["candidate"] == {"coverage": None, "auto_precision": None, "value_coverage": None}
    assert (cached_predictions(flow["client"], flow["legacy"], flow["golden_rev"])["auto"] == "").all()


def test_the_strict_model_wins_on_score_and_the_guardrail_is_skipped_against_a_legacy_champion(flow):
    gate = flow["vs_legacy"]
    assert gate.champion_version == flow["legacy"]
    assert gate.decision == "promoted", gate.reason
    assert gate.coverage["checked"] is False and gate.coverage["champion"]["coverage"] is None
    assert (f"coverage guardrail skipped: the champion v{flow['legacy']} stores no auto-categorisation "
            "threshold (registered before calibration)") in gate.reason
    assert gate.serving_check["ok"]  # the served output with its auto column passes the check


def test_a_coverage_drop_rejects_the_winner_whatever_its_score(flow):
    gate, lenient = flow["vs_lenient"], flow["vs_lenient"].coverage
    cand, champ = lenient["candidate"]["coverage"], lenient["champion"]["coverage"]
    # the premise: the lenient threshold auto-categorises more than the strict one, by far
    assert champ - cand > flow["params"].gate.max_coverage_drop, (cand, champ)
    assert gate.champion_version == flow["lenient"]
    assert gate.decision == "rejected" and not gate.promote
    assert lenient["checked"] and lenient["passed"] is False
    assert gate.reason.startswith("coverage at the target precision drops: golden coverage "
                                  f"{champ:.4f} -> {cand:.4f}")
    # the score alone would have promoted it: no other check failed
    assert gate.delta > 0 and gate.interval[0] > gate.required_improvement
    assert "does not beat" not in gate.reason and "lower bound" not in gate.reason
    assert "coverage (auto-categorised share)" in flow["description"] and "more than the allowed" in flow["description"]


def test_the_champion_coverage_is_its_own_threshold_and_calibration_on_the_same_golden_set(flow):
    """Recomputed from the lenient version's stored checkpoint (its temperature and threshold),
    on the golden listings as the gate reads them; and cached with the predictions."""
    from promotion.registry import golden_frame
    from training.inference import load_checkpoint, predict_paths
    from training.serving import image_column, model_input

    client, rev = flow["client"], flow["golden_rev"]
    loaded = load_checkpoint(stored_checkpoint(client, flow["lenient"]))
    assert loaded.calibration == flow["lenient_calibration"]
    assert loaded.threshold is not None and loaded.temperature == pytest.approx(
        flow["weak_calibration"]["temperature"])  # the same weights: the same T, another threshold
    request = model_input(golden_frame(flow["state"]))
    paths, probs = predict_paths(loaded, request, image_column(request))
    auto = probs.max(axis=1) >= np.float32(loaded.threshold)
    champion = flow["vs_lenient"].coverage["champion"]
    assert champion["coverage"] == pytest.approx(auto.mean())
    truth = golden_frame(flow["state"])["category_path"].to_numpy()
    assert champion["auto_precision"] == pytest.approx((np.array(paths) == truth)[auto].mean())
    cached = cached_predictions(client, flow["lenient"], rev)
    assert cached["auto"].tolist() == [str(bool(a)) for a in auto]
    # the challenger's figures in the gate are those of its own evaluate stage (same golden set)
    strict = flow["vs_lenient"].coverage["candidate"]
    metrics = flow["strict_metrics"]
    assert strict["coverage"] == pytest.approx(metrics["coverage"], abs=1.5 / len(truth))
    assert metrics["target_precision"] == 1.0
