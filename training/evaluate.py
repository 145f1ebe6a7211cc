"""Evaluate stage: scores ``models/model.pt`` on the frozen golden set.

Predictions come from :func:`training.inference.leaf_log_probs`, the prediction path the served
model uses (:func:`training.inference.predict_paths`), on the golden images cached by the prepare
stage with the same ``load_image``, calibrated by the checkpoint's temperature as served.

Outputs: ``metrics.json`` (``accuracy``, ``macro_f1``, ``business_weighted_score``,
``top5_accuracy``, ``level_<k>_accuracy`` per taxonomy level, ``n_golden``, and the same
figures of the reference baseline as ``baseline_*``), ``reports/predictions.csv`` (listing_id,
true_path, predicted_path, probability, auto), ``reports/per_class.csv`` (precision / recall / F1 /
support per leaf category), ``reports/baseline.json``, ``reports/confusion_matrix.png`` and
``reports/golden_probs.npz`` (every golden listing's calibrated class probabilities, float16, for
the gate's golden label issues once this model is champion: :func:`write_golden_probs`).

Confidence (``training.calibration``): ``ece_uncalibrated`` and ``ece`` (15-bin expected
calibration error of the top-1 probability before and after the checkpoint's temperature),
``temperature``, and at the checkpoint's stored threshold (``auto_threshold``; None: no threshold
reached ``score.target_precision`` on validation, nothing is auto-categorised) ``coverage``
(share of golden listings auto-categorised), ``auto_precision`` (their leaf accuracy; None when
none is) and ``value_coverage`` (their share of the golden set's business value).

The reference baseline is a TF-IDF (word 1-2 grams + char 2-5 grams) + linear SVM
model on titles alone, fitted on the same training split and scored on the same golden set
with the same metrics: the bar the fused model has to clear.

CLI::

    python -m training.evaluate --params params.yaml [--workspace .]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, precision_recall_fscore_support

from common.catalog import split_path
from common.label_issues import PROBS_MAX_BYTES, ProbabilityTable, write_probabilities
from common.params import Params, ScoreParams, load_params
from common.scoring import business_weighted_score, category_value
from training.calibration import (
    apply_temperature,
    auto_mask,
    coverage_figures,
    expected_calibration_error,
)
from training.inference import leaf_log_probs, load_checkpoint, split_images

log = logging.getLogger(__name__)

METRICS = Path("metrics.json")
PREDICTIONS = Path("reports") / "predictions.csv"
GOLDEN_PROBS = Path("reports") / "golden_probs.npz"
"""Every golden listing's calibrated class probabilities (:func:`write_golden_probs`)."""
CONFUSION = Path("reports") / "confusion_matrix.png"
PER_CLASS = Path("reports") / "per_class.csv"
BASELINE = Path("reports") / "baseline.json"


