"""Temperature scaling, the expected calibration error, the threshold at a precision target and
the coverage figures (training.calibration), on small real tensors with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.params import ScoreParams
from training.calibration import (
    apply_temperature,
    auto_mask,
    calibrate,
    choose_threshold,
    coverage_figures,
    expected_calibration_error,
    fit_temperature,
)


def sampled(n: int = 20000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from ``softmax(logits)``: perfectly calibrated at T = 1."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_temperature_recovers_the_scale_of_overconfident_or_underconfident_logits(scale):
    logits, labels = sampled()
    t = fit_temperature(logits * scale, labels)
    assert t == pytest.approx(scale, rel=0.05)


def test_temperature_of_calibrated_logits_is_one_and_a_row_constant_does_not_matter():
    logits, labels = sampled(seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)
    # log-probabilities differ from the logits by a per-row constant: the same temperature
    log_probs = torch.log_softmax(logits * 3.0, dim=1)
    assert fit_temperature(log_probs, labels) == pytest.approx(fit_temperature(logits * 3.0, labels), rel=1e-4)


def test_temperature_leaves_out_unknown_targets_and_fits_nothing_without_rows():
    logits, labels = sampled(seed=2)
    noisy = labels.clone()
    noisy[::3] = -1  # unknown categories: left out, so the fit is that of the other rows
    assert fit_temperature(logits * 3.0, noisy) == pytest.approx(
        fit_temperature((logits * 3.0)[noisy >= 0], labels[noisy >= 0]), rel=1e-4)
    assert fit_temperature(np.zeros((3, 4)), np.full(3, -1)) == 1.0
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(np.zeros((3, 4)), np.zeros(2, dtype=int))


def test_apply_temperature_keeps_the_top_class_and_softens():
    log_probs = torch.log_softmax(torch.tensor([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]]), dim=1).numpy()
    out = apply_temperature(log_probs, 2.0)
    assert out.dtype == np.float32
    assert (out.argmax(1) == log_probs.argmax(1)).all()
    assert np.allclose(np.exp(out).sum(1), 1.0, atol=1e-6)
    assert (np.exp(out).max(1) < np.exp(log_probs).max(1)).all()
    expected = torch.log_softmax(torch.tensor([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]]) / 2.0, dim=1).numpy()
    assert np.allclose(out, expected, atol=1e-6)
    assert apply_temperature(log_probs, 1.0) is not None and np.array_equal(apply_temperature(log_probs, 1.0),
                                                                          log_probs)


def test_ece_by_hand():
    # bin (0.8667, 0.9333]: conf 0.9 x 4, 3 right -> |0.75 - 0.9| = 0.15, weight 4/6
    # bin (0.2667, 0.3333]: conf 0.3 x 2, 1 right -> |0.5 - 0.3| = 0.2, weight 2/6
    conf = np.array([0.9, 0.9, 0.9, 0.9, 0.3, 0.3])
    right = np.array([1, 1, 1, 0, 1, 0], dtype=bool)
    assert expected_calibration_error(conf, right) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.2)
    # one bin per row when bins are fine; the two rows of one bin average before the difference
    assert expected_calibration_error(np.array([0.95, 0.65]), np.array([True, False])) == pytest.approx(
        0.5 * 0.05 + 0.5 * 0.65)
    assert expected_calibration_error(np.array([0.95, 0.96]), np.array([True, False])) == pytest.approx(
        abs(0.5 - 0.955))


def test_ece_bin_edges_zero_perfect_and_empty():
    # 1/15 lies on the first bin's right edge (inclusive); 0 falls in the first bin too
    assert expected_calibration_error(np.array([0.0, 1 / 15]), np.array([False, False])) == pytest.approx(
        abs(0 - (1 / 15) / 2))
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0
    assert expected_calibration_error(np.zeros(0), np.zeros(0, dtype=bool)) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error(np.zeros(2), np.zeros(3))


def test_temperature_scaling_lowers_ece_of_overconfident_logits():
    logits, labels = sampled(n=5000, seed=3)
    over = torch.log_softmax(logits * 3.0, dim=1).numpy()
    entry = calibrate(over, labels.numpy(), 0.99)
    assert entry["temperature"] == pytest.approx(3.0, rel=0.1)
    assert entry["ece"] < entry["ece_uncalibrated"] / 3
    assert entry["nll"] < entry["nll_uncalibrated"]


def test_threshold_is_the_lowest_meeting_the_target():
    conf = np.array([0.99, 0.95, 0.90, 0.80, 0.70, 0.60])
    right = np.array([1, 1, 0, 1, 1, 0], dtype=bool)
    # precision at each threshold: 1, 1, 2/3, 3/4, 4/5, 4/6
    assert choose_threshold(conf, right, 1.0) == pytest.approx(0.95)
    assert choose_threshold(conf, right, 0.8) == pytest.approx(0.70)  # not monotone: 0.70 passes again
    assert choose_threshold(conf, right, 0.75) == pytest.approx(0.70)
    assert choose_threshold(conf, right, 0.0) == pytest.approx(0.60)  # everything
    assert choose_threshold(conf, right, 0.66) == pytest.approx(0.60)


def test_threshold_none_when_unreachable_and_ties_go_together():
    assert choose_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.99) is None
    assert choose_threshold(np.zeros(0), np.zeros(0, dtype=bool), 0.5) is None
    # two rows tie at 0.9, one wrong: a threshold of 0.9 takes both (precision 1/2), never one
    conf, right = np.array([0.9, 0.9, 0.5]), np.array([True, False, False])
    assert choose_threshold(conf, right, 0.6) is None
    assert choose_threshold(conf, right, 0.5) == pytest.approx(0.9)
    assert not auto_mask(conf, None).any()
    assert auto_mask(conf, 0.9).tolist() == [True, True, False]


def test_threshold_on_validation_reaches_the_target_there():
    logits, labels = sampled(n=4000, seed=4)
    entry = calibrate(torch.log_softmax(logits * 3.0, dim=1).numpy(), labels.numpy(), 0.95)
    assert entry["threshold"] is not None
    assert entry["precision"] >= 0.95 and 0 < entry["coverage"] < 1
    # nothing below the threshold could have been added: the next lower confidence fails
    unreachable = calibrate(torch.log_softmax(logits * 0.0, dim=1).numpy(), labels.numpy(), 0.95)
    assert unreachable["threshold"] is None and unreachable["coverage"] == 0.0
    assert unreachable["precision"] is None


def test_coverage_figures_weight_by_business_value():
    score = ScoreParams(value_table={"Accessories > Watches": 3.0}, default_value=1.0)
    paths = ["Accessories > Watches > Watches", "Apparel > Topwear > Shirts",
             "Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts"]
    auto = np.array([True, True, False, False])
    right = np.array([True, False, True, True])
    out = coverage_figures(auto, right, paths, score)
    assert out == pytest.approx({"coverage": 0.5, "auto_precision": 0.5, "value_coverage": 4 / 6})
    none = coverage_figures(np.zeros(4, dtype=bool), right, paths, score)
    assert none == {"coverage": 0.0, "auto_precision": None, "value_coverage": 0.0}
