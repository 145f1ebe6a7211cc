"""Label issues: listings whose given category is likely wrong, by confident learning.

From a model's out-of-sample class probabilities (the champion's, on listings it never trained
on: a fresh batch, or the golden set), :func:`cleanlab.filter.find_label_issues` estimates the
joint distribution of given and true labels (the confident joint) and flags the listings it
attributes to label noise (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021). Flags are suggestions for a person: a golden
listing is listed for relabelling and never dropped (cleanlab's maintainers advise against
cleaning a test set automatically); a relabel is an update of the listing in the feed.

CLI (a CSV of flags from a predictions file that holds the probabilities)::

    python -m monitoring.label_issues --probs probs.npy --labels labels.json --listings batch.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
    flagged = cleanlab_find(sub_labels, sub, return_indices_ranked_by="self_confidence", n_jobs=1)
    out = []
    for k in flagged:
        i = rows[k]
        out.append({"listing_id": str(listing_ids[i]), "title": str(titles[i]),
                    "given_label": str(given_labels[i]),
                    "suggested_label": str(classes[int(pred_probs[i].argmax())]),
                    "self_confidence": float(pred_probs[i, index[given_labels[i]]])})
    issues = pd.DataFrame(out, columns=list(ISSUE_COLUMNS)) if out else empty
    return LabelIssues(issues, len(rows), int((~known).sum()))


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
    found = find_label_issues(frame["listing_id"].astype(str).tolist(), frame["title"].astype(str).tolist(),
                              frame["category_path"].astype(str).tolist(), np.load(args.probs),
                              json.loads(args.labels.read_text()))
    found.issues.to_csv(args.output, index=False)
    print(json.dumps({**found.to_dict(), "output": str(args.output)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
