"""Gate, review and faults against a real MLflow registry (SQLite store) and a real tiny model.

One tiny model (~300 real fashion listings, 32 px, 2 epochs) is trained once through the real
DVC pipeline, then registered, gated and promoted; a second registration of the same checkpoint
is a challenger that cannot beat it (a tie).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from common.params import Params
from common.state import State
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

NAME = "listing-classifier"


def tiny_params() -> Params:
    """A tiny, fast configuration with low floors (few hundred listings, 2 short epochs)."""
    return Params().with_overrides({
        "prepare": {"image_size": 32, "val_fraction": 0.1},
        "train": {"epochs": 2, "batch_size": 32, "text_buckets": 4096, "text_dim": 32,
                  "lr": 0.005, "num_threads": 2, "weights": "none"},
        "gate": {"floor_score": 0.05, "floor_accuracy": 0.05, "min_improvement": 0.0,
                 "n_bootstrap": 500, "slice_top_n": 3},
    })


def build_and_train(fashion_dir: Path, root: Path, params: Params) -> tuple[State, dict, dict]:
    """A state with a listings store and golden set from real listings, versioned and trained by DVC.

    Returns:
        ``(state, version_data result, reproduce result)``.
    """
    from ingestion.versioning import version_data
    from tests.integration.test_training_stages import build_workspace
    from training.pipeline import run_pipeline

    state = State(root / "state").ensure()
    build_workspace(fashion_dir, state.workspace)
    data = version_data(state, params, note="test")
    trained = run_pipeline(state, note="test")
    return state, data, trained


def client_for(state: State):
    import mlflow

    mlflow.set_tracking_uri(state.tracking_uri)
    mlflow.set_registry_uri(state.tracking_uri)
    return mlflow.MlflowClient()


def register_tiny(tiny_trained: dict, workspace_commit: str | None = None, run_id: str = "run-1"):
    """Registers the tiny trained workspace (``tiny_trained``) as a challenger in its state's local
    tracking store; ``workspace_commit`` defaults to the trained one. Returns the RegisterResult."""
    from promotion.register import register_challenger

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    commit = workspace_commit or tiny_trained["trained"].workspace_commit
    return register_challenger(tiny_trained["state"], tiny_trained["params"], tiny_trained["data"], commit,
                               "test_dag", run_id)


def alias(client, name: str) -> str | None:
    from promotion.registry import alias_version

    return alias_version(client, NAME, name)


@pytest.fixture(scope="module")
def registry(tiny_trained):
    """v1 registered, gated (first run) and promoted; v2 (same checkpoint) registered and gated."""
    from promotion.promote import gate_challenger, promote

    state, params = tiny_trained["state"], tiny_trained["params"]
    data, trained = tiny_trained["data"], tiny_trained["trained"]
    v1 = register_tiny(tiny_trained)
    first = gate_challenger(state, params, v1.version, data.golden_rev)
    moved1 = promote(state, params, first)
    v2 = register_tiny(tiny_trained, "same-checkpoint-again", "run-2")
    second = gate_challenger(state, params, v2.version, data.golden_rev)
    moved2 = promote(state, params, second)
    return {"state": state, "params": params, "data": data, "trained": trained, "v1": v1, "v2": v2,
            "first": first, "second": second, "moved1": moved1, "moved2": moved2}


def test_first_run_promotes_on_value_thresholds_only(registry):
    first, client = registry["first"], client_for(registry["state"])
    assert first.decision == "promoted" and first.first_run and registry["moved1"].moved
    assert "only the value thresholds" in first.reason
    assert first.serving_check["ok"], first.serving_check
    assert alias(client, "champion") == registry["v1"].version
    tags = client.get_model_version(NAME, registry["v1"].version).tags
    assert tags["decision"] == "promoted" and "champion_score" not in tags  # no champion: no tag, never "none"
    assert not {"none", "None"} & set(tags.values()), sorted(k for k, v in tags.items() if v in ("none", "None"))
    decision = json.loads(mlflow.artifacts.load_text(
        f"runs:/{registry['v1'].run_id}/comparison/{registry['data'].golden_rev}/decision.json"))
    assert decision["first_run"] is True and decision["serving_check"]["ok"] is True


def test_a_tie_is_rejected_and_no_alias_moves(registry):
    second, client = registry["second"], client_for(registry["state"])
    assert second.decision == "rejected" and not registry["moved2"].moved
    assert second.delta == 0.0 and second.candidate_score == second.champion_score
    lo, hi = second.interval
    assert lo == hi == 0.0  # identical predictions: the paired bootstrap has no spread
    assert alias(client, "champion") == registry["v1"].version
    assert alias(client, "challenger") == registry["v2"].version
    assert alias(client, "previous-champion") is None


def test_review_material_in_mlflow(registry):
    client = client_for(registry["state"])
    v2 = client.get_model_version(NAME, registry["v2"].version)
    t = v2.tags
    from promotion.registry import VERSION_TAGS

    # the version row: exactly the tags a reviewer filters by (decision, scores, delta, revisions, run ids)
    assert set(t) == set(VERSION_TAGS), sorted(set(t) ^ set(VERSION_TAGS))
    assert all(t[key] not in (None, "") for key in VERSION_TAGS)
    assert t["champion_version"] == registry["v1"].version
    assert t["mlflow_run_id"] == v2.run_id
    # the rest of the lineage on the run, the rest of the decision in its artifact
    run_tags = client.get_run(v2.run_id).data.tags
    for key in ("git_commit", "listings_md5", "golden_rev", "params_hash", "dag_id", "data_rev"):
        assert run_tags.get(key) not in (None, ""), key
    assert run_tags["golden_rev"] == registry["data"].golden_rev
    decision = json.loads(mlflow.artifacts.load_text(
        f"runs:/{v2.run_id}/comparison/{registry['data'].golden_rev}/decision.json"))
    assert decision["mode"] == "interval" and decision["decision"] == t["decision"]
    slices = decision["slices"]
    assert len(slices) == 3 and all(s["passed"] for s in slices)
    md = v2.description
    assert "REJECTED" in md and "| business-weighted score |" in md and "training run" in md
    assert slices[0]["category"] in md
    files = {Path(f.path).name for f in client.list_artifacts(v2.run_id, f"comparison/{registry['data'].golden_rev}")}
    assert {"per_class_delta.csv", "confusion_challenger.png", "confusion_champion.png", "decision.json",
            "report.md"} <= files
    from promotion.registry import golden_frame

    assert_comparison_artifacts(client, registry["v2"].version, registry["second"],
                                golden_frame(registry["state"]), registry["params"])
    cached = client.list_artifacts(v2.run_id, "golden_predictions")
    assert sorted(Path(f.path).name for f in cached) == sorted(["by_listing.parquet",
                                                                f"{registry['data'].golden_rev}.csv"])


def test_champion_scores_are_cached_per_golden_revision(registry):
    from promotion.registry import golden_frame, score_version

    state, params = registry["state"], registry["params"]
    golden = golden_frame(state)
    rev = registry["data"].golden_rev
    summary, listings = score_version(state, params, registry["v1"].version, golden, rev)
    assert summary["golden_rev"] == rev and len(listings.predicted_paths) == len(golden)
    # another golden revision is never answered from this cache: scored again, its own tag
    other, _ = score_version(state, params, registry["v1"].version, golden, "another-revision")
    assert other["business_weighted_score"] == summary["business_weighted_score"]
    run_id = client_for(state).get_model_version(NAME, registry["v1"].version).run_id
    cached = {Path(f.path).name for f in client_for(state).list_artifacts(run_id, "golden_predictions")}
    assert {f"{rev}.csv", "another-revision.csv"} <= cached


def test_a_version_is_scored_only_on_golden_listings_it_has_not_scored(registry, caplog):
    """The per-listing cache: on a golden set where three listings' titles changed (another
    revision), only those three go through the model; the others' predictions are the cached
    ones, and the changed listings' are what a full scoring gives."""
    import logging

    from promotion.registry import golden_frame, score_version

    state, params, version = registry["state"], registry["params"], registry["v1"].version
    golden = golden_frame(state)
    first, before = score_version(state, params, version, golden, registry["data"].golden_rev)
    changed = golden.copy()
    changed.loc[changed.index[:3], "title"] = ["Wrist watch", "Leather handbag", "Cotton t-shirt"]
    with caplog.at_level(logging.DEBUG, logger="promotion.registry"):
        _, after = score_version(state, params, version, changed, "three-titles-changed")
    assert f"on {len(golden)} golden listings: {len(golden) - 3} from its prediction cache" in caplog.text
    assert "), 3 predicted" in caplog.text
    assert after.predicted_paths[3:] == before.predicted_paths[3:]
    import mlflow

    from training.serving import model_input

    full = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(model_input(changed.head(3)))
    assert list(after.predicted_paths[:3]) == [str(p) for p in full["category_path"]]


