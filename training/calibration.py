"""Calibrated confidence and auto-categorisation at a precision target.

After training, two figures are fitted on the validation split (``data/prepared/val*``) and stored
in the checkpoint (``models/model.pt``, key ``"calibration"``), so that every consumer of the
checkpoint (the evaluate stage, the served pyfunc, batch prediction) reads the same ones:

* **Temperature** ``T`` (temperature scaling: Guo et al., "On Calibration of Modern Neural
  Networks", ICML 2017): one scalar dividing the leaf logits, fitted by minimising the negative
  log-likelihood of the validation listings' true leaves. It is applied to the *combined* leaf
  distribution, the one that is served: ``ListingClassifier.leaf_log_probs`` turns the level
  heads into leaf log-probabilities ``log p = s - logsumexp(s)`` of a leaf score ``s``; since a
  per-row constant cancels in a softmax, ``softmax(log p / T) == softmax(s / T)``, i.e. the
  temperature scales the leaf scores, whatever the number of levels. ``T`` > 0 leaves the top
  leaf (hence every accuracy and business score) unchanged; only the probability moves.
* **Threshold** ``t``: the lowest calibrated top-1 probability at which the validation listings
  auto-categorised (probability >= ``t``) reach precision (accuracy of the auto-categorised
  listings) ``score.target_precision``. When no threshold reaches it, ``t`` is None and nothing
  is auto-categorised; the train log says so.

The expected calibration error (:func:`expected_calibration_error`, 15 equal-width confidence
bins: Naeini et al., AAAI 2015; Guo et al. 2017) and :func:`coverage_figures` measure the result
on the golden set in the evaluate stage.

CLI (re-fits both on the workspace's checkpoint; ``training.train`` does this after training)::

    python -m training.calibration --params params.yaml [--workspace .]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.cli import configure_logging
from common.params import Params, ScoreParams, load_params
from common.scoring import category_value

log = logging.getLogger(__name__)

ECE_BINS = 15
"""Confidence bins of the expected calibration error (Guo et al. 2017 use 15)."""
CALIBRATION_KEY = "calibration"
"""The checkpoint's entry holding the fitted temperature and threshold."""


