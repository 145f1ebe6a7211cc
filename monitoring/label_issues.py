"""Label issues: listings whose given category is likely wrong, by confident learning.

From a model's out-of-sample class probabilities (the champion's, on listings it never trained
on: a fresh batch, or the golden set), :func:`cleanlab.filter.find_label_issues` estimates the
joint distribution of given and true labels (the confident joint) and flags the listings it
attributes to label noise (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021). Flags are suggestions for a person: a golden
listing is listed for relabelling and never dropped (cleanlab's maintainers advise against
cleaning a test set automatically); a relabel is an update of the listing in the feed.

Where the flags go:

* fresh batches (the ``monitor`` task, :mod:`monitoring.fresh_batch`): ``label_issues/<batch>.csv``
  on the monitoring run, and the same CSV in the DVC workspace
  (``data/label_issues/<batch>.csv``, versioned by ``version_data``); with
  ``validate.label_issues: exclude_from_training`` the ``prepare`` stage leaves them out of
  train/val (``training.prepare.label_issue_exclusions``);
* the golden set (the ``gate`` task, :func:`golden_suspects`): ``label_issues/golden-<golden_rev>.csv``
  on the challenger's run, listed for relabelling, never dropped.

CLI (a CSV of flags from a predictions file that holds the probabilities)::

    python -m monitoring.label_issues --probs probs.npy --labels labels.json --listings batch.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from common.label_issues import (  # noqa: F401 -- re-exported: this module's public names
    GOLDEN_ARTIFACT,
    ISSUE_COLUMNS,
    LabelIssues,
    find_label_issues,
)
from common.label_issues import golden_suspects as common_golden_suspects

logger = logging.getLogger(__name__)

def version_probabilities(model_name: str, version: str, listings: pd.DataFrame,
                          images: Sequence[str], embeddings_dir: Path | None = None,
                          cache_as: str | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """A registered version's predictions and class probabilities on listings.

    The pyfunc serves only the top class's probability; confident learning needs them all, so
    the version's checkpoint (``model.pt`` in its model artifacts) is loaded as the pyfunc loads
    it (:func:`training.inference.load_checkpoint`) and predicts through the same code.

    Args:
        model_name: the registered model.
        version: its version.
        listings: N listings (``title`` and the model's other inputs).
        images: N image file paths.
        embeddings_dir: a frozen-encoder model's embedding cache root (the state's
            ``workspace/data/embeddings``): images embedded there before are not embedded again;
            None: :func:`training.inference.default_embeddings_dir`.
        cache_as: a store partition (batch id) under which the images embedded now are added to
            that cache (``LoadedClassifier.keep_embeddings_as``), so the embed stage does not
            embed them again; None: the cache is only read.

    Returns:
        ``(predicted, probs, classes)``: N top-1 category paths, float32 ``(N, C)`` probabilities,
        the C category paths (columns of ``probs``).

    Raises:
        RuntimeError: when the version cannot be fetched or loaded.
        ValueError: when an image cannot be read (the row is named).
    """
    import mlflow

    from training.inference import load_checkpoint, predict_paths

    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}"))
        loaded = load_checkpoint(next(local.rglob("model.pt")), embeddings_dir=embeddings_dir)
        loaded.keep_embeddings_as = cache_as
    except Exception as exc:  # any failure to fetch or load the version
        raise RuntimeError(f"version {version} of {model_name} cannot be loaded: {exc}") from exc
    predicted, probs = predict_paths(loaded, listings, list(images))
    return predicted, probs, list(loaded.labels)


def golden_suspects(client, model_name: str, version: str, golden: pd.DataFrame, golden_rev: str,
                    run_id: str) -> dict:
    """Golden listings whose label is likely wrong, scored by a registered version:
    :func:`common.label_issues.golden_suspects` with the version's probabilities
    (:func:`version_probabilities`), computed only when the artifact is not logged yet.

    Args:
        client: an ``mlflow.MlflowClient`` on the registry.
        model_name: the registered model.
        version: the version whose probabilities are used.
        golden: ``promotion.registry.golden_frame`` (``listing_id``, ``title``, ``category_path``,
            ``image_path`` and the model's other inputs).
        golden_rev: the golden set's DVC hash (names the artifact).
        run_id: the run the CSV is logged to (the challenger's).

    Returns:
        As :func:`common.label_issues.golden_suspects`.

    Raises:
        RuntimeError, ValueError: as :func:`version_probabilities`.
    """
    def probabilities():
        _, probs, classes = version_probabilities(model_name, version, golden, golden["image_path"].tolist())
        return probs, classes

    return common_golden_suspects(client, version, golden, golden_rev, run_id, probabilities)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.label_issues", description=__doc__.split("\n")[0])
    parser.add_argument("--probs", required=True, type=Path, help="float (N, C) .npy of class probabilities")
    parser.add_argument("--labels", required=True, type=Path, help="JSON list of the C class paths")
    parser.add_argument("--listings", required=True, type=Path,
                        help="Parquet/CSV of the N listings (listing_id, title, category_path)")
    parser.add_argument("--output", type=Path, default=Path("label_issues.csv"))
    args = parser.parse_args(argv)
    frame = (pd.read_parquet(args.listings) if args.listings.suffix == ".parquet"
             else pd.read_csv(args.listings, dtype=str, keep_default_na=False))
    found = find_label_issues(frame["listing_id"].astype(str).tolist(), frame["title"].fillna("").astype(str).tolist(),
                              frame["category_path"].astype(str).tolist(), np.load(args.probs),
                              json.loads(args.labels.read_text()))
    found.issues.to_csv(args.output, index=False)
    print(json.dumps({**found.to_dict(), "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