def test_golden_label_issue_probabilities_are_predicted_only_for_new_golden_listings(registry, caplog):
    """The champion's class probabilities for golden label issues (the gate computed them on the
    fixture's golden set) come from its run's probability cache; on a golden set where three
    listings' titles changed, only those three are predicted, and every row equals what its
    checkpoint predicts (float16 precision) in the new set's order."""
    import logging

    import numpy as np

    from promotion.registry import PROBABILITY_CACHE, golden_frame, golden_probabilities
    from training.inference import load_checkpoint, predict_paths

    state, version = registry["state"], registry["v1"].version
    client = client_for(state)
    golden = golden_frame(state)
    changed = golden.copy()
    changed.loc[changed.index[:3], "title"] = ["Wrist watch", "Leather handbag", "Cotton t-shirt"]
    changed = changed.iloc[::-1]  # another order: rows follow the frame, not the cache
    with caplog.at_level(logging.INFO, logger="promotion.registry"):
        before, classes = golden_probabilities(client, NAME, version, golden)
        after, classes_after = golden_probabilities(client, NAME, version, changed)
    n = len(golden)
    cached = "(0 of them from its evaluate stage, 0 probed)"
    assert f"golden probabilities on {n} listings: {n} from its cache {cached}, 0 predicted" in caplog.text
    assert f"golden probabilities on {n} listings: {n - 3} from its cache {cached}, 3 predicted" in caplog.text
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}"))
    loaded = load_checkpoint(next(local.rglob("model.pt")))
    assert classes == classes_after == list(loaded.labels)
    _, direct = predict_paths(loaded, changed, changed["image_path"].tolist())
    assert after.shape == (n, len(classes)) and after.dtype == np.float32
    np.testing.assert_array_equal(after, direct.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(after[:-3], before[::-1][:-3])  # the untouched rows, cached
    assert np.allclose(after.sum(axis=1), 1.0, atol=5e-3)
    run_id = client.get_model_version(NAME, version).run_id
    with np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PROBABILITY_CACHE)) as npz:
        from promotion.registry import listing_keys

        assert sorted(npz["keys"].tolist()) == sorted(listing_keys(changed)) and npz["probs"].dtype == np.float16


