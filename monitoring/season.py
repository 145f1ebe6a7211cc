"""The season table: one row per weekly run of the retraining DAG, from what the runs recorded.

Each row is built from the run's typed task results in Airflow's metadata database (the XCom of
``validate``, ``monitor``, ``version_data``, ``register``, ``gate``, ``promote``:
:mod:`common.results`), its task instances' start and end times, the manifest (each batch's validation report), the
listings store (new categories) and the MLflow run of the week's model version (golden set size). Nothing is
recomputed: the table reads what the platform recorded while the weeks ran.

Columns (:data:`COLUMNS`): ``week`` (1 first), ``airflow_run`` (the run's page on the Airflow
UI: :func:`airflow_run_path` says why not the run id), ``logical_date`` (``YYYY-MM-DD HH:MM:SS+00:00``), ``state``,
``batches``; ``accepted`` / ``quarantined`` / ``held_back`` rows (held back: rejected only
because the category is not in the taxonomy); ``released`` (held-back rows of earlier weeks
released into the store this week, after a taxonomy addition); ``new_categories`` (leaves first seen in the
store that week) and ``new_category_names``; ``golden_size`` and ``golden_rev``; the champion's
figures on the week's fresh batch (``fresh_champion``, ``fresh_listings``, ``fresh_accuracy``,
``fresh_score``, ``label_issues``); the gate's ``version``, ``challenger_score``,
``champion_score``, ``delta``, ``delta_low``/``delta_high`` (bootstrap interval), ``decision``
(``promoted`` only when the alias moved); and ``seconds_<task>`` for every task that ran, plus
``seconds_run``.

Written to ``<state>/season/season.csv`` and ``season.png`` (matplotlib: the champion's
fresh-batch score, both gate scores with the interval and each week's decision, rows per week
and the golden set's size), and logged as artifacts of one MLflow run per registered model
(run name ``season/<model>``).

CLI::

    python -m monitoring.season [--dag-id listing_classifier_retraining] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from common.params import Params, load_params
from common.results import BatchReport, StepResult
from common.state import State
from validation.reasons import UNKNOWN_CATEGORY

DAG_ID = "listing_classifier_retraining"
SEASON_TAG = "lcp.season_model"
"""Run tag naming the registered model a season run reports on (one run per model)."""
log = logging.getLogger(__name__)

RETRAIN_TASK = "retrain_decision"
"""The DAG's branch that skips training in a week with nothing new (its XCom key ``decision``)."""
TASKS = ("ingest", "validate", "monitor", "version_data", "train_evaluate", "register", "gate",
         "promote", "review")
COLUMNS = ("week", "airflow_run", "logical_date", "state", "batches", "accepted", "quarantined",
           "held_back", "released", "new_categories", "new_category_names", "golden_size", "golden_rev",
           "fresh_champion", "fresh_listings", "fresh_accuracy", "fresh_score", "label_issues",
           "version", "challenger_score", "champion_score", "delta", "delta_low", "delta_high",
           "decision", *(f"seconds_{t}" for t in TASKS), "seconds_run")
SHOWN = ("week", "batches", "accepted", "quarantined", "held_back", "released", "new_categories", "golden_size",
         "fresh_score", "challenger_score", "champion_score", "delta_low", "delta_high", "decision",
         "seconds_train_evaluate", "seconds_run")
"""The columns :func:`format_table` prints (the CSV has them all)."""
def airflow_run_path(dag_id: str, run_id: str) -> str:
    """The page of a DAG run on the Airflow UI, relative to the UI's address (any port):
    ``dags/<dag_id>/runs/<run_id URL-encoded, as in the UI's address bar>``.

    Why not the bare run id: MLflow's artifact preview reads a CSV with PapaParse's
    ``dynamicTyping``, which turns any cell holding ``<date>T<hh:mm[:ss]><+hh:mm|Z>`` anywhere
    in it into a JavaScript Date (the middle alternative of its ISO-date pattern is anchored at
    neither end), and its table draws a Date as an empty cell: ``backfill__2026-11-09T00:00:00+00:00``
    and an ISO logical date were blank. No cell of the table holds that pattern: this path
    encodes ``:`` and ``+``, and the logical date is written with a space before the time
    (RFC 3339 allows it; pandas reads it back).
    """
    from urllib.parse import quote

    return f"dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


