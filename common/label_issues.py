"""Label issues by confident learning: the layer-neutral part, shared by the gate and monitoring.

From a model's out-of-sample class probabilities, :func:`find_label_issues` flags the listings
whose given category is likely wrong (cleanlab's confident learning: Northcutt, Jiang & Chuang,
"Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 70, 2021);
:func:`golden_suspects` does it for the golden set and logs the flags on the challenger's run
(``promotion.promote``'s gate step). Nothing here loads a model: the caller passes the
probabilities (or a function that computes them, called only when the flags are not logged yet).
``monitoring.label_issues`` (fresh batches, the CLI) builds on these.
"""

from __future__ import annotations

import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
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


PROBS_MAX_BYTES = 256 * 2**20
"""Largest table of golden class probabilities kept for label issues (float16: N x C x 2 bytes;
256 MiB holds e.g. 44,000 golden listings x 3,000 leaves): the evaluate stage's
``reports/golden_probs.npz`` and the gate's per-version cache (``promotion.registry``). Above it
none is kept and the gate predicts the whole golden set for its label issues."""


@dataclass(frozen=True)
class ProbabilityTable:
    """Class probabilities per listing, as kept between runs (:func:`write_probabilities`).

    Attributes:
        keys: M listing keys (``training.serving.listing_keys``), str.
        probs: float16 ``(M, C)`` probabilities, rows in ``keys`` order.
        classes: the C category paths, the columns.
    """

    keys: list[str]
    probs: np.ndarray
    classes: list[str]


def write_probabilities(path: Path, table: ProbabilityTable) -> None:
    """Writes ``table`` as an ``.npz`` (arrays ``keys``, ``probs`` float16, ``classes``; no
    pickled objects).

    Raises:
        ValueError: when the shapes disagree.
    """
    probs = np.asarray(table.probs, dtype=np.float16)
    if probs.shape != (len(table.keys), len(table.classes)):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(table.keys)} keys and "
                         f"{len(table.classes)} classes")
    with open(path, "wb") as fh:  # np.savez adds ".npz" to a str path without it
        np.savez(fh, keys=np.array(table.keys, dtype=str), probs=probs, classes=np.array(table.classes, dtype=str))


def read_probabilities(path: Path) -> ProbabilityTable:
    """Reads a :func:`write_probabilities` file.

    Raises:
        OSError: when it cannot be read.
        ValueError: when it is not such a file (a missing array, pickled objects, bad shapes).
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys, probs, classes = npz["keys"], npz["probs"], npz["classes"]
    except KeyError as exc:
        raise ValueError(f"{path}: no array {exc} in it") from exc
    if probs.dtype != np.float16 or probs.shape != (len(keys), len(classes)):
        raise ValueError(f"{path}: probabilities {probs.dtype} {probs.shape} for {len(keys)} keys and "
                         f"{len(classes)} classes")
    return ProbabilityTable([str(k) for k in keys], probs, [str(c) for c in classes])


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


GOLDEN_ARTIFACT = "label_issues/golden-{golden_rev}.csv"
"""The golden suspects of a golden revision, on the challenger's run (:func:`golden_suspects`)."""


def golden_suspects(client, version: str, golden: pd.DataFrame, golden_rev: str, run_id: str,
                    probabilities: Callable[[], tuple[np.ndarray, Sequence[str]]]) -> dict:
    """Golden listings whose label is likely wrong, listed for relabelling (never dropped).

    Golden listings never enter training at any revision, so any registered version's
    probabilities on them are out of sample; the gate passes the champion's (the challenger's on
    a first run). The flags are written to :data:`GOLDEN_ARTIFACT` on ``run_id``; a retry that
    finds the artifact reads it back instead of predicting again.

    Args:
        client: an ``mlflow.MlflowClient`` on the tracking server.
        version: the model version whose probabilities are used (recorded as ``scored_by``).
        golden: the golden listings (``listing_id``, ``title``, ``category_path``), N rows.
        golden_rev: the golden set's DVC hash (names the artifact).
        run_id: the run the CSV is logged to (the challenger's).
        probabilities: returns ``(probs, classes)``: float ``(N, C)`` probabilities of the
            version on ``golden``, rows in ``golden``'s order, and the C category paths; called
            only when the artifact is not logged yet.

    Returns:
        ``{"flagged": n, "checked": n, "unknown_label": n, "scored_by": version, "artifact": path}``
        (``checked``/``unknown_label`` are None when read back from an earlier call).

    Raises:
        Whatever ``probabilities`` raises; ValueError as :func:`find_label_issues`.
    """
    artifact = GOLDEN_ARTIFACT.format(golden_rev=golden_rev)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = pd.read_csv(client.download_artifacts(run_id, artifact, tmp), dtype=str)
        except Exception:  # not logged yet (the client raises its own error types): compute
            done = None
    if done is not None:
        return {"flagged": len(done), "checked": None, "unknown_label": None, "scored_by": str(version),
                "artifact": artifact}
    probs, classes = probabilities()
    found = find_label_issues(golden["listing_id"].astype(str).tolist(),
                              golden["title"].fillna("").astype(str).tolist(),
                              golden["category_path"].astype(str).tolist(), probs, list(classes))
    client.log_text(run_id, found.issues.to_csv(index=False), artifact)
    return {"flagged": int(len(found.issues)), "checked": found.checked, "unknown_label": found.unknown_label,
            "scored_by": str(version), "artifact": artifact}