def test_a_new_version_starts_its_scores_from_its_evaluate_stage(registry, caplog):
    """A version registered from a run evaluated on this golden revision is not predicted again
    on the whole golden set: a probe of PROBE_ROWS listings is, and the rest are its evaluate
    stage's predictions; the figures are those of the evaluate stage's predictions.csv."""
    import logging

    from promotion.registry import PROBE_ROWS, golden_frame, score_version

    state, params, rev = registry["state"], registry["params"], registry["data"].golden_rev
    v3 = register_tiny(registry, "evaluated-again", "run-3")
    golden = golden_frame(state)
    with caplog.at_level(logging.DEBUG, logger="promotion.registry"):
        summary, listings = score_version(state, params, v3.version, golden, rev)
    probed = min(PROBE_ROWS, len(golden))
    assert (f"from its prediction cache ({len(golden) - probed} of them from its evaluate stage, {probed} "
            f"probed), {probed} predicted") in caplog.text
    evaluated = pd.read_csv(state.workspace / "reports" / "predictions.csv", dtype={"listing_id": str})
    assert list(listings.predicted_paths) == evaluated["predicted_path"].tolist()
    assert summary["accuracy"] == pytest.approx(float((evaluated["predicted_path"] == evaluated["true_path"]).mean()))


def test_a_new_versions_label_issue_probabilities_start_from_its_evaluate_stage(registry, caplog):
    """A version registered from a run evaluated on this golden set has its golden class
    probabilities from the evaluate stage (``evaluation/golden_probs.npz``): only the probe goes
    through its checkpoint, and every row agrees with the checkpoint's own prediction."""
    import logging

    import numpy as np

    from promotion.registry import PROBE_ROWS, golden_frame, golden_probabilities
    from training.inference import load_checkpoint, predict_paths

    state = registry["state"]
    client = client_for(state)
    version = register_tiny(registry, "evaluated-once-more", "run-4").version
    assert "golden_probs.npz" in {Path(f.path).name for f in client.list_artifacts(
        client.get_model_version(NAME, version).run_id, "evaluation")}
    golden = golden_frame(state)
    with caplog.at_level(logging.INFO, logger="promotion.registry"):
        probs, classes = golden_probabilities(client, NAME, version, golden)
    n, probed = len(golden), min(PROBE_ROWS, len(golden))
    assert (f"golden probabilities on {n} listings: {n} from its cache ({n} of them from its evaluate stage, "
            f"{probed} probed), 0 predicted") in caplog.text
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}"))
    loaded = load_checkpoint(next(local.rglob("model.pt")))
    _, direct = predict_paths(loaded, golden, golden["image_path"].tolist())
    assert classes == list(loaded.labels)
    np.testing.assert_allclose(probs, direct, atol=2e-3)


