"""The champion on a fresh batch (monitoring.fresh_batch): real registry, real model, real batch.

The session's tiny trained workspace is copied with a registry of its own; its model is
registered and promoted (the champion). A new weekly batch of real fashion listings is published
to a feed, ingested and validated into the store (never trained on); the champion is then scored
on its fresh listings: figures, one monitoring run with a metric history stepped by week, the
label-issue CSV, and a retry that repeats nothing.
"""

from __future__ import annotations

import io
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from ingestion.feed import publish
from tests.integration.test_promotion_champion import copy_state
from tests.integration.test_promotion_registry import NAME, client_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def monitored(tiny_trained, fashion_dir, tmp_path_factory):
    import mlflow

    from ingestion.ingest import ingest_new_batches
    from monitoring.fresh_batch import score_champion_on_fresh
    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from validation.staged import validate_staged_batches

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    root = tmp_path_factory.mktemp("monitoring")
    state = copy_state(tiny_trained["state"], root / "state")
    params = tiny_trained["params"].with_overrides({"gate": {"floor_score": 0.0, "floor_accuracy": 0.0}})
    data, trained = tiny_trained["data"], tiny_trained["trained"]
    before = score_champion_on_fresh(state, params, ["fashion-2026-11-02"])  # no champion yet
    v1 = register_challenger(state, params, data, trained.workspace_commit, "test_dag", "run-1")
    promote(state, params, gate_challenger(state, params, v1.version, data.golden_rev))
    os.environ.pop("LCP_FEED_URL", None)
    publish(fashion_dir, Path(state.feed_url), weeks=1, catalog=load_catalog("catalogs/fashion.yaml"),
            start=date(2026, 11, 2), limit=120)
    ingested = ingest_new_batches(state, params, datetime(2026, 11, 9, tzinfo=UTC))
    validated = validate_staged_batches(state, params, ingested.staged)
    batches = list(validated.stored_batches)
    first = score_champion_on_fresh(state, params, batches)
    again = score_champion_on_fresh(state, params, batches)  # a retried task
    client = client_for(state)
    history = {m: client.get_metric_history(first.monitoring_run_id, m)
               for m in ("fresh_accuracy", "fresh_business_weighted_score", "fresh_champion_version")}
    issues = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{first.monitoring_run_id}/label_issues/{batches[-1]}.csv")), dtype=str)
    return {"state": state, "params": params, "before": before, "v1": v1, "batches": batches,
            "first": first, "again": again, "history": history, "issues": issues, "client": client}


def test_without_a_champion_nothing_is_scored(monitored):
    assert monitored["before"].skipped == "no champion yet" and monitored["before"].listings == 0


def test_the_champion_is_scored_on_the_fresh_listings_only(monitored):
    from common.store import read_store
    from training.inference import load_checkpoint, predict_paths

    first, state = monitored["first"], monitored["state"]
    assert first.skipped is None and first.champion_version == monitored["v1"].version
    store = read_store(state.listings_store)
    older = set(read_store(state.listings_store, exclude_batches=monitored["batches"])["listing_id"])
    golden = set(pd.read_parquet(state.golden_dir / "golden.parquet")["listing_id"])
    fresh = store[store["batch_id"].isin(monitored["batches"]) & ~store["listing_id"].isin(older | golden)]
    assert first.listings == len(fresh) > 0
    # the figures are the checkpoint's own predictions on those listings
    from common.store import image_path

    loaded = load_checkpoint(state.workspace / "models" / "model.pt")
    paths, _ = predict_paths(loaded, fresh.reset_index(drop=True),
                             [str(image_path(state.listings_store, k)) for k in fresh["image_key"]])
    accuracy = sum(p == t for p, t in zip(paths, fresh["category_path"], strict=True)) / len(fresh)
    assert first.accuracy == pytest.approx(accuracy, abs=1e-6)
    assert 0.0 <= first.business_weighted_score <= 1.0
    assert set(first.recall) == set(fresh["category_path"])


def test_one_monitoring_run_charts_the_week_and_a_retry_adds_nothing(monitored):
    first, again, history = monitored["first"], monitored["again"], monitored["history"]
    assert again.to_xcom() == first.to_xcom()
    for name, points in history.items():
        assert [p.step for p in points] == [first.step], name  # one point, at the week's index
    assert history["fresh_accuracy"][0].value == pytest.approx(first.accuracy, abs=1e-6)
    assert int(history["fresh_champion_version"][0].value) == int(first.champion_version)
    runs = monitored["client"].search_runs(
        [monitored["client"].get_experiment_by_name(monitored["params"].registry.experiment).experiment_id],
        f"tags.`lcp.monitoring_model` = '{NAME}'")
    assert [r.info.run_id for r in runs] == [first.monitoring_run_id]
    assert runs[0].info.status == "FINISHED"  # a record, never "Running"
    # the step is the week's number as in the season table: 1 for the feed's first batch's week
    from common.batches import batch_date
    from ingestion.manifest import read_manifest

    dates = [batch_date(b) for b in read_manifest(monitored["state"].manifest)]
    first_week = min(d for d in dates if d is not None)
    assert first.step == (batch_date(monitored["batches"][-1]) - first_week).days // 7 + 1 >= 1


def test_label_issues_of_the_fresh_batch_are_an_artifact(monitored):
    from monitoring.label_issues import ISSUE_COLUMNS

    issues, first = monitored["issues"], monitored["first"]
    assert list(issues.columns) == list(ISSUE_COLUMNS)
    assert len(issues) == first.label_issues
    assert issues["self_confidence"].astype(float).between(0, 1).all()


def test_the_gate_names_the_leaves_it_cannot_see(monitored):
    """The fresh batch brings categories the golden set (frozen from the tiny store) lacks."""
    from common.store import read_store
    from promotion.promote import leaves_without_golden
    from promotion.registry import golden_frame

    state = monitored["state"]
    golden = golden_frame(state)
    blind = leaves_without_golden(state, golden)
    fresh = read_store(state.listings_store)
    fresh = set(fresh[fresh["batch_id"].isin(monitored["batches"])]["category_path"])
    assert blind and set(blind) <= set(read_store(state.listings_store)["category_path"])
    assert not set(blind) & set(golden["category_path"])
    assert fresh - set(golden["category_path"]) <= set(blind)
