"""The champion on every fresh batch: its out-of-sample performance on this week's labelled listings.

Before a challenger is trained, the current ``champion`` predicts every listing of the newly
accepted batches that it has never seen: not in an earlier batch (so not in its training data,
nor an update of a listing it trained on) and not golden. Those listings are labelled, so they
are the out-of-sample test a catalogue team cares about ("how is the champion doing on this
week's listings?"). Recorded:

* leaf accuracy, business-weighted score (:func:`common.scoring.business_weighted_score`) and
  per-category leaf recall, as MLflow metrics with ``step`` = the week's number (1 first, the
  season table's ``week``: :func:`week_number`) on one monitoring run per registered model (run
  name ``monitoring/<model>``, ``FINISHED``: a record, not a process), so the MLflow UI charts
  the champion's weekly performance; the champion version is a metric too
  (``fresh_champion_version``);
* label issues of the fresh listings by confident learning (:mod:`monitoring.label_issues`), a
  CSV artifact ``label_issues/<batch>.csv`` of the monitoring run per batch, and the count as a
  metric. The same CSV is written into the DVC workspace (``data/label_issues/<batch>.csv``,
  versioned by the ``version_data`` step that follows; the ``prepare`` stage excludes them from
  training with ``validate.label_issues: exclude_from_training``), and the batch's manifest
  entry records the count and both paths (``label_issues``).

A retry repeats nothing: a batch already recorded (tag ``monitored.<batch>``) is read back.

CLI::

    python -m monitoring.fresh_batch --batches fashion-2026-11-09 [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from common.cli import configure_logging
from common.params import Params, load_params
from common.results import StepResult
from common.state import State

logger = logging.getLogger(__name__)

MONITORING_TAG = "lcp.monitoring_model"
"""Run tag naming the registered model a monitoring run watches (one run per model)."""


class FreshBatchResult(StepResult):
    """The champion's figures on one week's fresh listings.

    Attributes:
        batches: the batch ids scored, in order.
        step: the week's index (the metric step): the position of the newest batch among the
            manifest's accepted and partial batches, 0 first.
        champion_version: the version scored, None when there is no champion yet.
        listings: fresh listings scored.
        accuracy: leaf accuracy in [0, 1], None when nothing was scored.
        business_weighted_score: the gate's score on these listings, None when nothing was scored.
        label_issues: listings flagged as likely mislabelled.
        label_issue_files: per batch scored, its flags' CSV in the DVC workspace (relative to it,
            ``data/label_issues/<batch>.csv``), written even when nothing was flagged.
        monitoring_run_id: the MLflow run holding the history, None when nothing was scored.
        skipped: why nothing was scored (no champion, no fresh listings), else None.
        recall: leaf recall per category path (local: it stays in MLflow, not in XCom).
    """

    LOCAL: ClassVar[frozenset[str]] = frozenset({"recall"})
    batches: tuple[str, ...]
    step: int
    champion_version: str | None = None
    listings: int = 0
    accuracy: float | None = None
    business_weighted_score: float | None = None
    label_issues: int = 0
    label_issue_files: tuple[str, ...] = ()
    monitoring_run_id: str | None = None
    skipped: str | None = None
    recall: dict[str, float] = Field(default_factory=dict)


def _metric_key(category: str) -> str:
    """An MLflow metric name for a category path (``A > B`` -> ``fresh_recall/A/B``)."""
    return "fresh_recall/" + re.sub(r"[^\w\-. /]", "_", category.replace(" > ", "/"))


def week_number(state: State, batch_id: str) -> int:
    """The week a batch belongs to, 1 for the feed's first week: the season table's ``week``
    (``monitoring.season``) and the step of the monitoring charts.

    A batch is named by the Monday of its week (:mod:`common.batches`), so the number is counted
    in weeks from the earliest batch the manifest holds (quarantined ones included: their week
    happened too); a batch id without a date is placed by its rank among the manifest's ids.
    """
    from common.batches import batch_date, is_release_id
    from ingestion.manifest import read_manifest

    ids = sorted({*(b for b in read_manifest(state.manifest) if not is_release_id(b)), batch_id})
    dates = [d for d in map(batch_date, ids) if d is not None]
    this = batch_date(batch_id)
    if this is None or not dates:
        return ids.index(batch_id) + 1
    return (this - min(dates)).days // 7 + 1


def _issues_by_batch(issues, fresh, batches: list[str]) -> dict:
    """The flags split by the batch each flagged listing came in (every batch, maybe empty)."""
    batch_of = dict(zip(fresh["listing_id"].astype(str), fresh["batch_id"].astype(str), strict=True))
    owner = issues["listing_id"].astype(str).map(batch_of)
    return {b: issues[owner == b].reset_index(drop=True) for b in batches}


def monitoring_run(client, experiment_id: str, model_name: str) -> str:
    """The id of the model's monitoring run (``FINISHED``: :func:`promotion.registry.record_run`),
    created on first use."""
    from promotion.registry import record_run

    return record_run(client, experiment_id, MONITORING_TAG, model_name, f"monitoring/{model_name}",
                      "The champion's weekly performance on each fresh batch (step = the week's number, "
                      "1 first, as in the season table): fresh_* metrics, label_issues/ artifacts.")


def fresh_listings(state: State, batches: Sequence[str]):
    """The listings of ``batches`` that no other batch holds and that are not golden, the latest
    version of each (a ``pandas.DataFrame`` of the store's canonical columns, by listing id).

    Reads the batches' own partitions, the store's index (listing ids of every other batch) and
    the golden set's ids: O(new rows + index), never the whole store's columns (the monitor task
    grew 2.1x from 10,000 to 100,000 listings when it read every partition,
    docs/measurements.md 2026-12-06).
    """
    import pandas as pd

    from common.store import read_store

    golden_file = state.golden_dir / "golden.parquet"
    golden_ids = set(pd.read_parquet(golden_file, columns=["listing_id"])["listing_id"]) if golden_file.exists() else set()
    seen = set(read_store(state.listings_store, columns=["listing_id"], exclude_batches=batches)["listing_id"])
    own = read_store(state.listings_store, only_batches=batches)
    return own[~own["listing_id"].isin(seen | golden_ids)].reset_index(drop=True)


def score_champion_on_fresh(state: State, params: Params, batch_ids: list[str]) -> FreshBatchResult:
    """Scores the champion on the fresh listings of ``batch_ids`` and records the figures.

    Args:
        state: the state folder (its store holds the validated batches).
        params: the effective params (``registry``, ``score``).
        batch_ids: the batches accepted this run (accepted or partial); empty: nothing to do.

    Returns:
        :class:`FreshBatchResult`.

    Raises:
        mlflow.exceptions.MlflowException: when the tracking server cannot be reached.
        RuntimeError: when the champion's model cannot be loaded.
    """
    import numpy as np
    import pandas as pd

    from common.scoring import business_weighted_score
    from common.store import image_path
    from ingestion.versioning import LABEL_ISSUES
    from monitoring.label_issues import find_label_issues, version_probabilities
    from promotion.registry import ALIAS_CHAMPION, alias_version, ensure_experiment, mlflow_client

    batches = sorted(batch_ids)
    if not batches:
        return FreshBatchResult(batches=(), step=0, skipped="no fresh batch")
    step = week_number(state, batches[-1])
    client = mlflow_client(state)
    name = params.registry.model_name
    champion = alias_version(client, name, ALIAS_CHAMPION)
    if champion is None:
        return FreshBatchResult(batches=batches, step=step, skipped="no champion yet")
    run_id = monitoring_run(client, ensure_experiment(state, params), name)
    done_tag = f"monitored.{batches[-1]}"
    tags = client.get_run(run_id).data.tags
    if done_tag in tags:  # a retried task: read back what was recorded
        return FreshBatchResult.from_xcom(json.loads(tags[done_tag]))

    fresh = fresh_listings(state, batches)
    if fresh.empty:
        return FreshBatchResult(batches=batches, step=step, champion_version=champion,
                                skipped="no fresh listings")

    images = [str(image_path(state.listings_store, k)) for k in fresh["image_key"]]
    try:
        # a frozen-encoder champion embeds the fresh images into the workspace's cache, under the
        # newest batch's name: the embed stage of this run reuses them (each image embedded once)
        predicted, probs, classes = version_probabilities(name, champion, fresh, images,
                                                          embeddings_dir=state.workspace / "data" / "embeddings",
                                                          cache_as=batches[-1])
    except RuntimeError as exc:
        raise RuntimeError(f"the champion (version {champion}) cannot be loaded: {exc.__cause__ or exc}") from exc
    truth = fresh["category_path"].astype(str).tolist()
    s = params.score
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    score = business_weighted_score(truth, predicted, s.value_table, s.level_credit, s.default_value)
    frame = pd.DataFrame({"truth": truth, "hit": [p == t for p, t in zip(predicted, truth, strict=True)]})
    recall = {c: float(g["hit"].mean()) for c, g in frame.groupby("truth")}
    issues = find_label_issues(fresh["listing_id"].astype(str).tolist(), fresh["title"].fillna("").astype(str).tolist(),
                               truth, probs, classes)
    per_batch = _issues_by_batch(issues.issues, fresh, batches)
    files = tuple(f"{LABEL_ISSUES}/{b}.csv" for b in batches)
    result = FreshBatchResult(batches=batches, step=step, champion_version=str(champion), listings=len(fresh),
                              accuracy=round(accuracy, 6), business_weighted_score=round(float(score), 6),
                              label_issues=len(issues.issues), label_issue_files=files,
                              monitoring_run_id=run_id, recall=recall)
    metrics = {"fresh_accuracy": accuracy, "fresh_business_weighted_score": float(score),
               "fresh_listings": float(len(fresh)), "fresh_label_issues": float(len(issues.issues)),
               "fresh_champion_version": float(champion)}
    metrics.update({_metric_key(c): r for c, r in recall.items()})
    from mlflow.entities import Metric

    now_ms = int(pd.Timestamp.now("UTC").timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms, step) for k, v in metrics.items()])
    from common.files import atomic_write
    from ingestion.manifest import update_entries

    for batch, file in zip(batches, files, strict=True):
        text = per_batch[batch].to_csv(index=False)
        client.log_text(run_id, text, f"label_issues/{batch}.csv")
        atomic_write(state.workspace / file, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"))
    update_entries(state.manifest, {b: {"label_issues": {
        "flagged": len(per_batch[b]), "csv": f, "artifact": f"runs:/{run_id}/label_issues/{b}.csv",
        "champion_version": str(champion)}} for b, f in zip(batches, files, strict=True)})
    client.set_tag(run_id, done_tag, json.dumps(result.to_xcom()))
    logger.info(f"[monitor] champion v{champion} on {len(fresh)} fresh listings of {', '.join(batches)} "
          f"(week {step}): leaf accuracy {accuracy:.4f}, business-weighted score {score:.4f}, "
          f"{len(issues.issues)} label issue(s) (monitoring run {run_id})")
    return result


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m monitoring.fresh_batch", description=__doc__.split("\n")[0])
    parser.add_argument("--batches", nargs="+", required=True)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    state = State.from_env()
    result = score_champion_on_fresh(state, load_params(args.params), args.batches)
    print(json.dumps(result.to_xcom()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