def test_an_unloadable_champion_fails_the_gate_and_moves_nothing(registry, tmp_path):
    """A champion whose model files are gone: clear error, no decision tag, aliases unchanged."""
    from promotion.promote import gate_challenger

    state, params = registry["state"], registry["params"]
    client = client_for(state)
    before = {a: alias(client, a) for a in ("champion", "challenger", "previous-champion")}
    gone = client.create_model_version(NAME, source=(tmp_path / "deleted-model").as_uri())
    client.set_registered_model_alias(NAME, "champion", gone.version)
    try:
        with pytest.raises(RuntimeError, match=r"champion \(version \d+\) cannot be re-scored"):
            gate_challenger(state, params, registry["v2"].version, registry["data"].golden_rev)
        assert alias(client, "champion") == str(gone.version)
        assert alias(client, "challenger") == before["challenger"]
        assert "decision" not in client.get_model_version(NAME, gone.version).tags
    finally:
        client.set_registered_model_alias(NAME, "champion", before["champion"])


def test_serving_check_fails_in_a_fresh_process_for_a_broken_uri(registry):
    from promotion.serving_check import check_serving

    state = registry["state"]
    rows = [{"title": "Nike Men Blue T-shirt", "image_path": "/nonexistent.jpg"}]
    bad = check_serving(state.tracking_uri, f"models:/{NAME}/999", rows, timeout_s=120)
    assert not bad["ok"] and "exit" in bad["detail"]


def test_unreachable_tracking_server_fails_gate_and_promote(registry, monkeypatch):
    from mlflow.exceptions import MlflowException

    from promotion.promote import gate_challenger, promote

    state, params = registry["state"], registry["params"]
    before = {a: alias(client_for(state), a) for a in ("champion", "challenger", "previous-champion")}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(MlflowException):
        gate_challenger(state, params, registry["v2"].version, registry["data"].golden_rev)
    forced = registry["second"].model_copy(update={"promote": True, "decision": "promoted"})
    with pytest.raises(MlflowException):
        promote(state, params, forced)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    after = {a: alias(client_for(state), a) for a in ("champion", "challenger", "previous-champion")}
    assert after == before


