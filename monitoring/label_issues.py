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
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

_FEW_EXAMPLES = re.compile(r"May not flag all label issues in class: (\d+), it has too few examples")
"""cleanlab's per-class warning (``cleanlab.filter._prune_by_count``/``_prune_by_class``): a class
given to at most ``min_examples_per_class`` listings is not pruned; it names the class by its
column index only."""

ISSUE_COLUMNS = ("listing_id", "title", "given_label", "suggested_label", "self_confidence")
"""Columns of the label-issue CSV, one row per flagged listing, least confident first."""


@dataclass(frozen=True)
class LabelIssues:
    """The flags of one set of listings.

    Attributes:
        issues: one row per flagged listing (:data:`ISSUE_COLUMNS`), by ascending
            ``self_confidence`` (the model's probability of the given label).
        checked: listings whose given label is one of the model's classes (the others, e.g. a
            category the model does not know yet, cannot be judged and are not flagged).
        unknown_label: listings whose given label is not among the model's classes.
    """

    issues: pd.DataFrame
    checked: int
    unknown_label: int

    def to_dict(self) -> dict:
        """JSON summary: counts and the share flagged."""
        return {"flagged": int(len(self.issues)), "checked": self.checked,
                "unknown_label": self.unknown_label,
                "flagged_share": round(len(self.issues) / self.checked, 6) if self.checked else 0.0}


def find_label_issues(listing_ids: Sequence[str], titles: Sequence[str], given_labels: Sequence[str],
                      pred_probs: np.ndarray, classes: Sequence[str]) -> LabelIssues:
    """Flags the listings whose given category is likely wrong.

    Args:
        listing_ids: N listing ids.
        titles: N titles (shown in the CSV for a person to judge).
        given_labels: N given category paths.
        pred_probs: float ``(N, C)`` out-of-sample class probabilities, rows summing to 1, over
            ``classes`` (the model's leaf categories).
        classes: C category paths, the columns of ``pred_probs``.

    Returns:
        :class:`LabelIssues`; the suggested label of a flagged listing is the model's most
        probable class.

    Raises:
        ValueError: when the lengths or the probability matrix's shape disagree.
    """
    from cleanlab.filter import find_label_issues as cleanlab_find

    n = len(given_labels)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    if not (len(listing_ids) == len(titles) == n) or pred_probs.shape != (n, len(classes)):
        raise ValueError(f"{len(listing_ids)} ids, {len(titles)} titles, {n} labels and probabilities "
                         f"of shape {pred_probs.shape} for {len(classes)} classes do not agree")
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([label in index for label in given_labels], dtype=bool)
    empty = pd.DataFrame(columns=list(ISSUE_COLUMNS))
    rows = np.flatnonzero(known)
    if len(rows) < 2:
        return LabelIssues(empty, int(known.sum()), int((~known).sum()))
    labels = np.array([index[given_labels[i]] for i in rows])
    probs = pred_probs[rows]
    probs = probs / probs.sum(axis=1, keepdims=True)
    # cleanlab needs every class it counts to appear: restrict to the classes given or predicted
    used = np.union1d(np.unique(labels), np.unique(probs.argmax(axis=1)))
    remap = {c: i for i, c in enumerate(used)}
    sub = probs[:, used]
    sub = sub / sub.sum(axis=1, keepdims=True)
    sub_labels = np.array([remap[c] for c in labels])
    if len(used) < 2:
        return LabelIssues(empty, len(rows), int((~known).sum()))
    # n_jobs=1: cleanlab forks a multiprocessing pool otherwise, which deadlocks in a process that
    # already runs threads (torch, an Airflow task runner)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flagged = cleanlab_find(sub_labels, sub, return_indices_ranked_by="self_confidence", n_jobs=1)
    few = []
    for warning in caught:
        match = _FEW_EXAMPLES.search(str(warning.message))
        if match:
            few.append(str(classes[int(used[int(match[1])])]))
        else:  # anything else cleanlab says is passed on as it was
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if few:
        # one line naming the categories, instead of a warning per class index: expected of a
        # weekly batch, where a rare category often has a single listing
        logger.info("label issues: %d categories with too few listings to judge every label "
                    "(cleanlab's min_examples_per_class): %s", len(few), "; ".join(sorted(set(few))))
    out = []
    for k in flagged:
        i = rows[k]
        out.append({"listing_id": str(listing_ids[i]), "title": str(titles[i]),
                    "given_label": str(given_labels[i]),
                    "suggested_label": str(classes[int(pred_probs[i].argmax())]),
                    "self_confidence": float(pred_probs[i, index[given_labels[i]]])})
    issues = pd.DataFrame(out, columns=list(ISSUE_COLUMNS)) if out else empty
    return LabelIssues(issues, len(rows), int((~known).sum()))


def version_probabilities(model_name: str, version: str, listings: pd.DataFrame,
                          images: Sequence[str], embeddings_dir: Path | None = None,
                          ) -> tuple[list[str], np.ndarray, list[str]]:
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
    except Exception as exc:  # any failure to fetch or load the version
        raise RuntimeError(f"version {version} of {model_name} cannot be loaded: {exc}") from exc
    predicted, probs = predict_paths(loaded, listings, list(images))
    return predicted, probs, list(loaded.labels)


GOLDEN_ARTIFACT = "label_issues/golden-{golden_rev}.csv"
"""The golden suspects of a golden revision, on the challenger's run (:func:`golden_suspects`)."""


def golden_suspects(client, model_name: str, version: str, golden: pd.DataFrame, golden_rev: str,
                    run_id: str) -> dict:
    """Golden listings whose label is likely wrong, listed for relabelling (never dropped).

    Golden listings never enter training at any revision, so any registered version's
    probabilities on them are out of sample; the gate passes the champion (the challenger on a
    first run). The flags are written to :data:`GOLDEN_ARTIFACT` on ``run_id``; a retry that
    finds the artifact reads it back instead of predicting again.

    Args:
        client: an ``mlflow.MlflowClient`` on the registry.
        model_name: the registered model.
        version: the version whose probabilities are used.
        golden: ``promotion.registry.golden_frame`` (``listing_id``, ``title``, ``category_path``,
            ``image_path`` and the model's other inputs).
        golden_rev: the golden set's DVC hash (names the artifact).
        run_id: the run the CSV is logged to (the challenger's).

    Returns:
        ``{"flagged": n, "checked": n, "unknown_label": n, "scored_by": version, "artifact": path}``
        (``checked``/``unknown_label`` are None when read back from an earlier call).

    Raises:
        RuntimeError, ValueError: as :func:`version_probabilities`.
    """
    import io

    import mlflow

    artifact = GOLDEN_ARTIFACT.format(golden_rev=golden_rev)
    try:
        done = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact}")), dtype=str)
        return {"flagged": len(done), "checked": None, "unknown_label": None, "scored_by": str(version),
                "artifact": artifact}
    except Exception:  # not written yet: predict
        pass
    _, probs, classes = version_probabilities(model_name, version, golden, golden["image_path"].tolist())
    found = find_label_issues(golden["listing_id"].astype(str).tolist(), golden["title"].fillna("").astype(str).tolist(),
                              golden["category_path"].astype(str).tolist(), probs, classes)
    client.log_text(run_id, found.issues.to_csv(index=False), artifact)
    return {"flagged": int(len(found.issues)), "checked": found.checked, "unknown_label": found.unknown_label,
            "scored_by": str(version), "artifact": artifact}


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
