"""Evaluate stage: scores ``models/model.pt`` on the frozen golden set.

Predictions come from :func:`training.serving.predict_paths`, the function the served model
uses, on the golden images cached by the prepare stage with the same ``load_image``.

Outputs: ``metrics.json`` (``accuracy``, ``macro_f1``, ``business_weighted_score``,
``top5_accuracy``, ``n_golden``), ``reports/predictions.csv`` (listing_id, true_path,
predicted_path, probability) and ``reports/confusion_matrix.png``.

CLI::

    python -m training.evaluate --params params.yaml [--workspace .]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from common.catalog import split_path
from common.params import Params, ScoreParams, load_params
from common.scoring import business_weighted_score, category_value
from training.serving import load_checkpoint, predict_paths

METRICS = Path("metrics.json")
PREDICTIONS = Path("reports") / "predictions.csv"
CONFUSION = Path("reports") / "confusion_matrix.png"


def top_k_accuracy(probs: np.ndarray, labels: list[str], true_paths: list[str], k: int = 5) -> float:
    """Share of rows whose true path is among the k most probable labels."""
    if len(true_paths) == 0:
        return 0.0
    index = {label: i for i, label in enumerate(labels)}
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    hits = [index.get(t, -1) in row for t, row in zip(true_paths, top, strict=True)]
    return float(np.mean(hits))


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
    images = np.load(prepared / "golden_images.npy", mmap_mode="r")
    loaded = load_checkpoint(workspace / "models" / "model.pt")
    predicted, probs = predict_paths(loaded, golden["title"].tolist(), images, batch_size)
    true_paths = golden["category_path"].tolist()

    score = params.score
    metrics = {
        "accuracy": float(np.mean([p == t for p, t in zip(predicted, true_paths, strict=True)])),
        "macro_f1": float(f1_score(true_paths, predicted, labels=sorted(set(true_paths)),
                                   average="macro", zero_division=0)),
        "business_weighted_score": business_weighted_score(
            true_paths, predicted, score.value_table, score.level_credit, score.default_value),
        "top5_accuracy": top_k_accuracy(probs, loaded.labels, true_paths, 5),
        "n_golden": len(golden),
    }
    (workspace / METRICS).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    (workspace / PREDICTIONS).parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "listing_id": golden["listing_id"].astype(str),
        "true_path": true_paths,
        "predicted_path": predicted,
        "probability": probs.max(axis=1),
    }).to_csv(workspace / PREDICTIONS, index=False)
    plot_confusion(true_paths, predicted, score, workspace / CONFUSION)
    return metrics


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