HELD_BACK = UNKNOWN_CATEGORY
"""Rows held back for a category outside the taxonomy: counted apart from the quarantined ones."""


class SeasonResult(StepResult):
    """Where the season report went.

    Attributes:
        weeks: rows of the table (DAG runs).
        csv: path of ``season.csv``.
        png: path of ``season.png``.
        mlflow_run_id: the ``season/<model>`` run holding both as artifacts.
    """

    weeks: int
    csv: str
    png: str
    mlflow_run_id: str


def _xcom_value(value):
    """An XCom value as JSON data. Values pushed through the Task Execution API can come back
    still JSON-encoded (a str holding the JSON); a plain string return value (a branch task's
    next task id, say) is kept as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def dag_runs(dag_id: str = DAG_ID) -> list[dict]:
    """The DAG's runs from Airflow's metadata database, oldest logical date first.

    Returns:
        One dict per run: ``run_id``, ``logical_date`` (ISO 8601), ``state``, ``start``/``end``
        (ISO 8601 or None), ``xcom`` (task id -> its return value, JSON data) and ``seconds``
        (task id -> wall seconds of its last try, for the tasks that ran).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    out = []
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id)).all()
        for run in sorted(runs, key=lambda r: (r.logical_date or r.run_after, r.run_id)):
            xcom = {}
            for row in session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag_id,
                                                          key="return_value")):
                xcom[row.task_id] = _xcom_value(XComModel.deserialize_value(row))
            for row in session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag_id, key="decision",
                                                          task_ids=RETRAIN_TASK)):
                xcom[RETRAIN_TASK] = _xcom_value(XComModel.deserialize_value(row))
            seconds = {ti.task_id: (ti.end_date - ti.start_date).total_seconds()
                       for ti in run.task_instances if ti.start_date and ti.end_date}
            out.append({"run_id": run.run_id, "state": str(run.state),
                        "logical_date": (run.logical_date or run.run_after).isoformat(),
                        "start": run.start_date.isoformat() if run.start_date else None,
                        "end": run.end_date.isoformat() if run.end_date else None,
                        "xcom": xcom, "seconds": seconds,
                        "run_seconds": (run.end_date - run.start_date).total_seconds()
                        if run.start_date and run.end_date else None})
    return out


def _partition_categories(state: State, batch_id: str) -> set[str]:
    import pandas as pd

    from common.store import batch_file

    path = batch_file(state.listings_store, batch_id)
    if not path.exists():
        return set()
    return set(pd.read_parquet(path, columns=["category_path"])["category_path"].dropna())


def _golden_size(client, run_id: str | None) -> int | None:
    if not run_id:
        return None
    value = client.get_run(run_id).data.metrics.get("n_golden")
    return int(value) if value is not None else None


