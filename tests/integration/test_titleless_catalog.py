"""A catalog without titles, onboarded by configuration only: real fashion listings from ../shared
with their title column removed, the shipped adapter ``catalogs/fashion-images.yaml``
(``title: null``) and ``train.branches: image``, through the retraining DAG (``dag.test()``: real
Airflow, GX, DVC, torch, MLflow). Validation has no title expectations, the model trains its image
and structured branches, the first version is promoted, and the served champion classifies
listings that carry no title at all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.params import load_params, write_params
from common.state import State
from ingestion.feed import publish
from tests.integration.test_dag_end_to_end import _client, dag_test_env, run_dag, small_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CATALOG = "catalogs/fashion-images.yaml"
WEEK = datetime(2026, 10, 5, tzinfo=UTC)
TITLE_COLUMN = "productDisplayName"


@pytest.fixture(scope="module")
def titleless(tmp_path_factory, fashion_dir, airflow_db):
    root = tmp_path_factory.mktemp("titleless")
    state = State(root / "state").ensure()
    params_file = small_params(root / "params.yaml", floor=0.0)
    params = load_params(params_file).with_overrides({
        "catalog": CATALOG,
        # all epochs: on ~20 validation listings early stopping keeps a near-random first epoch
        "train": {"branches": "image", "epochs": 10, "early_stopping_patience": 0},
    })
    write_params(params, params_file)
    with dag_test_env(state, params_file):
        feed = Path(state.feed_url)
        (batch,) = publish(fashion_dir, feed, weeks=1, catalog=load_catalog(CATALOG), start=WEEK.date(),
                           limit=400)
        listings = feed / batch / "styles.csv"
        frame = pd.read_csv(listings, dtype=str, keep_default_na=False)
        frame.drop(columns=[TITLE_COLUMN]).to_csv(listings, index=False)  # the catalog has no titles
        run = run_dag(WEEK)
        yield {"state": state, "params": load_params(params_file), "batch": batch, "run": run,
               "published": len(frame)}


def test_the_run_succeeds_without_title_expectations(titleless):
    from ingestion.manifest import read_manifest

    assert str(titleless["run"].state) == "success"
    report = read_manifest(titleless["state"].manifest)[titleless["batch"]]["report"]
    reasons = report["reasons"]
    assert "missing_title" not in reasons and "title_length_out_of_range" not in reasons
    assert report["accepted_rows"] >= 0.9 * titleless["published"], report  # duplicates etc. only


def test_the_promoted_model_reads_images_and_fields_only(titleless):
    import mlflow

    client = _client(titleless["state"])
    champion = client.get_model_version_by_alias("listing-classifier", "champion")
    assert champion.tags["decision"] == "promoted"
    served = mlflow.pyfunc.load_model(f"models:/listing-classifier/{champion.version}")
    model = served.unwrap_python_model().loaded.model
    assert model.text_encoder is None
    assert model.image_encoder is not None and model.field_encoder is not None
    run = client.get_run(champion.run_id)
    assert run.data.params["train.branches"] == "image"
    metrics = run.data.metrics  # it learned from the images and fields: above the majority class
    assert metrics["baseline_accuracy"] < metrics["accuracy"], metrics
    assert metrics["baseline_business_weighted_score"] < metrics["business_weighted_score"], metrics


def test_the_champion_serves_listings_without_a_title(titleless):
    import mlflow

    from common.store import image_path, read_store
    from training.serving import model_input

    state = titleless["state"]
    stored = read_store(state.listings_store).head(16)
    frame = model_input(stored.assign(image_path=[str(image_path(state.listings_store, k))
                                                  for k in stored["image_key"]]))
    frame = frame.drop(columns=[c for c in ("title", "description") if c in frame.columns])
    _client(state)
    champion = mlflow.pyfunc.load_model("models:/listing-classifier@champion")
    served = champion.predict(frame)
    assert len(served) == 16 and served["probability"].between(0, 1).all()
    assert set(served["category_path"]) <= set(champion.unwrap_python_model().loaded.labels)
    # a title, if a client sends one, changes nothing: the model has no text branch
    titled = champion.predict(frame.assign(title="Nike Men Blue Running Shoes"))
    assert titled["category_path"].tolist() == served["category_path"].tolist()
    assert titled["probability"].tolist() == served["probability"].tolist()
