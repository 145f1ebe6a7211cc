"""What a reviewer meets in the MLflow UI, on a real tracking store (SQLite): the experiment opens
as a model-training experiment, no record run of ours stays "Running", and the season CSV has no
cell that MLflow's CSV preview would draw empty."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import mlflow
import pandas as pd
import pytest

from common.params import Params
from common.state import State

pytestmark = pytest.mark.integration


@pytest.fixture()
def state(tmp_path, monkeypatch) -> State:
    monkeypatch.setenv("LCP_STATE_DIR", str(tmp_path))
    state = State.from_env(tmp_path)
    state.ensure()
    return state


def test_the_experiment_is_a_model_training_experiment_new_or_old(state):
    from promotion.registry import EXPERIMENT_KIND_TAG, ensure_experiment, mlflow_client

    params = Params()
    client = mlflow_client(state)
    old = client.create_experiment("made-before", artifact_location=state.artifact_root.as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    new = ensure_experiment(state, params)
    # the value MLflow 3's UI stores for "Machine learning" (its ExperimentKind enum)
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    renamed = params.with_overrides({"registry": {"experiment": "made-before"}})
    assert ensure_experiment(state, renamed) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_the_season_run_is_a_finished_record_and_an_old_running_one_is_ended(state):
    from monitoring.season import SEASON_TAG, season_run
    from promotion.registry import ensure_experiment, mlflow_client

    client = mlflow_client(state)
    experiment = ensure_experiment(state, Params())
    run_id = season_run(client, experiment, "listing-classifier")
    client.log_text(run_id, "week\n1\n", "season/season.csv")  # added to an ended run
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert season_run(client, experiment, "listing-classifier") == run_id
    # a season run that an earlier version left RUNNING is ended on next use
    left = client.create_run(experiment, tags={SEASON_TAG: "other-model"}).info.run_id
    assert client.get_run(left).info.status == "RUNNING"
    assert season_run(client, experiment, "other-model") == left
    assert client.get_run(left).info.status == "FINISHED"


def papaparse_iso_date() -> re.Pattern:
    """The ISO-date pattern of the PapaParse bundled in MLflow's UI (what its CSV preview types
    as a Date, drawn as an empty cell), read from the installed JS bundle."""
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    for bundle in sorted(js.glob("*.js")):
        text = bundle.read_text(errors="replace")
        if "dynamicTyping" in text:
            found = re.search(r"=/(\^\(\\d\{4\}-\[01\]\\d-[^/]+)/", text)
            if found:
                return re.compile(found[1])
    raise AssertionError(f"no PapaParse date pattern in {js}: MLflow's UI bundle changed?")


def test_the_season_csv_has_no_cell_mlflows_preview_draws_empty(state):
    from monitoring.season import COLUMNS, season_table

    pattern = papaparse_iso_date()
    run_ids = ["backfill__2026-11-09T00:00:00+00:00", "scheduled__2026-11-16T00:00:00+00:00"]
    assert all(pattern.search(r) for r in run_ids)  # the pattern found is the one that blanked them
    runs = [{"run_id": r, "state": "success", "logical_date": d, "start": None, "end": None,
             "xcom": {}, "seconds": {}, "run_seconds": None}
            for r, d in zip(run_ids, ["2026-11-09T00:00:00+00:00", "2026-11-16T08:30:12.345678+00:00"],
                            strict=True)]
    table = season_table(state, Params(), runs)
    assert list(table.columns) == list(COLUMNS)
    path = state.root / "season.csv"
    table.to_csv(path, index=False)
    cells = [c for row in path.read_text().splitlines() for c in row.split(",")]
    assert not [c for c in cells if pattern.search(c)]
    back = pd.read_csv(path)
    assert [unquote(p.rsplit("/", 1)[1]) for p in back["airflow_run"]] == run_ids
    assert back["airflow_run"][0].startswith("dags/listing_classifier_retraining/runs/")
    assert list(pd.to_datetime(back["logical_date"], format="ISO8601")) == [
        pd.Timestamp("2026-11-09T00:00:00+00:00"), pd.Timestamp("2026-11-16T08:30:12.345678+00:00")]
    assert list(back["week"]) == [1, 2]