def fit_temperature(logits: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor,
                    max_iter: int = 100) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017, sec. 4.2).

    Optimised on ``log T`` (so ``T`` stays positive) with L-BFGS and a strong-Wolfe line search,
    from ``T = 1``. Rows whose target is negative (a category the model does not know) are left
    out.

    Args:
        logits: float ``(N, C)`` logits or log-probabilities (a per-row constant does not matter).
        targets: int ``(N,)`` true class indices in ``[0, C)``, or -1.
        max_iter: L-BFGS iterations.

    Returns:
        ``T`` > 0; 1.0 when no row has a known target (nothing to fit on).

    Raises:
        ValueError: when the shapes disagree.
    """
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits {tuple(z.shape)} and targets {tuple(y.shape)}: expected (N, C) and (N,)")
    known = y >= 0
    z, y = z[known], y[known]
    # -inf log-probabilities (an underflowed leaf) would make the NLL's gradient NaN: floor them
    z = torch.clamp(z, min=-1e4)
    if len(y) == 0:
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """``log_softmax(log_probs / T)`` row-wise, as float32 (``T == 1`` returns the input).

    Args:
        log_probs: float ``(N, C)`` leaf log-probabilities (or logits).
        temperature: ``T`` > 0.

    Returns:
        float32 ``(N, C)`` calibrated log-probabilities.
    """
    if temperature == 1.0:
        return np.asarray(log_probs, dtype=np.float32)
    z = torch.as_tensor(np.asarray(log_probs, dtype=np.float32)) / float(temperature)
    return torch.log_softmax(z, dim=1).numpy()


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` over equal-width confidence bins.

    Bin ``b`` holds the rows with confidence in ``(b / bins, (b + 1) / bins]`` (a confidence of
    exactly 0 falls in the first). Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al. 2017, eq. 3.

    Args:
        confidence: float ``(N,)`` top-1 probabilities in [0, 1].
        correct: bool ``(N,)`` whether the top-1 prediction is right.
        bins: number of bins M.

    Returns:
        ECE in [0, 1]; 0.0 for no rows.

    Raises:
        ValueError: when the lengths differ.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} differ")
    if conf.size == 0:
        return 0.0
    index = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            ece += mask.sum() / conf.size * abs(hit[mask].mean() - conf[mask].mean())
    return float(ece)


def choose_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float) -> float | None:
    """The lowest threshold ``t`` whose auto-categorised rows (confidence >= ``t``) reach the target.

    The candidates are the rows' own confidences; precision at ``t`` is the accuracy of the rows
    at or above it (ties all in or all out). Precision need not fall monotonically with ``t``, so
    every candidate is checked and the lowest passing one wins.

    Args:
        confidence: float ``(N,)`` calibrated top-1 probabilities (the served ones, float32).
        correct: bool ``(N,)`` whether each top-1 prediction is right.
        target_precision: in [0, 1].

    Returns:
        ``t`` (one of the confidences), or None when no threshold reaches the target (or N = 0):
        then nothing is auto-categorised.

    Raises:
        ValueError: when the lengths differ.
    """
    conf = np.asarray(confidence)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} differ")
    if conf.size == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    c, h = conf[order], hit[order]
    precision = np.cumsum(h) / np.arange(1, len(c) + 1)
    # a threshold takes every row of its value: evaluate only at the last row of each tie group
    last = np.r_[c[1:] != c[:-1], True]
    ok = last & (precision >= target_precision - 1e-12)
    if not ok.any():
        return None
    return float(c[np.flatnonzero(ok)[-1]])


def auto_mask(confidence: np.ndarray, threshold: float | None) -> np.ndarray:
    """bool ``(N,)``: confidence >= threshold (all False when the threshold is None)."""
    conf = np.asarray(confidence)
    return np.zeros(conf.shape, dtype=bool) if threshold is None else conf >= threshold


def coverage_figures(auto: np.ndarray, correct: np.ndarray, true_paths: Sequence[str],
                     score: ScoreParams) -> dict:
    """Coverage, precision and value-weighted coverage of the auto-categorised listings.

    Args:
        auto: bool ``(N,)``, auto-categorised.
        correct: bool ``(N,)``, top-1 leaf right.
        true_paths: N true category paths (for their business value ``v(y_i)``,
            ``common.scoring.category_value``).
        score: the ``score`` params (value table, default value).

    Returns:
        ``{"coverage", "auto_precision", "value_coverage"}``: share of listings auto-categorised,
        their leaf accuracy (None when none is), and ``sum_auto v(y_i) / sum_all v(y_i)``
        (0.0 when every value is 0).
    """
    auto = np.asarray(auto, dtype=bool)
    hit = np.asarray(correct, dtype=bool)
    values = np.array([category_value(p, score.value_table, score.default_value) for p in true_paths],
                      dtype=np.float64)
    n = auto.size
    total = values.sum()
    return {
        "coverage": float(auto.mean()) if n else 0.0,
        "auto_precision": float(hit[auto].mean()) if auto.any() else None,
        "value_coverage": float(values[auto].sum() / total) if total > 0 else 0.0,
    }


def calibrate(log_probs: np.ndarray, targets: np.ndarray, target_precision: float) -> dict:
    """Fits the temperature and the threshold on one split's uncalibrated leaf log-probabilities.

    Args:
        log_probs: float ``(N, C)`` uncalibrated leaf log-probabilities (``T = 1``).
        targets: int ``(N,)`` true leaf indices, -1 for a category the model does not know
            (counted as a wrong prediction in the threshold's precision).
        target_precision: ``score.target_precision``.

    Returns:
        The checkpoint's ``"calibration"`` entry: ``temperature``, ``threshold`` (None: nothing is
        auto-categorised), ``target_precision``, and the split's ``n``, ``nll_uncalibrated``,
        ``nll``, ``ece_uncalibrated``, ``ece``, ``coverage`` and ``precision`` (None when
        nothing is auto-categorised).
    """
    log_probs = np.asarray(log_probs, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.int64)
    temperature = fit_temperature(log_probs, targets)
    calibrated = apply_temperature(log_probs, temperature)
    known = targets >= 0

    def nll(lp: np.ndarray) -> float | None:
        if not known.any():
            return None
        picked = np.clip(lp[known, targets[known]], -1e4, None)
        return float(-picked.mean())

    top = log_probs.argmax(axis=1) if len(log_probs) else np.zeros(0, dtype=int)
    correct = top == targets
    confidence = np.exp(calibrated.max(axis=1)) if len(calibrated) else np.zeros(0, dtype=np.float32)
    threshold = choose_threshold(confidence, correct, target_precision)
    auto = auto_mask(confidence, threshold)
    return {
        "temperature": float(temperature),
        "threshold": threshold,
        "target_precision": float(target_precision),
        "n": int(len(targets)),
        "nll_uncalibrated": nll(log_probs),
        "nll": nll(calibrated),
        "ece_uncalibrated": expected_calibration_error(
            np.exp(log_probs.max(axis=1)) if len(log_probs) else np.zeros(0), correct),
        "ece": expected_calibration_error(confidence, correct),
        "coverage": float(auto.mean()) if len(auto) else 0.0,
        "precision": float(correct[auto].mean()) if auto.any() else None,
    }


def calibrate_checkpoint(checkpoint: Path, prepared: Path, score: ScoreParams,
                         batch_size: int = 256) -> dict:
    """Fits temperature and threshold on the validation split and stores them in the checkpoint.

    The validation listings go through :func:`training.inference.leaf_log_probs` (the served
    prediction path, on the val images cached by prepare), uncalibrated; the result of
    :func:`calibrate` is written to the checkpoint's ``"calibration"`` entry (atomically; the
    rest of the checkpoint is unchanged, so a resumed run still resumes; an equal entry already
    there is not written again).

    Args:
        checkpoint: ``models/model.pt``.
        prepared: ``data/prepared`` (``val.parquet``, ``val_images.npy``).
        score: the ``score`` params (``target_precision``).
        batch_size: rows per forward pass.

    Returns:
        The stored entry (see :func:`calibrate`).

    Raises:
        FileNotFoundError: when the checkpoint or the val split is missing.
    """
    import pandas as pd

    from training.inference import leaf_log_probs, load_checkpoint, split_images

    loaded = load_checkpoint(checkpoint)
    val = pd.read_parquet(Path(prepared) / "val.parquet")
    images = split_images(loaded, prepared, "val", val)
    log_probs = leaf_log_probs(loaded, val, images, batch_size, temperature=1.0)
    index = {label: i for i, label in enumerate(loaded.labels)}
    targets = np.array([index.get(p, -1) for p in val["category_path"]], dtype=np.int64)
    entry = calibrate(log_probs, targets, score.target_precision)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if ckpt.get(CALIBRATION_KEY) != entry:  # a retried, finished run leaves the file as it was
        ckpt[CALIBRATION_KEY] = entry
        tmp = Path(checkpoint).with_suffix(".calibrating.tmp")  # never a half-written checkpoint
        torch.save(ckpt, tmp)
        os.replace(tmp, checkpoint)
    reached = (f"threshold {entry['threshold']:.4f} auto-categorises {entry['coverage']:.1%} of val at "
               f"precision {entry['precision']:.4f}" if entry["threshold"] is not None else
               "no threshold reaches the target on val: nothing is auto-categorised")
    log.info("calibration: T=%.4f val ECE %.4f -> %.4f; target precision %s: %s", entry["temperature"],
             entry["ece_uncalibrated"], entry["ece"], entry["target_precision"], reached)
    return entry


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    args = parser.parse_args(argv)
    configure_logging()
    params: Params = load_params(args.params)
    ws = Path(args.workspace)
    entry = calibrate_checkpoint(ws / "models" / "model.pt", ws / "data" / "prepared", params.score)
    print(json.dumps(entry, indent=2))
    return entry


if __name__ == "__main__":
    main()
