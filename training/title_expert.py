"""Title expert: a linear TF-IDF model of the titles, combined with the deep heads' leaf scores.

On catalogs whose titles carry the category (fashion: a linear title model alone scores 0.972
leaf accuracy on the demo's golden set), the deep fused model and a linear model over sparse
title n-grams make different mistakes: their combination beats both (docs/measurements.md,
2026-12-06). This is the "wide" linear part beside the deep part of Cheng et al. 2016 ("Wide &
Deep Learning for Recommender Systems"), here fitted separately and joined as a weighted product
of experts on the leaf scores:

    log p(leaf | listing) = log_softmax( deep(leaf) + weight * log_softmax(svm(leaf) / T) )

where ``deep`` is :meth:`training.model.ListingClassifier.leaf_log_probs` and ``svm`` the decision
values of the linear model. The linear model is the evaluate stage's title baseline
(:func:`training.evaluate.title_features`: TF-IDF of word 1-2 grams and ``char_wb`` 2-5 grams,
sublinear tf; scikit-learn's ``LinearSVC``, C = 1), fitted on the training split's titles after
the heads have trained. ``T`` and ``weight`` are chosen on the validation split from a small grid
(:data:`TEMPERATURES` x :data:`WEIGHTS`, weight 0 included: an expert that does not help on
validation is dropped) by validation accuracy, ties broken by the lower validation log loss (to
4 decimals; a full tie keeps the expert off).
The checkpoint's calibration (``training.calibration``) is then fitted on the combined scores.

The expert is stored in the checkpoint under :data:`TITLE_EXPERT_KEY` as plain tensors, lists and
numbers (``torch.load(weights_only=True)`` reads it; no pickle): both vocabularies in index order,
their IDF vectors, the coefficients ``(C, V)`` in the checkpoint's label order and the intercepts.
:meth:`TitleExpert.from_entry` rebuilds the vectorizers with those vocabularies and IDFs, so
serving computes the same features as training (tested to be exact).

Size: ``C x V`` float32, e.g. 116 leaves x 25,749 terms = 12 MB on the fashion demo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

TITLE_EXPERT_KEY = "title_expert"
"""The checkpoint's entry holding the expert (see :meth:`TitleExpert.to_entry`)."""
REPORT_KEY = "title_expert_report"
"""The checkpoint's entry holding :func:`fit_title_expert`'s report (a checkpoint that has it is
not fitted again: a resumed, finished run leaves the file as it was)."""
TEMPERATURES = (0.05, 0.1, 0.2, 0.5, 1.0)
"""Candidate temperatures of the linear model's decision values (their scale is the SVM's margin)."""
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
"""Candidate weights of the expert in the product (0: off)."""
MODEL = "tfidf(word 1-2, char_wb 2-5) + linear SVM"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _titles(titles: Sequence[str | None]) -> list[str]:
    return [t if isinstance(t, str) else "" for t in titles]