def test_record_review_rejection_keeps_aliases_and_is_recorded(registry):
    from promotion.promote import record_review

    state, params = registry["state"], registry["params"]
    client = client_for(state)
    before = {a: alias(client, a) for a in ("champion", "challenger", "previous-champion")}
    would_promote = registry["second"].model_copy(update={"promote": True, "decision": "promoted"})
    out = record_review(state, params, would_promote,
                        {"chosen_options": ["Reject"], "responded_by_user": {"id": "7", "name": "ana"}}, True)
    assert out.approval == "rejected"
    tags = client.get_model_version(NAME, registry["v2"].version).tags
    assert tags["approval"] == "rejected" and tags["approval_by"] == "ana"
    assert tags["decision"] == "rejected" and "reviewer ana rejected" in tags["reason"]
    description = client.get_model_version(NAME, registry["v2"].version).description
    assert description.startswith("## Human review: **REJECTED** by ana") and "## Gate:" in description
    # a retried review replaces its heading instead of stacking another
    record_review(state, params, would_promote,
                  {"chosen_options": ["Reject"], "responded_by_user": {"id": "7", "name": "ana"}}, True)
    again = client.get_model_version(NAME, registry["v2"].version).description
    assert again == description and again.count("## Human review") == 1
    assert {a: alias(client, a) for a in before} == before
    assert record_review(state, params, registry["first"], None, False).approval == "not required"


def test_rollback_cli_moves_champion_and_back(registry):
    state = registry["state"]
    client = client_for(state)
    v1, v2 = registry["v1"].version, registry["v2"].version
    env = {**os.environ, "LCP_STATE_DIR": str(state.root), "LCP_PARAMS": str(state.root / "params.yaml")}
    env.pop("MLFLOW_TRACKING_URI", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "promotion.rollback", *args], cwd=PROJECT_ROOT, env=env,
                              capture_output=True, text=True, timeout=180)

    from promotion.rollback import RollbackError, rollback

    out = rollback(state, registry["params"], v2, "test: v2 back in")  # with the serving check
    assert out == {"champion": v2, "previous_champion": v1, "moved": True}
    assert alias(client, "champion") == v2 and alias(client, "previous-champion") == v1
    t2 = client.get_model_version(NAME, v2).tags
    assert t2["rollback_from"] == v1 and t2["rollback_reason"] == "test: v2 back in" and t2["rollback_by"] == "cli"
    assert client.get_model_version(NAME, v1).tags["rolled_back_to"] == v2
    proc = cli("--to", "previous-champion", "--no-check", "--reason", "roll forward")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert alias(client, "champion") == v1 and alias(client, "previous-champion") == v2
    with pytest.raises(RollbackError, match="no version 4242"):
        rollback(state, registry["params"], "4242")
    assert alias(client, "champion") == v1