def season_table(state: State, params: Params, runs: list[dict], dag_id: str = DAG_ID):
    """The season table from :func:`dag_runs`' records.

    Args:
        state: the state folder (listings store, MLflow tracking store).
        params: the params (``registry.model_name``).
        runs: :func:`dag_runs`, oldest first.
        dag_id: the DAG of the runs (for ``airflow_run``).

    Returns:
        A ``pandas.DataFrame`` with :data:`COLUMNS`, one row per run (figures None where the
        task did not run or had nothing to measure, e.g. no champion yet in week 1).
    """
    import pandas as pd

    from ingestion.manifest import read_manifest
    from promotion.registry import mlflow_client

    client = mlflow_client(state)
    manifest = read_manifest(state.manifest)
    seen: set[str] = set()
    rows = []
    for week, run in enumerate(runs, start=1):
        typed = _typed_results(run["xcom"])
        validated, monitored, data = typed["validate"], typed["monitor"], typed["version_data"]
        registered, gate, promoted = typed["register"], typed["gate"], typed["promote"]
        retrain = typed[RETRAIN_TASK]
        # the batches' reports stay out of XCom (too big): the manifest holds each batch's
        ids = [*validated.accepted, *validated.partial, *validated.quarantined] if validated else []
        reports = {b: BatchReport.from_entry(manifest.get(b)) or BatchReport(batch_id=b) for b in ids}
        stored = sorted({*validated.accepted, *validated.partial, *validated.released}) if validated else []
        held = sum(r.reasons.get(HELD_BACK, 0) for r in reports.values())
        new = set().union(*(_partition_categories(state, b) for b in stored)) - seen if stored else set()
        seen |= new
        interval = (gate.interval if gate else None) or (None, None)
        decision = (promoted.decision if promoted else None) or (gate.decision if gate else None) or (
            "skipped (nothing new)" if retrain is not None and retrain.retrain is False else None)
        row = {
            "week": week, "airflow_run": airflow_run_path(dag_id, run["run_id"]),
            "logical_date": datetime.fromisoformat(run["logical_date"]).isoformat(sep=" "), "state": run["state"],
            "batches": " ".join(sorted(reports)),
            "accepted": sum(r.accepted_rows for r in reports.values()),
            "quarantined": sum(r.rejected_rows for r in reports.values()) - held,
            "held_back": held, "released": validated.released_listings if validated else 0,
            "new_categories": len(new),
            "new_category_names": "; ".join(sorted(new)) if week > 1 else f"({len(new)} at start)",
            "golden_size": _golden_size(client, registered.run_id if registered else None),
            "golden_rev": data.golden_rev if data else None,
            "fresh_champion": monitored.champion_version if monitored else None,
            "fresh_listings": monitored.listings if monitored else None,
            "fresh_accuracy": monitored.accuracy if monitored else None,
            "fresh_score": monitored.business_weighted_score if monitored else None,
            "label_issues": monitored.label_issues if monitored else None,
            "version": (gate.version if gate else None) or (registered.version if registered else None),
            "challenger_score": gate.candidate_score if gate else None,
            "champion_score": gate.champion_score if gate else None,
            "delta": gate.delta if gate else None, "delta_low": interval[0], "delta_high": interval[1],
            "decision": decision,
            **{f"seconds_{t}": run["seconds"].get(t) for t in TASKS},
            "seconds_run": run["run_seconds"],
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _typed_results(xcom: dict) -> dict[str, StepResult | None]:
    """Each task's XCom as its typed step result (``common.results``, ``FreshBatchResult``,
    ``RetrainDecision``); None for a task that pushed nothing (skipped, failed) or whose value is
    not that result (a run of an older DAG version: logged, the week's row keeps what it can)."""
    from common.results import (
        DataVersionResult,
        GateResult,
        PromoteResult,
        RegisterResult,
        ValidateResult,
    )
    from monitoring.fresh_batch import FreshBatchResult
    from promotion.retrain import RetrainDecision

    types = {"validate": ValidateResult, "monitor": FreshBatchResult, "version_data": DataVersionResult,
             "register": RegisterResult, "gate": GateResult, "promote": PromoteResult,
             RETRAIN_TASK: RetrainDecision}
    out: dict[str, StepResult | None] = {}
    for task, cls in types.items():
        value = xcom.get(task)
        try:
            out[task] = cls.from_xcom(value) if isinstance(value, dict) else None
        except ValidationError as exc:
            log.warning("season: %s's XCom is not a %s (%s): left out of its week's row", task, cls.__name__,
                        str(exc).splitlines()[0])
            out[task] = None
    return out


def format_table(table) -> str:
    """The table as fixed-width text, :data:`SHOWN` columns, figures rounded."""
    shown = table[list(SHOWN)].copy()
    for col in ("fresh_score", "challenger_score", "champion_score", "delta_low", "delta_high"):
        shown[col] = shown[col].map(lambda v: "" if v is None or v != v else f"{v:.4f}")
    for col in ("seconds_train_evaluate", "seconds_run"):
        shown[col] = shown[col].map(lambda v: "" if v is None or v != v else f"{v:.0f}")
    shown = shown.rename(columns={"seconds_train_evaluate": "train_s", "seconds_run": "run_s",
                                  "challenger_score": "challenger", "champion_score": "champion",
                                  "new_categories": "new_cats", "golden_size": "golden"})
    return shown.to_string(index=False)


def plot_season(table, path: Path) -> Path:
    """Writes the season's timeline as a PNG (matplotlib, Agg backend).

    Top: the champion's business-weighted score on each week's fresh batch, the challenger's and
    the champion's on the golden set (the champion's with the delta's bootstrap interval as an
    error bar on the challenger), each week's decision as the challenger marker (filled:
    promoted, open: rejected). Bottom: rows accepted / quarantined / held back per week (bars)
    and the golden set's size (line, right axis).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    weeks = table["week"].to_numpy()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})

    def col(name):
        return table[name].astype(float).to_numpy()

    top.plot(weeks, col("fresh_score"), "o-", color="tab:blue", label="champion on the fresh batch")
    top.plot(weeks, col("champion_score"), "s--", color="tab:gray", label="champion on the golden set")
    challenger, low, high = col("challenger_score"), col("delta_low"), col("delta_high")
    promoted = (table["decision"] == "promoted").to_numpy()
    base = challenger - col("delta")
    err = np.vstack([challenger - (base + low), (base + high) - challenger])
    err = np.where(np.isnan(err), 0.0, err)
    top.errorbar(weeks, challenger, yerr=err, fmt="none", ecolor="tab:orange", capsize=3)
    top.plot(weeks[promoted], challenger[promoted], "D", color="tab:orange", label="challenger: promoted")
    top.plot(weeks[~promoted], challenger[~promoted], "D", mfc="white", color="tab:orange",
             label="challenger: not promoted")
    top.set_ylabel("business-weighted score")
    top.set_title("Season: the champion each week, and each week's challenger")
    top.grid(alpha=0.3)
    top.legend(loc="best", fontsize=8, framealpha=0.6)
    acc, quar, held = col("accepted"), col("quarantined"), col("held_back")
    bottom.bar(weeks, acc, color="tab:green", label="accepted")
    bottom.bar(weeks, quar, bottom=acc, color="tab:red", label="quarantined")
    bottom.bar(weeks, held, bottom=acc + quar, color="tab:purple", label="held back (unknown category)")
    bottom.set_ylabel("rows")
    bottom.set_xlabel("week")
    bottom.legend(loc="upper left", fontsize=8)
    right = bottom.twinx()
    right.plot(weeks, col("golden_size"), "k.-", label="golden set size")
    right.set_ylabel("golden listings")
    right.legend(loc="upper right", fontsize=8)
    bottom.set_xticks(weeks)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def season_run(client, experiment_id: str, model_name: str) -> str:
    """The id of the model's season run (``FINISHED``: a record, not a job), created on first use."""
    from promotion.registry import record_run

    return record_run(client, experiment_id, SEASON_TAG, model_name, f"season/{model_name}",
                      "One row per weekly run of the retraining DAG: season/season.csv, "
                      "and the timeline season/season.png.")


def write_season(state: State, params: Params, dag_id: str = DAG_ID) -> tuple[SeasonResult, str]:
    """Builds the season table from the DAG's runs, writes CSV and PNG, logs both to MLflow.

    Returns:
        ``(SeasonResult, the table as text)``.

    Raises:
        ValueError: when the DAG has no run yet.
    """
    from promotion.registry import ensure_experiment, mlflow_client

    runs = dag_runs(dag_id)
    if not runs:
        raise ValueError(f"the DAG {dag_id} has no run in Airflow's metadata database yet")
    table = season_table(state, params, runs, dag_id)
    out = state.root / "season"
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "season.csv"
    table.to_csv(csv, index=False)
    png = plot_season(table, out / "season.png")
    client = mlflow_client(state)
    run_id = season_run(client, ensure_experiment(state, params), params.registry.model_name)
    for path in (csv, png):
        client.log_artifact(run_id, str(path), "season")
    return SeasonResult(weeks=len(table), csv=str(csv), png=str(png), mlflow_run_id=run_id), format_table(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.season", description=__doc__.split("\n")[0])
    parser.add_argument("--dag-id", default=DAG_ID)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    result, text = write_season(State.from_env(), load_params(args.params), args.dag_id)
    print(text)
    print(json.dumps(result.to_xcom()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