@dataclass
class TitleExpert:
    """A fitted title expert.

    Attributes:
        vectorizers: the fitted (or rebuilt) ``TfidfVectorizer`` of words and of characters.
        coef: float32 ``(C, V)``, V the two vocabularies' sizes added, rows in label order.
        intercept: float32 ``(C,)``.
        temperature: ``T`` dividing the decision values.
        weight: the expert's weight in the product (0: off).
        labels: the C leaf category paths (the checkpoint's label order).
    """

    vectorizers: tuple
    coef: np.ndarray
    intercept: np.ndarray
    temperature: float
    weight: float
    labels: list[str]

    def decision(self, titles: Sequence[str | None]) -> np.ndarray:
        """float32 ``(N, C)`` decision values of the linear model for N titles (None: empty)."""
        import scipy.sparse as sp

        texts = _titles(titles)
        x = sp.hstack([v.transform(texts) for v in self.vectorizers], format="csr")
        return (np.asarray(x @ self.coef.T) + self.intercept).astype(np.float32)

    def log_probs(self, titles: Sequence[str | None]) -> np.ndarray:
        """float32 ``(N, C)``: ``weight * log_softmax(decision / T)``, the term added to the deep
        model's leaf log-probabilities (zeros when the weight is 0)."""
        if not self.weight:
            return np.zeros((len(titles), len(self.labels)), dtype=np.float32)
        return (self.weight * _log_softmax(self.decision(titles) / self.temperature)).astype(np.float32)

    def to_entry(self) -> dict:
        """The checkpoint entry: tensors, lists of str and numbers only (``weights_only`` loads)."""
        word, char = self.vectorizers
        return {
            "model": MODEL,
            "word_vocabulary": sorted(word.vocabulary_, key=word.vocabulary_.get),
            "char_vocabulary": sorted(char.vocabulary_, key=char.vocabulary_.get),
            "word_idf": torch.from_numpy(np.asarray(word.idf_, dtype=np.float64)),
            "char_idf": torch.from_numpy(np.asarray(char.idf_, dtype=np.float64)),
            "coef": torch.from_numpy(np.ascontiguousarray(self.coef, dtype=np.float32)),
            "intercept": torch.from_numpy(np.asarray(self.intercept, dtype=np.float32)),
            "temperature": float(self.temperature),
            "weight": float(self.weight),
            "labels": list(self.labels),
        }

    @classmethod
    def from_entry(cls, entry: dict) -> TitleExpert:
        """Rebuilds the expert of a checkpoint entry (:meth:`to_entry`).

        Raises:
            ValueError: when the entry's parts do not fit together (vocabulary and IDF sizes,
                coefficient shape).
        """
        from training.evaluate import title_features

        union = title_features()
        word, char = (t for _, t in union.transformer_list)
        vectorizers = []
        for vec, vocab, idf in ((word, entry["word_vocabulary"], entry["word_idf"]),
                                (char, entry["char_vocabulary"], entry["char_idf"])):
            idf = np.asarray(idf, dtype=np.float64)
            if len(vocab) != len(idf):
                raise ValueError(f"title expert: {len(vocab)} terms but {len(idf)} IDF values")
            vec.set_params(vocabulary=list(vocab), min_df=1)
            vec.idf_ = idf
            vectorizers.append(vec)
        coef = np.asarray(entry["coef"], dtype=np.float32)
        labels = list(entry["labels"])
        width = len(entry["word_vocabulary"]) + len(entry["char_vocabulary"])
        if coef.shape != (len(labels), width):
            raise ValueError(f"title expert: coefficients of shape {coef.shape}, expected "
                             f"({len(labels)}, {width})")
        return cls(tuple(vectorizers), coef, np.asarray(entry["intercept"], dtype=np.float32),
                   float(entry["temperature"]), float(entry["weight"]), labels)


def fit_title_expert(train_titles: Sequence[str | None], train_paths: Sequence[str], labels: Sequence[str],
                     val_titles: Sequence[str | None], val_log_probs: np.ndarray,
                     val_targets: np.ndarray, max_rows: int = 0) -> tuple[TitleExpert | None, dict]:
    """Fits the linear title model and chooses its temperature and weight on validation.

    Args:
        train_titles, train_paths: the training split's titles and category paths.
        labels: the C leaf category paths of the deep model (its output order).
        val_titles: the validation split's titles, length M.
        val_log_probs: float ``(M, C)`` the deep model's uncalibrated leaf log-probabilities.
        val_targets: int ``(M,)`` label index of each validation listing (-1: unknown category).
        max_rows: cap on the distinct (title, category) pairs the SVM is fitted on
            (``train.title_max_rows``; 0: none): :func:`training.evaluate.fit_title_svm`.

    Returns:
        ``(expert, report)``: the expert (None when the titles cannot train one: no title, or fewer
        than two categories) and ``{"model", "terms", "temperature", "weight", "val_accuracy_deep",
        "val_accuracy", "reason"}`` for the train log.
    """
    from training.evaluate import fit_title_svm

    titles = _titles(train_titles)
    paths = [str(p) for p in train_paths]
    if len(set(paths)) < 2 or not any(t.strip() for t in titles):
        return None, {"model": None, "reason": "no titles, or fewer than two categories"}
    union, svm, fitted = fit_title_svm(titles, paths, max_rows)
    width = svm.coef_.shape[1]  # the union's terms, word then char
    index = {label: i for i, label in enumerate(labels)}
    coef = np.zeros((len(labels), width), dtype=np.float32)
    intercept = np.full(len(labels), -1e3, dtype=np.float32)  # a leaf the SVM never saw: never its pick
    classes = [str(c) for c in svm.classes_]
    if len(classes) == 2:  # one hyperplane: decision > 0 means classes[1]
        rows = {classes[0]: (np.zeros(width), 0.0),
                classes[1]: (svm.coef_[0], float(svm.intercept_[0]))}
    else:
        rows = {c: (svm.coef_[i], float(svm.intercept_[i])) for i, c in enumerate(classes)}
    for c, (w, b) in rows.items():
        if c in index:
            coef[index[c]], intercept[index[c]] = w, b
    expert = TitleExpert(tuple(t for _, t in union.transformer_list), coef, intercept, 1.0, 0.0,
                         list(labels))
    decision = expert.decision(val_titles)
    known = np.asarray(val_targets) >= 0
    deep = np.asarray(val_log_probs, dtype=np.float64)
    targets = np.asarray(val_targets)

    def figures(combined: np.ndarray) -> tuple[float, float]:
        if not known.any():
            return 0.0, 0.0
        logp = _log_softmax(combined[known])
        acc = float(np.mean(logp.argmax(1) == targets[known]))
        # the log loss to 4 decimals: a difference below that is no reason to switch the expert on
        return acc, round(float(-np.mean(logp[np.arange(int(known.sum())), targets[known]])), 4)

    deep_acc, deep_nll = figures(deep)
    best = (deep_acc, -deep_nll, 1.0, 0.0)
    for t in TEMPERATURES:
        expert_lp = _log_softmax(decision / t)
        for w in WEIGHTS[1:]:
            acc, nll = figures(deep + w * expert_lp)
            if (acc, -nll) > best[:2]:
                best = (acc, -nll, t, w)
    expert.temperature, expert.weight = best[2], best[3]
    report = {"model": MODEL, "terms": int(width), "fitted": fitted, "temperature": expert.temperature,
              "weight": expert.weight, "val_accuracy_deep": round(deep_acc, 6),
              "val_accuracy": round(best[0], 6),
              "reason": ("chosen on validation" if expert.weight else
                         "no weight improved validation: the expert is off")}
    log.info("title expert: %s on %d titles (%d terms); on %d validation listings the deep heads "
             "score %.4f, with the expert (T=%s, weight %s) %.4f", MODEL, len(titles), width,
             int(known.sum()), deep_acc, expert.temperature, expert.weight, best[0])
    return expert, report