def test_lineage_a_reviewer_reads_in_the_ui(registry):
    """The run lists its datasets (with DVC sources and row counts), charts one point per epoch,
    lasts as long as training did; the description names the batches and links relatively."""
    client = client_for(registry["state"])
    v1 = client.get_model_version(NAME, registry["v1"].version)
    run = client.get_run(v1.run_id)
    ws = registry["state"].workspace
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "golden"}
    for name, d in inputs.items():
        rows = len(pd.read_parquet(ws / "data" / "prepared" / f"{name}.parquet"))
        assert json.loads(d.dataset.profile)["num_rows"] == rows
        source = json.loads(d.dataset.source)
        assert d.dataset.source_type == "dvc" and source["rev"] == registry["trained"].workspace_commit
        assert source["path"] == f"data/prepared/{name}.parquet" and d.dataset.digest
        assert {t.key: t.value for t in d.tags}["mlflow.data.context"] in {"training", "validation", "golden"}
    log = json.loads((ws / "models" / "train_log.json").read_text())
    epochs = [e["epoch"] for e in log["epochs"]]
    history = client.get_metric_history(v1.run_id, "epoch_val_accuracy")
    assert [m.step for m in history] == epochs and len(epochs) >= 1
    assert [m.value for m in history] == [e["val_accuracy"] for e in log["epochs"]]
    assert len(client.get_metric_history(v1.run_id, "epoch_lr")) == len(epochs)
    assert (run.info.end_time - run.info.start_time) / 1000 >= log["total_seconds"]
    batches = json.loads(mlflow_text(client, v1.run_id, "lineage/batches.json"))
    train_val = pd.concat([pd.read_parquet(ws / "data" / "prepared" / f"{s}.parquet") for s in ("train", "val")])
    assert {b["batch_id"]: b["listings"] for b in batches} == train_val["batch_id"].value_counts().to_dict()
    md = v1.description
    assert f"](#/experiments/{run.info.experiment_id}/runs/{v1.run_id})" in md  # any host, any port
    assert "localhost:5000" not in md
    assert all(f"| {b['batch_id']} | {b['listings']} |" in md for b in batches[-3:])
    assert "| data: the DVC workspace commit after versioning" in md
    # the whole lineage is an artifact the description links to, which ends with its Airflow run
    assert f"](#/experiments/{run.info.experiment_id}/runs/{v1.run_id}/artifacts/lineage/lineage.md)" in md
    assert md.splitlines()[-1].startswith("| the Airflow run that trained it | `")
    full = mlflow_text(client, v1.run_id, "lineage/lineage.md")
    assert all(f"| {b['batch_id']} | {b['listings']} |" in full for b in batches)
    assert full.rstrip().splitlines()[-1] == f"| the Airflow run that trained it | `{run.data.tags['airflow_run_id']}` |"
    table = pd.read_csv(io.StringIO(mlflow_text(client, v1.run_id, "lineage/batches.csv")))
    assert table["batch_id"].tolist() == [b["batch_id"] for b in batches]


