"""What a model version was trained on, in the MLflow UI: datasets, batches, training curves.

A reviewer opening the run or the model version reads, without a terminal:

- the run's **Datasets** panel: the training, validation and golden sets as MLflow datasets
  (``mlflow.log_input``), each with its row count, schema and digest, and a source naming the
  DVC workspace, the revision and the path (``dvc`` source: ``dvc get <workspace> <path>
  --rev <rev>`` fetches it);
- the run's **metric charts**: per-epoch training loss and accuracy, validation loss, accuracy
  and business-weighted score, learning rate and img/s, with ``step`` = epoch;
- the **batches** the training data came from (id, listings in the training data, rows read,
  accepted and rejected by validation, GX result id, Data Docs page): ``lineage/batches.json``
  and ``lineage/batches.csv`` on the run, in the run's whole lineage ``lineage/lineage.md``
  (``promotion.report.lineage_markdown``: every batch and pin) and, the latest only, in the
  version description, which links to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.data.dataset_source import DatasetSource

from common.results import BatchReport

SPLITS = {"train": "training", "val": "validation", "golden": "golden"}
"""Prepared split -> the MLflow input context it is logged with."""
EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy",
                 "val_business_weighted_score", "lr", "img_per_s", "seconds")
"""Per-epoch entries of ``models/train_log.json`` logged as metric histories (step = epoch)."""
BATCHES_ARTIFACT = "lineage/batches.json"
"""Run artifact listing the batches of the training data."""
BATCHES_CSV = "lineage/batches.csv"
"""The same table as CSV (opens in a spreadsheet, previews in the MLflow UI)."""
LINEAGE_ARTIFACT = "lineage/lineage.md"
"""The run's whole lineage in Markdown (every batch, every pin, every GX result linked): the
version description, bounded, shows a summary and links here."""


class DvcDatasetSource(DatasetSource):
    """A file tracked by DVC in a git repository, pinned to one revision.

    Args:
        repo: the DVC repository (the platform's workspace folder, or its git URL).
        path: the file, relative to the repository.
        rev: the git revision (commit sha) that pins it.
    """

    def __init__(self, repo: str, path: str, rev: str) -> None:
        self.repo, self.path, self.rev = str(repo), str(path), str(rev)

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, **kwargs) -> pd.DataFrame:
        """Reads the pinned file through ``dvc.api.open`` (Parquet)."""
        import dvc.api

        with dvc.api.open(self.path, repo=self.repo, rev=self.rev, mode="rb") as fh:
            return pd.read_parquet(fh)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("a DVC source is built from its repo, path and revision")

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "path": self.path, "rev": self.rev,
                "fetch": f"dvc get {self.repo} {self.path} --rev {self.rev}"}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(source_dict["repo"], source_dict["path"], source_dict["rev"])


def read_splits(workspace: Path) -> dict[str, pd.DataFrame]:
    """The prepared splits of ``workspace`` (``data/prepared/<split>.parquet``), read once for
    :func:`log_datasets` and :func:`training_batches`; a missing split is left out."""
    return {split: pd.read_parquet(workspace / f"data/prepared/{split}.parquet") for split in SPLITS
            if (workspace / f"data/prepared/{split}.parquet").is_file()}


def log_datasets(splits: dict[str, pd.DataFrame], workspace: Path, rev: str) -> dict[str, int]:
    """Logs the prepared splits as the active run's inputs.

    Args:
        splits: :func:`read_splits`.
        workspace: the DVC workspace the splits were read from (the datasets' source repo).
        rev: the workspace commit that pins the splits.

    Returns:
        ``{split: rows}`` of the splits logged.
    """
    import mlflow

    for split, frame in splits.items():
        source = DvcDatasetSource(str(workspace), f"data/prepared/{split}.parquet", rev)
        dataset = mlflow.data.from_pandas(frame, source=source, name=split, targets="category_path")
        mlflow.log_input(dataset, context=SPLITS[split])
    return {split: len(frame) for split, frame in splits.items()}


def log_epoch_metrics(client, run_id: str, train_log: dict, start_ms: int) -> int:
    """Logs the per-epoch figures of a train log as metric histories (step = epoch).

    Args:
        client: an ``MlflowClient``.
        run_id: the run.
        train_log: ``models/train_log.json`` (its ``epochs`` list).
        start_ms: when training started (ms since the epoch); each point is stamped with the end
            of its epoch.

    Returns:
        The number of metric points logged.
    """
    from mlflow.entities import Metric

    points, elapsed = [], 0.0
    for entry in train_log.get("epochs", []):
        elapsed += float(entry.get("seconds", 0.0)) + float(entry.get("eval_seconds", 0.0))
        stamp = start_ms + int(elapsed * 1000)
        for key in EPOCH_METRICS:
            value = entry.get(key)
            if isinstance(value, int | float):
                points.append(Metric(f"epoch_{key}", float(value), stamp, int(entry["epoch"])))
    for i in range(0, len(points), 1000):  # log_batch takes at most 1000 metrics a call
        client.log_batch(run_id, metrics=points[i:i + 1000])
    return len(points)


def training_batches(splits: dict[str, pd.DataFrame], manifest: dict[str, dict]) -> list[dict]:
    """The batches whose listings make up a version's training and validation data.

    Args:
        splits: :func:`read_splits` (``train`` and ``val`` carry each listing's ``batch_id``).
        manifest: :func:`ingestion.manifest.read_manifest` (each batch's validation report).

    Returns:
        One dict per batch, sorted by id: ``batch_id``, ``listings`` (in train + val),
        ``status``, ``rows``, ``accepted_rows``, ``rejected_rows``, ``validation_id`` (the GX
        result) and ``data_docs_page``.
    """
    frames = [splits[s]["batch_id"] for s in ("train", "val") if s in splits]
    counts = pd.concat(frames).value_counts() if frames else pd.Series(dtype=int)
    out = []
    for batch_id in sorted(counts.index):
        report = BatchReport.from_entry(manifest.get(batch_id))
        out.append({"batch_id": batch_id, "listings": int(counts[batch_id]),
                    **({"status": report.status, "rows": report.rows,
                        "accepted_rows": report.accepted_rows, "rejected_rows": report.rejected_rows,
                        "validation_id": report.validation_id,
                        "data_docs_page": report.data_docs_page} if report is not None else
                       dict.fromkeys(("status", "rows", "accepted_rows", "rejected_rows",
                                      "validation_id", "data_docs_page")))})
    return out


def log_batches(client, run_id: str, batches: list[dict]) -> None:
    """Writes :data:`BATCHES_ARTIFACT` and :data:`BATCHES_CSV` on the run."""
    client.log_text(run_id, json.dumps(batches, indent=2), BATCHES_ARTIFACT)
    columns = ["batch_id", "listings", "status", "rows", "accepted_rows", "rejected_rows", "validation_id",
               "data_docs_page"]
    client.log_text(run_id, pd.DataFrame(batches, columns=columns).to_csv(index=False), BATCHES_CSV)


def load_batches(run_id: str) -> list[dict]:
    """:data:`BATCHES_ARTIFACT` of a run, or ``[]`` when the run has none."""
    import mlflow

    try:
        return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{BATCHES_ARTIFACT}"))
    except Exception:  # noqa: BLE001 -- a run registered before the artifact existed
        return []