def attach_title_expert(checkpoint, prepared, batch_size: int = 256, max_rows: int = 0) -> dict:
    """Fits the title expert of a trained checkpoint and stores it in the checkpoint.

    Reads ``<prepared>/train.parquet`` (titles, category paths) and ``val.parquet``; the deep
    model's validation scores come from :func:`training.inference.leaf_log_probs` without the
    checkpoint's calibration nor any expert it already holds. The entry is written atomically
    (None when the expert is off), so a calibration fitted afterwards sees the combined scores.
    A checkpoint that already holds an expert's report is left as it is (its report is returned).

    Args:
        checkpoint: ``models/model.pt``.
        prepared: ``data/prepared``.
        batch_size: rows per forward pass.
        max_rows: :func:`fit_title_expert`'s cap on distinct (title, category) pairs.

    Returns:
        :func:`fit_title_expert`'s report.

    Raises:
        FileNotFoundError: when the checkpoint or a split is missing.
    """
    import os
    from pathlib import Path

    import pandas as pd

    from training.inference import leaf_log_probs, load_checkpoint, split_images

    checkpoint, prepared = Path(checkpoint), Path(prepared)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if REPORT_KEY in ckpt:  # fitted on these weights already (training rewrites the file without it)
        return dict(ckpt[REPORT_KEY])
    loaded = load_checkpoint(checkpoint)
    loaded.title_expert = None  # the deep heads alone
    train = pd.read_parquet(prepared / "train.parquet", columns=["title", "category_path"])
    val = pd.read_parquet(prepared / "val.parquet")
    deep = leaf_log_probs(loaded, val, split_images(loaded, prepared, "val", val), batch_size, temperature=1.0)
    index = {label: i for i, label in enumerate(loaded.labels)}
    targets = np.array([index.get(p, -1) for p in val["category_path"].astype(str)], dtype=np.int64)
    expert, report = fit_title_expert(train["title"].tolist(), train["category_path"].astype(str).tolist(),
                                      loaded.labels, val["title"].tolist(), deep, targets, max_rows)
    ckpt[TITLE_EXPERT_KEY] = expert.to_entry() if expert is not None and expert.weight else None
    ckpt[REPORT_KEY] = report
    tmp = checkpoint.with_suffix(".title-expert.tmp")  # never a half-written checkpoint
    torch.save(ckpt, tmp)
    os.replace(tmp, checkpoint)
    return report
