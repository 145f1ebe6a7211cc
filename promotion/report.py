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
from urllib.parse import quote

import numpy as np
import pandas as pd

from promotion.gate import PerListing
from promotion.lineage import LINEAGE_ARTIFACT
from promotion.registry import DESCRIPTION_CHARS

AIRFLOW_UI_ENV = "LCP_AIRFLOW_UI_URL"
"""The Airflow UI's public base URL, when the api-server's own settings do not give it."""


def airflow_ui_url() -> str:
    """Base URL of the Airflow UI a reviewer opens, for the links of a version description (read in
    the MLflow UI, another origin, so they must be absolute).

    Resolved as the Airflow plugin's links resolve the api-server (``plugins/
    listing_classifier_links.py``): ``LCP_AIRFLOW_UI_URL`` when set (docker compose), else
    Airflow's ``[api] base_url`` (``AIRFLOW__API__BASE_URL``, or the loaded Airflow config in a
    task), else ``http://localhost:<[api] port>`` (``AIRFLOW__API__PORT``, which ``make ui``
    exports to every process it starts, tasks included), else ``http://localhost:8080``.
    No trailing slash.
    """
    import sys

    env = os.environ
    if env.get(AIRFLOW_UI_ENV):
        return env[AIRFLOW_UI_ENV].rstrip("/")
    conf = getattr(sys.modules.get("airflow.configuration"), "conf", None)  # loaded in a task: cheap
    base = env.get("AIRFLOW__API__BASE_URL") or (conf.get("api", "base_url", fallback="") if conf else "")
    if base:
        return base.rstrip("/")
    port = env.get("AIRFLOW__API__PORT") or (conf.get("api", "port", fallback="") if conf else "") or "8080"
    return f"http://localhost:{port}"


DATA_DOCS_REDIRECT = "/lcp/data-docs/"
"""The Airflow plugin's route that answers a GX validation result id with a redirect to its Data
Docs page (``plugins/listing_classifier_ui.py``, ``mlflow_redirect_app``)."""
DATA_DOCS_INDEX = "/data-docs/index.html"
"""The Data Docs site on the Airflow api-server (``plugins/listing_classifier_ui.py``)."""


def data_docs_url(validation_id: str) -> str:
    """The link to a GX validation result's Data Docs page: the plugin's redirect on the Airflow UI
    (:func:`airflow_ui_url`), which finds the page in the api-server's state folder when opened."""
    return airflow_ui_url() + DATA_DOCS_REDIRECT + quote(validation_id, safe="/")


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


def _clip(value, chars: int) -> str:
    """``value`` on one line, at most ``chars`` characters (an ellipsis marks a cut); ``|`` escaped
    so it stays inside a Markdown table cell."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= chars else text[:chars - 1] + "…"


REVISIONS = {
    "data_rev": "data: the DVC workspace commit after versioning (listings store + golden set)",
    "workspace_commit": "data, code, params: the workspace commit after `dvc repro` (`make reproduce`)",
    "listings_md5": "the listings store's hash (its partitions' DVC hashes)",
    "golden_rev": "the golden test set's DVC hash",
    "git_commit": "the platform's code (this repository)",
    "params_hash": "the effective params.yaml (SHA-256)",
    "encoder_id": "the frozen image encoder",
    "encoder_weights_source": "its weights' source",
    "encoder_weights_licence": "its weights' licence",
    "encoder_weights_sha256": "its weights file (SHA-256)",
    "dag_id": "the Airflow DAG",
    "airflow_run_id": "the Airflow run that trained it",
}
"""Lineage tags (of the run) and, in one line each, what they pin: the lineage table, in this
order; the Airflow run last. The encoder rows appear for a frozen-encoder model only."""
BLIND_LEAVES_SHOWN = 15
"""Leaves without golden listings named in the description (all are in ``decision.json``)."""
LATEST_BATCHES = 3
"""Batches listed in the description, the latest; all are in the run's ``lineage/lineage.md``."""
GX_LINK_TEXT_CHARS = 40
"""Characters of a GX result id shown as its link's text in the description (the link holds it
whole; the full lineage shows it whole)."""
ID_CHARS = 100
"""Longest id shown in the description (a SHA-256 is 64; Airflow run ids are about 45)."""
TEXT_CHARS = 400
"""Longest free text shown in the description (the gate's reason, the serving check's detail, a
note), category paths 80: the full text is in ``decision.json``."""
REVIEW_RESERVE = 300
"""Characters left free for the review headline ``promotion.promote`` puts on top later."""
LEFT_OUT_RESERVE = 260
"""Characters kept for the line naming the sections left out."""
DESCRIPTION_BUDGET = DESCRIPTION_CHARS - REVIEW_RESERVE
"""Longest description :func:`markdown_report` writes."""


def _gx_ids(lineage: dict) -> dict[str, str]:
    """``{batch id: GX validation result id}`` of the run tag ``gx_validation_ids`` (JSON), ids only."""
    try:
        ids = json.loads(lineage.get("gx_validation_ids") or "{}")
    except (TypeError, ValueError):  # a tag cut by an older version: nothing to link
        return {}
    return {str(b): str(v) for b, v in ids.items() if v} if isinstance(ids, dict) else {}