def mlflow_text(client, run_id: str, path: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def mlflow_bytes(client, run_id: str, path: str) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_bytes()


PER_CLASS_COLUMNS = ["category_path", "support", "value", "recall_candidate", "recall_champion", "delta"]


def assert_comparison_artifacts(client, version: str, result, golden: pd.DataFrame, params: Params) -> None:
    """The gate's comparison artifacts of ``version`` (``comparison/<golden_rev>/`` on its run)
    hold what the two models predicted on the golden set, and the gate's own decision.

    The expected figures are computed here from the golden truth and each version's cached golden
    predictions (``golden_predictions/<golden_rev>.csv``, what the gate scored: their accuracy
    must be the gate's), not read back from the code that wrote the artifacts.

    Args:
        client: an MLflow client on the registry.
        version: the challenger the gate ran on.
        result: the gate's :class:`common.results.GateResult` for it.
        golden: :func:`promotion.registry.golden_frame`.
        params: the params the gate ran with (``score``).
    """
    import io

    import numpy as np
    from PIL import Image

    from common.scoring import category_value
    from promotion.promote import REVIEW_HEADING

    rev = result.golden_rev
    folder = f"comparison/{rev}"
    mv = client.get_model_version(NAME, version)
    truth = golden["category_path"].tolist()

    def predictions(v: str) -> list[str]:
        run_id = client.get_model_version(NAME, v).run_id
        frame = pd.read_csv(io.StringIO(mlflow_text(client, run_id, f"golden_predictions/{rev}.csv")),
                            dtype=str, keep_default_na=False)
        assert frame["listing_id"].tolist() == [str(i) for i in golden["listing_id"]]
        return frame["predicted_path"].tolist()

    def recall(pred: list[str], category: str) -> float:
        hits = [p == t for p, t in zip(pred, truth, strict=True) if t == category]
        return sum(hits) / len(hits)

    cand = predictions(version)
    champ = predictions(result.champion_version) if result.champion_version else None
    assert np.mean(np.equal(cand, truth)) == pytest.approx(result.candidate_accuracy)
    if champ is not None:
        assert np.mean(np.equal(champ, truth)) == pytest.approx(result.champion_accuracy)

    # decision.json: the decision the gate returned, whole
    assert json.loads(mlflow_text(client, mv.run_id, f"{folder}/decision.json")) == result.to_dict()

    # per_class_delta.csv: one row per golden category, most valuable first, both models' recalls
    per_class = pd.read_csv(io.StringIO(mlflow_text(client, mv.run_id, f"{folder}/per_class_delta.csv")))
    assert list(per_class.columns) == PER_CLASS_COLUMNS
    assert sorted(per_class["category_path"]) == sorted(set(truth))
    s = params.score
    expected_value = {c: truth.count(c) * category_value(c, s.value_table, s.default_value) for c in set(truth)}
    assert per_class["category_path"].tolist() == sorted(expected_value, key=lambda c: (-expected_value[c], c))
    for row in per_class.itertuples():
        c = row.category_path
        assert row.support == truth.count(c), c
        assert row.value == pytest.approx(expected_value[c]), c
        assert row.recall_candidate == pytest.approx(recall(cand, c)), c
        if champ is None:
            assert np.isnan(row.recall_champion) and np.isnan(row.delta), c
        else:
            assert row.recall_champion == pytest.approx(recall(champ, c)), c
            assert row.delta == pytest.approx(recall(cand, c) - recall(champ, c)), c

    # the confusion matrices: a real PNG of a sane size, and its counts beside it
    sides = [("challenger", cand)] + ([("champion", champ)] if champ is not None else [])
    names = {Path(f.path).name for f in client.list_artifacts(mv.run_id, folder)}
    assert ("confusion_champion.png" in names) == (champ is not None)
    for side, pred in sides:
        with Image.open(io.BytesIO(mlflow_bytes(client, mv.run_id, f"{folder}/confusion_{side}.png"))) as img:
            assert img.format == "PNG"
            width, height = img.size
            assert width == height and 600 <= width <= 2000, img.size  # 6 in+ at 110 dpi, square
            low, high = img.convert("L").getextrema()
            assert high - low > 100, (side, low, high)  # drawn on, not a blank canvas
        counts = pd.read_csv(io.StringIO(mlflow_text(client, mv.run_id, f"{folder}/confusion_{side}.csv")),
                             index_col=0)
        labels = sorted(set(truth) | set(pred))
        assert counts.index.tolist() == labels and counts.columns.tolist() == labels
        assert int(np.trace(counts.to_numpy())) == sum(p == t for p, t in zip(pred, truth, strict=True))
        assert counts.sum(axis=1).to_dict() == {c: truth.count(c) for c in labels}
        assert counts.sum(axis=0).to_dict() == {c: pred.count(c) for c in labels}

    # report.md: the version description's gate part (a human review heading may sit above it)
    report = mlflow_text(client, mv.run_id, f"{folder}/report.md")
    description = mv.description
    if description.startswith(REVIEW_HEADING):
        description = description.split("\n\n", 1)[1]
    assert report == description
    assert report.startswith(f"## Gate: **{result.decision.upper()}**")


def test_the_version_lists_its_pinned_serving_requirements(registry):
    """The registered model's requirements.txt is the explicit pinned list (torch included), not
    MLflow's inference, which listed this platform's own distribution that no index holds."""
    from promotion.register import serving_requirements

    _ = client_for(registry["state"])
    listed = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}/{registry['v1'].version}")).read_text()
    requirements = [line for line in listed.splitlines() if line and not line.startswith("#")]
    assert requirements == serving_requirements()
    assert any(r.startswith("torch==") for r in requirements)
    assert any(r.startswith("scikit-learn==") for r in requirements)  # the title expert's features
    assert not any(r.startswith("listing-classifier-platform") for r in requirements)