def level_accuracies(true_paths: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy at each taxonomy level: the first ``k`` levels of both paths equal.

    Args:
        true_paths: true category paths (``"A > B > C"``), length N.
        predicted: predicted category paths, length N.

    Returns:
        ``{"level_1_accuracy": float, ..., "level_<depth>_accuracy": float}`` for the depth of
        the deepest true path; a path shorter than ``k`` counts only when both have the same levels.
    """
    true_levels = [split_path(t) for t in true_paths]
    pred_levels = [split_path(p) for p in predicted]
    depth = max((len(t) for t in true_levels), default=0)
    return {
        f"level_{k}_accuracy": float(np.mean([t[:k] == p[:k] for t, p in zip(true_levels, pred_levels,
                                                                             strict=True)]))
        for k in range(1, depth + 1)
    }


def classification_metrics(true_paths: list[str], predicted: list[str], score: ScoreParams) -> dict:
    """Leaf accuracy, macro-F1 (over the true golden classes), level accuracies and the score."""
    return {
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, true_paths, strict=True)])),
        "macro_f1": float(f1_score(true_paths, predicted, labels=sorted(set(true_paths)),
                                   average="macro", zero_division=0)),
        "business_weighted_score": business_weighted_score(
            true_paths, predicted, score.value_table, score.level_credit, score.default_value),
        **level_accuracies(true_paths, predicted),
    }


def title_features():
    """The title baseline's features, unfitted: TF-IDF of word 1-2 grams and of character 2-5
    grams (``char_wb``, min_df 2), sublinear tf, side by side (a scikit-learn ``FeatureUnion``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )


TITLE_SAMPLE_SALT = "title-model"
"""Salt of the leaf-stratified sample :func:`fit_title_svm` takes above its row cap."""


def title_training_set(titles: Sequence[str], paths: Sequence[str], max_rows: int,
                       min_per_leaf: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows a title model is fitted on: each distinct (title, category path) pair once,
    weighted by how often it occurs, and at most about ``max_rows`` pairs.

    A squared-hinge linear SVM fitted on a pair once with weight ``w`` has the optimum it has on
    ``w`` copies of it (the loss is a sum over rows), but liblinear's dual coordinate descent
    converges far more slowly on copies: stores repeat titles (re-listed products, variants,
    the benchmark's copied stores) and the fit grew faster than the rows (docs/measurements.md,
    2026-12-06 session 20). Above ``max_rows`` distinct pairs, a leaf-stratified sample of them
    (:func:`training.replay.stratified_sample`: each leaf its share, at least ``min_per_leaf``,
    stable order by SHA-256 of the title) bounds the fit on any store.

    Args:
        titles: N titles (None or NaN read as ``""``).
        paths: N category paths.
        max_rows: most distinct pairs fitted on (0: no cap).
        min_per_leaf: a leaf's floor in the sample.

    Returns:
        ``(rows, pairs, weights)``: int64 indices into the N rows whose titles the features are
        fitted on (every row of a kept pair), int64 ``(P,)`` index of one row per kept pair, and
        float64 ``(P,)`` its number of rows.
    """
    from training.replay import stratified_sample

    frame = pd.DataFrame({"title": [t if isinstance(t, str) else "" for t in titles],
                          "category_path": [str(p) for p in paths]})
    pair = frame.groupby(["title", "category_path"], sort=False).ngroup().to_numpy()
    first = pd.Series(np.arange(len(frame))).groupby(pair).first().to_numpy()
    weights = np.bincount(pair).astype(np.float64)
    if max_rows and len(first) > max_rows:
        distinct = frame.iloc[first].assign(listing_id=frame["title"].iloc[first].to_numpy(),
                                           _pair=np.arange(len(first)))
        kept = stratified_sample(distinct.reset_index(drop=True), max_rows, min_per_leaf,
                                 TITLE_SAMPLE_SALT)["_pair"].to_numpy()
        first, weights = first[kept], weights[kept]
        rows = np.flatnonzero(np.isin(pair, kept))
    else:
        rows = np.arange(len(frame))
    return rows.astype(np.int64), first.astype(np.int64), weights


def fit_title_svm(titles: Sequence[str], paths: Sequence[str], max_rows: int = 0):
    """Fits the title model (:func:`title_features` + ``LinearSVC``, C = 1) on
    :func:`title_training_set`'s rows: the features on the titles of every kept row, the SVM on
    each distinct pair once with its weight.

    Returns:
        ``(features, svm, report)``: the fitted ``FeatureUnion``, the fitted ``LinearSVC`` and
        ``{"rows", "distinct_pairs", "fitted_pairs", "capped"}``.
    """
    from sklearn.svm import LinearSVC

    titles = [t if isinstance(t, str) else "" for t in titles]
    paths = [str(p) for p in paths]
    rows, pairs, weights = title_training_set(titles, paths, max_rows)
    position = np.full(len(titles), -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    features = title_features()
    x = features.fit_transform([titles[i] for i in rows])[position[pairs]]
    svm = LinearSVC(C=1.0, random_state=0).fit(x, [paths[i] for i in pairs], sample_weight=weights)
    distinct = len(set(zip(titles, paths, strict=True)))
    report = {"rows": len(titles), "distinct_pairs": distinct, "fitted_pairs": len(pairs),
              "capped": len(pairs) < distinct}
    if report["capped"]:
        log.info("title model: %d distinct (title, category) pairs, fitted on a leaf-stratified "
                 "sample of %d (train.title_max_rows)", distinct, len(pairs))
    return features, svm, report


def title_baseline_predictions(train: pd.DataFrame, golden: pd.DataFrame,
                               max_rows: int = 0) -> tuple[str, list[str]]:
    """Fits :func:`title_baseline`'s model on ``train`` and predicts ``golden``.

    Args:
        train: training split with ``title`` and ``category_path`` columns.
        golden: the rows to predict (``title``).
        max_rows: :func:`fit_title_svm`'s cap on distinct (title, category) pairs (0: none).

    Returns:
        ``(model name, predicted category paths in golden's row order)``.
    """
    titles = train["title"].fillna("").astype(str)
    if train["category_path"].nunique() < 2 or not titles.str.strip().ne("").any():
        # one class, or a catalog without titles: the majority class
        return ("majority class (one category, or no titles)",
                [str(train["category_path"].mode().iloc[0])] * len(golden))
    features, svm, _ = fit_title_svm(titles.tolist(), train["category_path"].astype(str).tolist(), max_rows)
    return ("tfidf(word 1-2, char_wb 2-5) + linear SVM, titles only",
            list(svm.predict(features.transform(golden["title"].fillna("").astype(str)))))


def title_baseline(train: pd.DataFrame, golden: pd.DataFrame, score: ScoreParams, max_rows: int = 0) -> dict:
    """The reference model: TF-IDF on titles + a linear SVM, scored like the real model.

    Word 1-2 grams and character 2-5 grams (``char_wb``), sublinear tf, and scikit-learn's
    ``LinearSVC`` (liblinear, one-vs-rest, squared hinge loss, C = 1): the linear text
    classifier of scikit-learn's "Classification of text documents using sparse features"
    benchmark, fitted on the training split only. It replaced an L2 logistic regression (lbfgs,
    C = 10) of the same accuracy and several times the fitting time (figures:
    ``benchmarks/title_baseline.py``, docs/measurements.md). With a single class, or without any title (a catalog that maps none), it predicts the
    training split's most frequent category (the majority-class baseline).

    Args:
        train: training split with ``title`` and ``category_path`` columns.
        golden: golden split with the same columns.
        score: score params.
        max_rows: cap on the distinct (title, category) pairs fitted on (``train.title_max_rows``;
            0: none), see :func:`fit_title_svm`.

    Returns:
        :func:`classification_metrics` of the baseline on the golden set, plus ``seconds`` and
        ``model`` (which baseline it was).
    """
    import time

    t0 = time.perf_counter()
    name, predicted = title_baseline_predictions(train, golden, max_rows)
    result = classification_metrics(golden["category_path"].astype(str).tolist(), predicted, score)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["model"] = name
    return result


def top_k_hits(scores: np.ndarray, labels: list[str], true_paths: list[str], k: int = 5) -> np.ndarray:
    """bool ``(N,)``: whether each row's true path is among its ``k`` highest ``scores``
    (probabilities or log-probabilities, ``(N, C)``; a true path outside ``labels`` never is)."""
    if len(true_paths) == 0:
        return np.zeros(0, dtype=bool)
    index = {label: i for i, label in enumerate(labels)}
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.array([index.get(t, -1) in row for t, row in zip(true_paths, top, strict=True)])


EVAL_CHUNK = 4096
"""Golden listings scored at a time: the stage holds ``EVAL_CHUNK x classes`` float32 scores at
most (a chunk's raw and calibrated log-probabilities), never ``golden x classes``: at 150,000
golden listings and 3,000 leaves a whole array would be 1.8 GB per copy."""


def score_chunks(loaded, golden: pd.DataFrame, images: np.ndarray | None, batch_size: int,
                 chunk: int = EVAL_CHUNK, keep_probs: bool = False) -> dict[str, np.ndarray]:
    """What the metrics need of every golden listing, ``chunk`` rows at a time.

    Args:
        keep_probs: also return every class's calibrated probability, as float16 (N x C x 2
            bytes; the caller checks the size).

    Returns:
        ``{"top1": int64 (N,) class index, "confidence": float32 (N,) calibrated top-1
        probability, "raw_confidence": float32 (N,) uncalibrated top-1 probability,
        "top5": bool (N,) true path among the 5 most probable}``, and with ``keep_probs``
        ``"probs"``: float16 ``(N, C)`` calibrated probabilities over ``loaded.labels``.
    """
    true_paths = golden["category_path"].tolist()
    parts: dict[str, list] = {"top1": [], "confidence": [], "raw_confidence": [], "top5": []}
    if keep_probs:
        parts["probs"] = []
    for start in range(0, len(golden), chunk):
        rows = slice(start, start + chunk)
        raw = leaf_log_probs(loaded, golden.iloc[rows].reset_index(drop=True),
                             None if images is None else images[rows], batch_size, temperature=1.0)
        calibrated = apply_temperature(raw, loaded.temperature)
        parts["top1"].append(calibrated.argmax(axis=1))
        parts["confidence"].append(np.exp(calibrated.max(axis=1)).astype(np.float32))
        parts["raw_confidence"].append(np.exp(raw.max(axis=1)).astype(np.float32))
        parts["top5"].append(top_k_hits(calibrated, loaded.labels, true_paths[rows], 5))
        if keep_probs:
            parts["probs"].append(np.exp(calibrated).astype(np.float16))
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def plot_confusion(true_paths: list[str], predicted: list[str], score: ScoreParams, out: Path,
                   top_n: int = 20) -> list[str]:
    """Row-normalised confusion matrix of the ``top_n`` categories by business value x frequency.

    Predictions outside those categories fall in a last "other" column, so each row still sums
    to 1. Returns the categories shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = pd.Series(true_paths).value_counts()
    weight = {c: n * category_value(c, score.value_table, score.default_value) for c, n in counts.items()}
    shown = sorted(weight, key=lambda c: (-weight[c], c))[:top_n]
    pos = {c: i for i, c in enumerate(shown)}
    other = len(shown)
    matrix = np.zeros((len(shown), len(shown) + 1), dtype=np.float64)
    for t, p in zip(true_paths, predicted, strict=True):
        if t in pos:
            matrix[pos[t], pos.get(p, other)] += 1
    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)

    names = [f"{split_path(c)[-1]} ({split_path(c)[0][:4]})" for c in shown]
    size = max(6.0, 0.45 * len(shown) + 3)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(shown) + 1), names + ["other"], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(shown)), [f"{n}  n={int(r)}" for n, r in zip(names, rows[:, 0], strict=True)],
                  fontsize=8)
    for i in range(norm.shape[0]):
        for j in range(norm.shape[1]):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted leaf")
    ax.set_ylabel("true leaf (golden)")
    ax.set_title(f"Golden confusion, top {len(shown)} categories by value x frequency (row-normalised)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return shown


def evaluate(workspace: Path, params: Params, batch_size: int = 256) -> dict:
    """Runs the evaluate stage in a workspace.

    Args:
        workspace: folder with ``models/model.pt`` and ``data/prepared/golden*``.
        params: project params (group ``score``).
        batch_size: rows per forward pass.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        FileNotFoundError: when the checkpoint or the golden split is missing.
        ValueError: when the golden set is empty.
    """
    workspace = Path(workspace)
    prepared = workspace / "data" / "prepared"
    golden = pd.read_parquet(prepared / "golden.parquet")
    if golden.empty:
        raise ValueError("the golden set is empty")
    loaded = load_checkpoint(workspace / "models" / "model.pt")
    images = split_images(loaded, prepared, "golden", golden)
    # one forward pass per chunk: the uncalibrated leaf log-probabilities, then the served
    # (calibrated) ones, reduced to what the metrics need (score_chunks)
    keep_probs = len(golden) * len(loaded.labels) * 2 <= PROBS_MAX_BYTES
    scored = score_chunks(loaded, golden, images, batch_size, keep_probs=keep_probs)
    predicted = [loaded.labels[i] for i in scored["top1"]]
    true_paths = golden["category_path"].tolist()
    correct = np.array([p == t for p, t in zip(predicted, true_paths, strict=True)])
    confidence = scored["confidence"]
    auto = auto_mask(confidence, loaded.threshold)

    score = params.score
    metrics = {
        **classification_metrics(true_paths, predicted, score),
        "top5_accuracy": float(np.mean(scored["top5"])),
        "n_golden": len(golden),
        "ece_uncalibrated": expected_calibration_error(scored["raw_confidence"], correct),
        "ece": expected_calibration_error(confidence, correct),
        "temperature": loaded.temperature,
        "target_precision": (loaded.calibration or {}).get("target_precision"),
        "auto_threshold": loaded.threshold,
        **coverage_figures(auto, correct, true_paths, score),
    }
    baseline = title_baseline(pd.read_parquet(prepared / "train.parquet", columns=["title", "category_path"]),
                              golden, score, params.train.title_max_rows)
    metrics.update({f"baseline_{k}": v for k, v in baseline.items()
                    if k in ("accuracy", "macro_f1", "business_weighted_score")})
    (workspace / BASELINE).parent.mkdir(parents=True, exist_ok=True)
    (workspace / BASELINE).write_text(json.dumps(
        {**baseline, "fused_minus_baseline_accuracy": metrics["accuracy"] - baseline["accuracy"]},
        indent=2))
    labels = sorted(set(true_paths) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        true_paths, predicted, labels=labels, zero_division=0)
    pd.DataFrame({"category_path": labels, "precision": precision, "recall": recall, "f1": f1,
                  "support": support, "value": [category_value(c, score.value_table, score.default_value)
                                                for c in labels]}
                 ).sort_values(["value", "support"], ascending=False).to_csv(workspace / PER_CLASS, index=False)
    (workspace / METRICS).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (workspace / PREDICTIONS).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "listing_id": golden["listing_id"].astype(str),
        "true_path": true_paths,
        "predicted_path": predicted,
        "probability": confidence,
        "auto": auto,
    }).to_csv(workspace / PREDICTIONS, index=False)
    plot_confusion(true_paths, predicted, score, workspace / CONFUSION)
    write_golden_probs(workspace / GOLDEN_PROBS, golden, scored.get("probs"), loaded.labels)
    return metrics


def write_golden_probs(path: Path, golden: pd.DataFrame, probs: np.ndarray | None, classes: Sequence[str]) -> None:
    """Writes the golden listings' calibrated class probabilities (``reports/golden_probs.npz``,
    :func:`common.label_issues.write_probabilities`, keyed by
    :func:`training.serving.listing_keys`): registered with the run, they spare the gate
    predicting this model on the whole golden set for golden label issues once it is champion.
    ``probs`` None (the table would pass :data:`common.label_issues.PROBS_MAX_BYTES`) writes an
    empty table, so the stage's output always exists."""
    from training.serving import listing_keys

    if probs is None:
        log.info("golden probabilities not kept: %d x %d passes %d bytes as float16", len(golden),
                 len(classes), PROBS_MAX_BYTES)
        table = ProbabilityTable([], np.zeros((0, len(classes)), dtype=np.float16), list(classes))
    else:
        table = ProbabilityTable(listing_keys(golden), probs, list(classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_probabilities(path, table)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per forward pass")
    args = parser.parse_args(argv)
    metrics = evaluate(Path(args.workspace), load_params(args.params), args.batch_size)
    print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
