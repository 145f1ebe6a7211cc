"""Benchmark: the evaluate stage's title baseline against the logistic regression it replaced.

Reads a workspace's prepared splits (``data/prepared/train.parquet`` and ``golden.parquet``,
e.g. ``<state>/workspace`` after a season week), builds the baseline's features once
(``training.evaluate.title_features``) and fits,
on the training split, the classifiers compared; prints for each the fit + predict seconds and
the golden leaf accuracy:

* ``linear SVM``: ``sklearn.svm.LinearSVC(C=1.0)``, the baseline since 2026-12-02;
* ``logistic regression``: ``LogisticRegression(C=10.0, max_iter=1000)`` (lbfgs), the baseline before;
* ``complement NB``: ``ComplementNB(alpha=0.1)``, for scale (the cheapest text classifier).

Also prints the time of ``training.evaluate.title_baseline`` itself (features included).
Figures: docs/measurements.md.

Command::

    .venv/bin/python benchmarks/title_baseline.py --workspace <state>/workspace
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import ComplementNB
    from sklearn.svm import LinearSVC

    from common.params import ScoreParams
    from training.evaluate import title_baseline, title_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with data/prepared/")
    args = parser.parse_args()
    prepared = args.workspace / "data" / "prepared"
    train = pd.read_parquet(prepared / "train.parquet", columns=["title", "category_path"])
    golden = pd.read_parquet(prepared / "golden.parquet", columns=["title", "category_path"])
    titles, truth = train["title"].fillna("").astype(str), golden["category_path"].astype(str).to_numpy()
    print(f"train {len(train)} listings, golden {len(golden)}, {train['category_path'].nunique()} categories")

    t0 = time.perf_counter()
    features = title_features().fit(titles)
    x_train, x_golden = features.transform(titles), features.transform(golden["title"].fillna("").astype(str))
    print(f"features: {x_train.shape[1]} columns in {time.perf_counter() - t0:.2f} s")
    for name, model in (("linear SVM", LinearSVC(C=1.0, random_state=0)),
                        ("logistic regression", LogisticRegression(C=10.0, max_iter=1000)),
                        ("complement NB", ComplementNB(alpha=0.1))):
        t0 = time.perf_counter()
        model.fit(x_train, train["category_path"].astype(str))
        accuracy = float(np.mean(model.predict(x_golden) == truth))
        print(f"{name:20s} {time.perf_counter() - t0:6.2f} s  golden leaf accuracy {accuracy:.4f}")
    result = title_baseline(train, golden, ScoreParams())
    print(f"title_baseline ({result['model']}): {result['seconds']:.2f} s, accuracy {result['accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
