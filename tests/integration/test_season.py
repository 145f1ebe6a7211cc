"""Three weeks of a catalog that changes, through the retraining DAG (dag.test(): real Airflow,
GX, DVC, torch, MLflow) on a few hundred real fashion listings published in time order.

Week 1's feed taxonomy lacks one real category, so its listings are held back; a person adds it
(``validation.taxonomy.add_category``) before week 2, whose run releases them and trains on
them. Checked: the golden set grows and never meets training at any revision (by listing id),
the released category is among week 2's model's classes, the champion's fresh-batch figures
exist for every week that had a champion (one metric step per week), a retry of each task after
the season repeats nothing, and the season table (:mod:`monitoring.season`) has one row per week.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import load_catalog
from common.state import State
from ingestion.feed import publish
from tests.integration.test_dag_end_to_end import (
    DAG_ID,
    _client,
    dag_test_env,
    run_dag,
    small_params,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = datetime(2027, 1, 4, tzinfo=UTC)  # Mondays apart from the other DAG tests' logical dates
WEEKS = [START + timedelta(weeks=k) for k in range(3)]
CATALOG = load_catalog("catalogs/fashion.yaml")


def _ids(path: Path) -> set[str]:
    return set(pd.read_parquet(path, columns=["listing_id"])["listing_id"]) if path.exists() else set()


def _pick_category(week1: pd.DataFrame) -> str:
    """A real leaf of week 1 with a few listings: held back, it stays under the bad-row bound."""
    paths = week1[CATALOG.columns.category_path].agg(" > ".join, axis=1)
    counts = paths.value_counts()
    fitting = counts[(counts >= 3) & (counts <= 0.12 * len(week1))]
    return str(fitting.index[0])


@pytest.fixture(scope="module")
def season(tmp_path_factory, fashion_dir, airflow_db):
    from training.serving import load_checkpoint
    from validation.taxonomy import add_category

    root = tmp_path_factory.mktemp("season")
    state = State(root / "state").ensure()
    with dag_test_env(state, small_params(root / "params.yaml", floor=0.0)):
        feed = Path(state.feed_url)
        batches = publish(fashion_dir, feed, weeks=3, catalog=CATALOG, start=START.date(), limit=420,
                          order="time")
        week1 = pd.read_csv(feed / batches[0] / "styles.csv", dtype=str, keep_default_na=False)
        held = _pick_category(week1)
        held_ids = set(week1.loc[week1[CATALOG.columns.category_path].agg(" > ".join, axis=1) == held, "id"])
        taxonomy = feed / CATALOG.taxonomy.file
        taxonomy.write_text(json.dumps([p for p in json.loads(taxonomy.read_text()) if p != held]))
        runs, weekly = [], []
        for k, logical_date in enumerate(WEEKS):
            if k == 1:  # a person extends the taxonomy after reading week 1's report
                add_category(state, CATALOG, held, by="test", reason="seen held back in week 1")
            runs.append(run_dag(logical_date))
            ws = state.workspace
            weekly.append({
                "golden": _ids(ws / "data" / "golden" / "golden.parquet"),
                "train": _ids(ws / "data" / "prepared" / "train.parquet"),
                "val": _ids(ws / "data" / "prepared" / "val.parquet"),
                "classes": set(load_checkpoint(ws / "models" / "model.pt").labels),
            })
        yield {"state": state, "runs": runs, "weekly": weekly, "held": held, "held_ids": held_ids,
               "batches": batches}


def _xcoms(run_id: str) -> dict:
    from monitoring.season import dag_runs

    return next(r for r in dag_runs(DAG_ID) if r["run_id"] == run_id)["xcom"]


def test_every_week_succeeds(season):
    assert [str(r.state) for r in season["runs"]] == ["success"] * 3


def test_the_golden_set_grows_and_never_meets_training(season):
    weekly = season["weekly"]
    sizes = [len(w["golden"]) for w in weekly]
    assert sizes[0] > 0 and sizes[0] < sizes[1] < sizes[2], sizes
    ever_golden: set[str] = set()
    for w in weekly:  # at every revision: no golden id of this or any earlier week is trained on
        ever_golden |= w["golden"]
        assert w["train"] and not (ever_golden & (w["train"] | w["val"]))
    assert weekly[0]["golden"] <= weekly[2]["golden"]  # a golden listing stays golden


def test_a_held_back_category_is_released_after_its_addition_and_learned(season):
    from common.store import read_store
    from ingestion.manifest import read_manifest

    held, ids, weekly = season["held"], season["held_ids"], season["weekly"]
    assert held not in weekly[0]["classes"]
    manifest = read_manifest(season["state"].manifest)
    assert manifest[season["batches"][0]]["report"]["reasons"].get("unknown_category") == len(ids)
    week2 = _xcoms(season["runs"][1].run_id)["validate"]
    assert week2["released_listings"] == len(ids) and week2["released"]
    store = read_store(season["state"].listings_store, ["listing_id", "category_path", "batch_id"])
    released = store[store["listing_id"].isin(ids)]
    assert set(released["listing_id"]) == ids and set(released["category_path"]) == {held}
    assert all(b != season["batches"][0] for b in released["batch_id"])  # stored by the release
    assert set(released["batch_id"]) == set(week2["released"]) <= set(manifest)  # recorded there
    assert held in weekly[1]["classes"] and held in weekly[2]["classes"]


def test_the_champions_fresh_batch_figures_exist_for_every_week(season):
    monitored = [_xcoms(r.run_id)["monitor"] for r in season["runs"]]
    assert monitored[0]["skipped"] == "no champion yet"
    for m in monitored[1:]:
        assert m["listings"] > 0 and 0 <= m["accuracy"] <= 1 and m["champion_version"]
    history = _client(season["state"]).get_metric_history(monitored[1]["monitoring_run_id"], "fresh_accuracy")
    assert sorted(p.step for p in history) == [monitored[1]["step"], monitored[2]["step"]]
    assert [monitored[1]["step"], monitored[2]["step"]] == [2, 3]  # the season table's week numbers
    from mlflow.entities import RunStatus

    run = _client(season["state"]).get_run(monitored[1]["monitoring_run_id"])
    assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)


def test_a_retry_of_each_task_after_the_season_repeats_nothing(season):
    from common.params import load_params
    from common.results import DataVersionResult, ValidateResult
    from ingestion.versioning import version_data
    from monitoring.fresh_batch import FreshBatchResult, score_champion_on_fresh
    from promotion.promote import gate_challenger
    from promotion.register import register_challenger
    from validation.staged import validate_staged_batches

    state, params = season["state"], load_params()
    last = season["runs"][-1]
    x = _xcoms(last.run_id)
    client = _client(state)
    versions = len(client.search_model_versions("name = 'listing-classifier'"))
    champion = client.get_model_version_by_alias("listing-classifier", "champion").version
    from ingestion.manifest import read_manifest

    validated = ValidateResult.from_xcom(x["validate"])
    before = read_manifest(state.manifest)
    again = validate_staged_batches(state, params, list(validated.stored_batches))
    assert again.stored_batches == () and read_manifest(state.manifest) == before  # versioned: not again
    monitored = FreshBatchResult.from_xcom(x["monitor"])
    assert score_champion_on_fresh(state, params, list(validated.stored_batches)) == monitored
    history = client.get_metric_history(monitored.monitoring_run_id, "fresh_accuracy")
    assert len(history) == 2
    data = DataVersionResult.from_xcom(x["version_data"])
    from ingestion.workspace import run_git

    head = run_git(state.workspace, "rev-parse", "HEAD").strip()  # train_evaluate committed after it
    retried = version_data(state, params, note="retry")
    # no new workspace commit, the same hashes (the growing golden set is re-added, unchanged)
    assert retried.data_rev == head and retried.golden_rev == data.golden_rev
    assert retried.listings_md5 == data.listings_md5
    registered = register_challenger(state, params, data, x["train_evaluate"]["workspace_commit"], DAG_ID,
                                     last.run_id, validation=validated)
    assert registered.version == x["register"]["version"]
    assert len(client.search_model_versions("name = 'listing-classifier'")) == versions
    decision = gate_challenger(state, params, registered.version, data.golden_rev)
    assert client.get_model_version_by_alias("listing-classifier", "champion").version == champion
    if x["promote"]["decision"] == "promoted":
        assert decision.decision == "unchanged"
    else:
        assert decision.decision == x["gate"]["decision"]


def test_the_season_table_has_a_row_per_week(season, tmp_path):
    from common.params import load_params
    from monitoring.season import COLUMNS, dag_runs, format_table, plot_season, season_table

    ours = {r.run_id for r in season["runs"]}
    runs = [r for r in dag_runs(DAG_ID) if r["run_id"] in ours]
    table = season_table(season["state"], load_params(), runs)
    assert list(table.columns) == list(COLUMNS) and len(table) == 3
    assert table["batches"].str.contains(season["batches"][0]).iloc[0]
    assert table["held_back"].tolist()[0] == len(season["held_ids"])
    assert table["released"].tolist() == [0, len(season["held_ids"]), 0]
    assert table["golden_size"].is_monotonic_increasing and table["golden_size"].iloc[0] > 0
    assert table["fresh_score"].isna().tolist() == [True, False, False]
    assert table["decision"].iloc[0] == "promoted" and table["seconds_train_evaluate"].gt(0).all()
    assert table["new_categories"].iloc[0] > 0
    assert season["held"] in table["new_category_names"].iloc[1]  # learned the week it was released
    text = format_table(table)
    assert len(text.splitlines()) == 4
    png = plot_season(table, tmp_path / "season.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