def _gx_link(validation_id: str | None, chars: int | None = ID_CHARS) -> str:
    """A GX validation result id as a Markdown link to its Data Docs page (``–`` without)."""
    if not validation_id:
        return "–"
    text = str(validation_id).replace("`", "'")
    shown = text if chars is None or len(text) <= chars else text[:chars - 1] + "…"
    return f"[`{shown}`]({data_docs_url(text)})"


def _batch_rows(batches: list[dict], id_chars: int | None) -> list[str]:
    lines = ["| batch | listings | validation | rows read | accepted | rejected | GX result |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for b in batches:
        lines.append(f"| {b['batch_id']} | {b['listings']} | {b.get('status') or '–'} | "
                     f"{_fmt(b.get('rows'), 'd')} | {_fmt(b.get('accepted_rows'), 'd')} | "
                     f"{_fmt(b.get('rejected_rows'), 'd')} | {_gx_link(b.get('validation_id'), id_chars)} |")
    return lines


def _pins(lineage: dict, id_chars: int | None) -> list[str]:
    lines = ["| pins | id |", "| --- | --- |"]
    for key, what in REVISIONS.items():
        value = lineage.get(key)
        if value not in (None, "", "None", "none"):
            lines.append(f"| {what} | `{_clip(value, id_chars) if id_chars else _clip(value, 10**6)}` |")
    return lines


def lineage_markdown(lineage: dict, batches: list[dict]) -> str:
    """The whole lineage of a version (:data:`LINEAGE_ARTIFACT` on its run): every batch of its
    training data with its GX result linked, the GX results of the Airflow run that trained it,
    and every pin (revisions, code, encoder, Airflow run). Unbounded: it grows with the batches.

    Args:
        lineage: the run's tags (:func:`promotion.register.lineage_tags`, ``gx_validation_ids``,
            the encoder's tags).
        batches: :func:`promotion.lineage.training_batches`.

    Returns:
        Markdown text.
    """
    lines = ["# Lineage", ""]
    if batches:
        lines += [f"Training data: {sum(b['listings'] for b in batches)} listings from {len(batches)} "
                  "batch(es) (train + validation).", ""] + _batch_rows(batches, None) + [""]
    gx = _gx_ids(lineage)
    if gx:
        lines += ["GX results of this Airflow run's validation:", "", "| batch | GX result |", "| --- | --- |"]
        lines += [f"| {b} | {_gx_link(v, None)} |" for b, v in sorted(gx.items())] + [""]
    return "\n".join(lines + _pins(lineage, None)) + "\n"


def _lineage_section(lineage: dict, batches: list[dict], exp) -> list[str]:
    """The description's lineage: links, the batches in one line and the latest ones, the pins
    (the Airflow run last). Bounded: :data:`LATEST_BATCHES` rows, ids of at most :data:`ID_CHARS`.
    This Airflow run's GX results (``gx_validation_ids``) are in the full lineage only."""
    run_id = lineage.get("mlflow_run_id")
    links = []
    if run_id:  # relative to the MLflow UI the description is read in: any host, any port
        artifacts = f"#/experiments/{exp}/runs/{run_id}/artifacts"
        links += [f"[training run](#/experiments/{exp}/runs/{run_id})",
                  f"[full lineage]({artifacts}/{LINEAGE_ARTIFACT})",
                  f"[comparison artifacts]({artifacts}/comparison)"]
    if lineage.get("gx_data_docs") not in (None, "", "None"):
        links.append(f"[GX Data Docs]({airflow_ui_url()}{DATA_DOCS_INDEX})")
    lines = ["", "### Lineage", "", " · ".join(links), ""]
    if batches:
        statuses = pd.Series([b.get("status") or "unknown" for b in batches]).value_counts()
        latest = batches[-LATEST_BATCHES:]
        lines += [f"Training data: {sum(b['listings'] for b in batches)} listings from {len(batches)} "
                  f"batch(es), {batches[0]['batch_id']} to {batches[-1]['batch_id']} ("
                  + ", ".join(f"{n} {s}" for s, n in statuses.items())
                  + f"); the latest {len(latest)}, all in the full lineage:", ""]
        lines += _batch_rows(latest, GX_LINK_TEXT_CHARS) + [""]
    return lines + _pins(lineage, ID_CHARS)


def markdown_report(result: dict, per_class: pd.DataFrame, lineage: dict, top_n: int,
                    batches: list[dict] = ()) -> str:
    """The version description: decision and why, scores, links, a lineage summary.

    At most :data:`DESCRIPTION_BUDGET` characters by construction, whatever the number of
    batches (MLflow's SQL registry stores 5,000: ``SqlModelVersion.description``): the head
    (decision, reason, the score table with the delta and its interval) and the lineage
    summary are bounded (ids, free text and rows are capped, the latest batches only); the
    optional sections (per-category recall, coverage note, leaves without golden listings,
    golden listings to relabel, serving check) are added while they fit, and one that does not
    is named instead. The description always ends with the lineage table's last row, the Airflow
    run; the whole lineage is the run's :data:`LINEAGE_ARTIFACT`, which it links to.

    Links into the MLflow UI are relative (``#/experiments/...``), so they work from whatever
    host and port the UI is opened on; the Data Docs links go to the Airflow UI
    (:func:`airflow_ui_url`), GX result ids through the plugin's redirect (:func:`data_docs_url`).

    Args:
        result: :func:`promotion.promote.gate_challenger`'s result.
        per_class: :func:`per_class_delta`.
        lineage: the version's tags and its run's (``mlflow_run_id``, ``gx_data_docs``,
            ``gx_validation_ids``, ``data_rev``, the encoder's ...).
        top_n: rows of the per-category table (the gate's slices, at least 5).
        batches: :func:`promotion.lineage.training_batches` of the version's run, by batch id.

    Returns:
        Markdown text.
    """
    champ_v = result.get("champion_version")
    interval = result.get("interval")
    head = [
        f"## Gate: **{result['decision'].upper()}**",
        "",
        f"**Why:** {_clip(result['reason'], TEXT_CHARS)}",
        "",
        f"Challenger v{result['version']} vs champion " + (f"v{champ_v}" if champ_v else "(none: first model)")
        + f" on golden set `{_clip(result.get('golden_rev'), ID_CHARS)}` ({result.get('n_golden')} listings), "
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
            head.append(f"| {what} | {_fmt(c)} | {_fmt(h)} | "
                        f"{_fmt(c - h, '+.4f') if c is not None and h is not None else '–'} |")
    if interval:
        head.append(f"| delta {result.get('confidence', 0.95):.0%} bootstrap interval | | | "
                    f"[{interval[0]:+.4f}, {interval[1]:+.4f}] |")
    if result.get("required_improvement") is not None:
        head.append(f"| required improvement | | | {result['required_improvement']:.4f} |")
    tail = _lineage_section(lineage, list(batches), result.get("experiment_id"))
    optional = _optional_sections(result, per_class, top_n)
    budget = DESCRIPTION_BUDGET - len("\n".join(head + tail)) - 1
    left_out = []
    for title, section in optional:
        size = len("\n".join(section)) + 1
        if size <= budget - LEFT_OUT_RESERVE:
            head += section
            budget -= size
        else:
            left_out.append(title)
    if left_out:
        head += ["", f"*Not shown here (too long for a version description): {', '.join(left_out)}; "
                     "see the run's comparison artifacts.*"]
    return "\n".join(head + tail)


def _optional_sections(result: dict, per_class: pd.DataFrame, top_n: int) -> list[tuple[str, list[str]]]:
    """The description's sections after the score table, in the order they are added while they
    fit: ``(title, lines)``."""
    sections = []
    rows = ["", f"### Leaf recall, top {top_n} categories by business value", "",
            "| category | n | value | challenger | champion | delta |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    failing = set(result.get("failing_slices") or [])
    for r in per_class.head(top_n).itertuples():
        mark = " ❌" if r.category_path in failing else ""
        rows.append(f"| {_clip(r.category_path, 80)}{mark} | {r.support} | {r.value:.1f} | "
                    f"{_fmt(r.recall_candidate, '.3f')} | {_fmt(r.recall_champion, '.3f')} | {_fmt(r.delta, '+.3f')} |")
    sections.append(("leaf recall per category", rows))
    coverage = result.get("coverage") or {}
    if coverage.get("note"):
        sections.append(("auto-categorisation note", [
            "", f"**Auto-categorisation** (each model at its own stored threshold; max coverage drop "
                f"{_fmt(coverage.get('max_drop'))}): {_clip(coverage['note'], TEXT_CHARS)}"]))
    blind = result.get("leaves_without_golden") or ()
    if blind:
        shown = ", ".join(_clip(b, 80) for b in blind[:BLIND_LEAVES_SHOWN]) + (
            f" and {len(blind) - BLIND_LEAVES_SHOWN} more" if len(blind) > BLIND_LEAVES_SHOWN else "")
        sections.append(("leaves with no golden listing", [
            "", f"**Leaves with no golden listing** ({len(blind)}; the gate cannot see them): {shown}"]))
    suspects = result.get("golden_label_issues")
    if suspects and "flagged" in suspects:
        sections.append(("golden listings to relabel", [
            "", f"**Golden listings to relabel:** {suspects['flagged']} flagged by confident learning on "
                f"v{suspects.get('scored_by')}'s out-of-sample probabilities (`{suspects.get('artifact')}` "
                "on the training run; never dropped from the golden set)"]))
    serving = result.get("serving_check")
    if serving:
        sections.append(("serving check", [
            "", f"**Serving check** (`models:/…@challenger` in a fresh process): "
                f"{'passed' if serving.get('ok') else 'FAILED'} – {_clip(serving.get('detail', ''), TEXT_CHARS)}"]))
    return sections


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
