"""The gate's review material in MLflow: the version's Markdown description and comparison artifacts.

A reviewer opening the model version in the MLflow UI reads a comparison table (overall and per
top-value category), the decision and why, and links to the training run and the GX Data Docs.
The challenger's run holds ``comparison/<golden_rev>/``: ``per_class_delta.csv``, both
confusion matrices (PNG), ``decision.json`` and ``report.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from promotion.gate import PerListing
from promotion.registry import DESCRIPTION_CHARS


def airflow_ui_url() -> str:
    """Base URL of the Airflow UI (``LCP_AIRFLOW_UI_URL``, default ``http://localhost:8080``)."""
    return os.environ.get("LCP_AIRFLOW_UI_URL", "http://localhost:8080").rstrip("/")


def per_class_delta(candidate: PerListing, champion: PerListing | None) -> pd.DataFrame:
    """Leaf recall per true category for both models.

    Returns:
        Columns ``category_path, support, value`` (summed business value), ``recall_candidate``,
        ``recall_champion`` and ``delta`` (candidate - champion; NaN without champion), sorted
        by value, most valuable first.
    """
    frame = pd.DataFrame({"category_path": candidate.true_paths, "value": candidate.values,
                          "hit_candidate": np.equal(candidate.predicted_paths, candidate.true_paths)})
    frame["hit_champion"] = (np.equal(champion.predicted_paths, champion.true_paths) if champion
                             else np.nan)
    out = frame.groupby("category_path").agg(
        support=("value", "size"), value=("value", "sum"),
        recall_candidate=("hit_candidate", "mean"), recall_champion=("hit_champion", "mean")).reset_index()
    out["delta"] = out["recall_candidate"] - out["recall_champion"]
    return out.sort_values(["value", "category_path"], ascending=[False, True]).reset_index(drop=True)


CONFUSION_MAX_LEAVES = 40
"""Leaves drawn in a confusion matrix PNG: beyond about 40 rows the labels of a figure the MLflow
UI shows at page width are unreadable. The full matrix goes to a CSV next to it."""


def confusion_png(listings: PerListing, path: Path, title: str) -> Path:
    """Writes the confusion matrix (rows: true leaf, columns: predicted leaf, row-normalised).

    With more than :data:`CONFUSION_MAX_LEAVES` leaves, the PNG shows the leaves with the most
    errors (wrong predictions of them and into them), and the full matrix of counts is written
    to ``<path stem>.csv``.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    labels = sorted(set(listings.true_paths) | set(listings.predicted_paths))
    counts = confusion_matrix(listings.true_paths, listings.predicted_paths, labels=labels)
    pd.DataFrame(counts, index=labels, columns=labels).to_csv(path.with_suffix(".csv"))
    shown, note = np.arange(len(labels)), ""
    if len(labels) > CONFUSION_MAX_LEAVES:
        errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)
        shown = np.sort(np.argsort(-errors, kind="stable")[:CONFUSION_MAX_LEAVES])
        note = (f"\n{CONFUSION_MAX_LEAVES} of {len(labels)} leaves, those with the most errors "
                f"(all: {path.with_suffix('.csv').name})")
    cm = counts[np.ix_(shown, shown)].astype(float)
    rows = counts[shown].sum(axis=1, keepdims=True).astype(float)  # normalised by all of the row
    cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(6.0, 0.3 * len(shown) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    short = [labels[i].split(" > ")[-1][:28] for i in shown]
    ax.set_xticks(range(len(shown)), short, rotation=90, fontsize=8)
    ax.set_yticks(range(len(shown)), short, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + note, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


REVISIONS = {
    "data_rev": "data: the DVC workspace commit after versioning (listings store + golden set)",
    "workspace_commit": "data + code + params + dvc.lock: the workspace commit after `dvc repro` "
                        "(`make reproduce` restores it)",
    "listings_md5": "the listings store's DVC directory hash",
    "golden_rev": "the golden test set's DVC hash",
    "git_commit": "the platform's code (this repository)",
    "params_hash": "the effective params.yaml (SHA-256)",
    "dag_id": "the Airflow DAG",
    "airflow_run_id": "the Airflow run that trained it",
}
"""Lineage tags and, in one line each, what they pin (the description's lineage table)."""
BLIND_LEAVES_SHOWN = 15
"""Leaves without golden listings named in the description (all are in ``decision.json``)."""
BATCH_ROWS = 20
"""Batches listed in the description; all are in the run's ``lineage/batches.json``."""


def _batches_table(batches: list[dict]) -> list[str]:
    if not batches:
        return []
    lines = [f"Training data: {sum(b['listings'] for b in batches)} listings from "
             f"{len(batches)} batch(es) (train + validation; the run's `lineage/batches.json`).", "",
             "| batch | listings | validation | rows read | accepted | rejected | GX result |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for b in batches[:BATCH_ROWS]:
        lines.append(f"| {b['batch_id']} | {b['listings']} | {b.get('status') or '–'} | "
                     f"{_fmt(b.get('rows'), 'd')} | {_fmt(b.get('accepted_rows'), 'd')} | "
                     f"{_fmt(b.get('rejected_rows'), 'd')} | `{b.get('validation_id') or '–'}` |")
    if len(batches) > BATCH_ROWS:
        lines.append(f"| and {len(batches) - BATCH_ROWS} more | | | | | | |")
    return lines


def markdown_report(result: dict, per_class: pd.DataFrame, lineage: dict, top_n: int,
                    batches: list[dict] = ()) -> str:
    """The version description: comparison table, decision and why, links, lineage.

    Links into the MLflow UI are relative (``#/experiments/...``), so they work from whatever
    host and port the UI is opened on; the Data Docs link needs the Airflow UI's base URL
    (``LCP_AIRFLOW_UI_URL``).

    Args:
        result: :func:`promotion.promote.gate_challenger`'s result.
        per_class: :func:`per_class_delta`.
        lineage: the version's tags (``mlflow_run_id``, ``gx_data_docs``, ``data_rev`` ...).
        top_n: rows of the per-category table (the gate's slices, at least 5).
        batches: :func:`promotion.lineage.training_batches` of the version's run.

    Returns:
        Markdown text.
    """
    champ_v = result.get("champion_version")
    interval = result.get("interval")
    lines = [
        f"## Gate: **{result['decision'].upper()}**",
        "",
        f"**Why:** {result['reason']}",
        "",
        f"Challenger v{result['version']} vs champion " + (f"v{champ_v}" if champ_v else "(none: first model)")
        + f" on golden set `{result.get('golden_rev')}` ({result.get('n_golden')} listings), "
        f"mode `{result.get('mode')}`.",
        "",
        "| metric | challenger | champion | delta |",
        "| --- | ---: | ---: | ---: |",
        f"| business-weighted score | {_fmt(result['candidate_score'])} | {_fmt(result.get('champion_score'))} "
        f"| {_fmt(result.get('delta'), '+.4f')} |",
        f"| leaf accuracy | {_fmt(result.get('candidate_accuracy'))} | {_fmt(result.get('champion_accuracy'))} | "
        + (_fmt(result['candidate_accuracy'] - result['champion_accuracy'], '+.4f')
           if result.get("champion_accuracy") is not None else "–") + " |",
    ]
    coverage = result.get("coverage") or {}
    cand_auto, champ_auto = coverage.get("candidate") or {}, coverage.get("champion") or {}
    for key, what in (("coverage", "coverage (auto-categorised share)"), ("auto_precision", "precision auto-categorised"),
                      ("value_coverage", "value-weighted coverage")):
        if cand_auto or champ_auto:
            c, h = cand_auto.get(key), champ_auto.get(key)
            lines.append(f"| {what} | {_fmt(c)} | {_fmt(h)} | "
                         f"{_fmt(c - h, '+.4f') if c is not None and h is not None else '–'} |")
    if interval:
        lines.append(f"| delta {result.get('confidence', 0.95):.0%} bootstrap interval | | | "
                     f"[{interval[0]:+.4f}, {interval[1]:+.4f}] |")
    if result.get("required_improvement") is not None:
        lines.append(f"| required improvement | | | {result['required_improvement']:.4f} |")
    lines += ["", f"### Leaf recall, top {top_n} categories by business value", "",
              "| category | n | value | challenger | champion | delta |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    failing = set(result.get("failing_slices") or [])
    for r in per_class.head(top_n).itertuples():
        mark = " ❌" if r.category_path in failing else ""
        lines.append(f"| {r.category_path}{mark} | {r.support} | {r.value:.1f} | {_fmt(r.recall_candidate, '.3f')} "
                     f"| {_fmt(r.recall_champion, '.3f')} | {_fmt(r.delta, '+.3f')} |")
    if coverage.get("note"):
        lines += ["", f"**Auto-categorisation** (each model at its own stored threshold; "
                      f"max coverage drop {_fmt(coverage.get('max_drop'))}): {coverage['note']}"]
    blind = result.get("leaves_without_golden") or ()
    if blind:
        shown = ", ".join(blind[:BLIND_LEAVES_SHOWN]) + (f" and {len(blind) - BLIND_LEAVES_SHOWN} more"
                                                         if len(blind) > BLIND_LEAVES_SHOWN else "")
        lines += ["", f"**Leaves with no golden listing** ({len(blind)}; the gate cannot see them): {shown}"]
    suspects = result.get("golden_label_issues")
    if suspects and "flagged" in suspects:
        lines += ["", f"**Golden listings to relabel:** {suspects['flagged']} flagged by confident learning on "
                      f"v{suspects.get('scored_by')}'s out-of-sample probabilities (`{suspects.get('artifact')}` "
                      "on the training run; never dropped from the golden set)"]
    serving = result.get("serving_check")
    if serving:
        lines += ["", f"**Serving check** (`models:/…@challenger` in a fresh process): "
                      f"{'passed' if serving.get('ok') else 'FAILED'} – {serving.get('detail', '')}"]
    run_id = lineage.get("mlflow_run_id")
    exp = result.get("experiment_id")
    links = []
    if run_id:  # relative to the MLflow UI the description is read in: any host, any port
        links.append(f"[training run](#/experiments/{exp}/runs/{run_id})")
        links.append(f"[comparison artifacts](#/experiments/{exp}/runs/{run_id}/artifacts)")
    if lineage.get("gx_data_docs") and lineage["gx_data_docs"] != "None":
        links.append(f"[GX Data Docs]({airflow_ui_url()}/data-docs/)")
    lines += ["", "### Lineage", "", " · ".join(links) if links else "", ""]
    lines += _batches_table(batches)
    lines += ["", "| pins | id |", "| --- | --- |"]
    for key, what in REVISIONS.items():
        if lineage.get(key):
            lines.append(f"| {what} | `{lineage[key]}` |")
    return "\n".join(lines)[:DESCRIPTION_CHARS]


def log_comparison(client, run_id: str, golden_rev: str, result: dict, per_class: pd.DataFrame,
                   candidate: PerListing, champion: PerListing | None, report: str) -> str:
    """Logs the comparison artifacts to the challenger's run.

    Returns:
        The artifact folder, ``comparison/<golden_rev>``.
    """
    folder = f"comparison/{golden_rev}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        per_class.to_csv(out / "per_class_delta.csv", index=False)
        confusion_png(candidate, out / "confusion_challenger.png", f"challenger v{result['version']}")
        if champion is not None:
            confusion_png(champion, out / "confusion_champion.png", f"champion v{result.get('champion_version')}")
        (out / "decision.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "report.md").write_text(report)
        client.log_artifacts(run_id, str(out), folder)
    return folder
