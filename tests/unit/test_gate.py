"""The promotion gate's decision rule, every branch, and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.params import GateParams
from common.scoring import listing_credits
from promotion.gate import (
    PerListing,
    Scores,
    decide,
    paired_bootstrap_delta,
    per_listing,
    required_improvement,
)

T = GateParams(min_improvement=0.01, floor_score=0.5, floor_accuracy=0.6, mode="point", slice_top_n=0)
SHIRT, TEE, JEANS, WATCH = ("Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts",
                            "Apparel > Bottomwear > Jeans", "Accessories > Watches > Watches")
VALUES = {"Accessories > Watches": 3.0}


def scored(true: list[str], pred: list[str], version: str = "1") -> Scores:
    """Scores with per-listing results, the way promotion.registry.score_version builds them."""
    values, credits = listing_credits(true, pred, VALUES, (0.0, 0.25, 0.5))
    listings = per_listing([str(i) for i in range(len(true))], true, pred, values, credits)
    acc = float(np.mean([p == t for p, t in zip(pred, true, strict=True)]))
    return Scores(float((values * credits).sum() / values.sum()), acc, version, listings)


def golden(n_per: int = 40) -> list[str]:
    return [c for c in (SHIRT, TEE, JEANS, WATCH) for _ in range(n_per)]


def with_misses(true: list[str], miss_every: dict[str, int]) -> list[str]:
    """Predictions: every k-th listing of a category predicted as another category."""
    out, seen = [], {}
    for t in true:
        seen[t] = seen.get(t, 0) + 1
        k = miss_every.get(t)
        out.append((JEANS if t != JEANS else SHIRT) if k and seen[t] % k == 0 else t)
    return out


# ---- value threshold and first run -------------------------------------------------------------

def test_first_model_promoted_when_it_passes_the_floors():
    d = decide(Scores(0.7, 0.8), None, T)
    assert d.promote and d.decision == "promoted" and d.first_run
    assert "first model" in d.reason and "only the value thresholds" in d.reason
    assert d.champion_score is None and d.delta is None and d.interval is None


def test_first_run_in_interval_mode_needs_no_per_listing_results():
    d = decide(Scores(0.7, 0.8), None, GateParams(floor_score=0.5, floor_accuracy=0.5))
    assert d.promote and d.first_run


@pytest.mark.parametrize("score,acc,word", [(0.4, 0.9, "score"), (0.9, 0.5, "accuracy")])
def test_floors_reject_even_without_champion(score, acc, word):
    d = decide(Scores(score, acc), None, T)
    assert not d.promote and d.decision == "rejected" and d.first_run
    assert word in d.reason and "floor" in d.reason


def test_both_floor_failures_are_reported():
    d = decide(Scores(0.1, 0.1), None, T)
    assert "score 0.1000 is below" in d.reason and "accuracy 0.1000 is below" in d.reason


def test_floor_applies_with_champion_too():
    d = decide(Scores(0.45, 0.9), Scores(0.3, 0.9), T)
    assert not d.promote and "floor" in d.reason


# ---- change threshold, point mode --------------------------------------------------------------

def test_promoted_when_improvement_reaches_threshold():
    d = decide(Scores(0.80, 0.9), Scores(0.78, 0.9), T)
    assert d.promote and not d.first_run
    assert d.delta == pytest.approx(0.02) and d.required_improvement == 0.01
    assert d.candidate_score == 0.80 and d.champion_score == 0.78


def test_rejected_when_improvement_below_threshold():
    d = decide(Scores(0.785, 0.9), Scores(0.78, 0.9), T)
    assert not d.promote and "below the required improvement" in d.reason


def test_rejected_when_worse():
    d = decide(Scores(0.70, 0.9), Scores(0.78, 0.9), T)
    assert not d.promote and "does not beat" in d.reason


def test_tie_never_promotes_even_with_zero_threshold():
    d = decide(Scores(0.8, 0.9), Scores(0.8, 0.9), T.model_copy(update={"min_improvement": 0.0}))
    assert not d.promote


def test_relative_threshold_wins_when_larger():
    t = T.model_copy(update={"min_improvement": 0.001, "min_relative_improvement": 0.05})
    assert required_improvement(0.8, t) == pytest.approx(0.04)
    assert not decide(Scores(0.83, 0.9), Scores(0.8, 0.9), t).promote
    assert decide(Scores(0.85, 0.9), Scores(0.8, 0.9), t).promote


def test_per_listing_results_required_by_interval_and_slices():
    with pytest.raises(ValueError, match="per-listing"):
        decide(Scores(0.9, 0.9), Scores(0.8, 0.9), T.model_copy(update={"mode": "interval"}))
    with pytest.raises(ValueError, match="per-listing"):
        decide(Scores(0.9, 0.9), Scores(0.8, 0.9), T.model_copy(update={"slice_top_n": 3}))


def test_different_golden_listings_are_refused():
    true = golden(10)
    a, b = scored(true, true), scored(true[::-1], true[::-1])
    with pytest.raises(ValueError, match="same golden listings"):
        decide(a, b, T.model_copy(update={"mode": "interval"}))


# ---- significance: paired bootstrap ------------------------------------------------------------

def test_bootstrap_is_seeded_and_brackets_the_delta():
    true = golden()
    cand, champ = scored(true, with_misses(true, {SHIRT: 10})), scored(true, with_misses(true, {SHIRT: 3}))
    args = (cand.listings.values, cand.listings.credits, champ.listings.credits, 1000, 0.95, 7)
    low, high = paired_bootstrap_delta(*args)
    assert (low, high) == paired_bootstrap_delta(*args)
    delta = cand.business_weighted_score - champ.business_weighted_score
    assert low < delta < high and low > 0


def test_bootstrap_interval_of_identical_models_is_zero():
    v = np.array([1.0, 2.0, 3.0])
    c = np.array([1.0, 0.0, 0.5])
    assert paired_bootstrap_delta(v, c, c) == (0.0, 0.0)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_bootstrap_delta(np.ones(3), np.ones(2), np.ones(3))
    with pytest.raises(ValueError):
        paired_bootstrap_delta(np.zeros(3), np.ones(3), np.ones(3))


def test_interval_mode_promotes_a_clear_win():
    true = golden()
    t = T.model_copy(update={"mode": "interval", "min_improvement": 0.0})
    d = decide(scored(true, with_misses(true, {SHIRT: 10})), scored(true, with_misses(true, {SHIRT: 2})), t)
    assert d.promote and d.interval[0] > 0 and d.confidence == 0.95
    assert "interval" in d.reason


def test_interval_mode_rejects_a_point_win_that_is_not_significant():
    true = golden()
    # one more watch right of 160 listings: a positive delta, but noise-sized
    cand, champ = scored(true, with_misses(true, {WATCH: 20})), scored(true, with_misses(true, {WATCH: 13}))
    assert cand.business_weighted_score > champ.business_weighted_score
    point = decide(cand, champ, T.model_copy(update={"min_improvement": 0.0}))
    interval = decide(cand, champ, T.model_copy(update={"min_improvement": 0.0, "mode": "interval"}))
    assert point.promote and not interval.promote
    assert interval.interval[0] <= 0 < interval.interval[1]
    assert "lower bound" in interval.reason


def test_interval_mode_needs_lower_bound_above_required_improvement():
    true = golden()
    cand, champ = scored(true, with_misses(true, {SHIRT: 10})), scored(true, with_misses(true, {SHIRT: 2}))
    d = decide(cand, champ, T.model_copy(update={"mode": "interval", "min_improvement": 0.0}))
    high_bar = decide(cand, champ, T.model_copy(update={"mode": "interval", "min_improvement": d.interval[0] + 1e-6}))
    assert d.promote and not high_bar.promote


# ---- slices ------------------------------------------------------------------------------------

def test_every_failing_slice_is_reported():
    true = golden()
    # candidate far better on watches (the most valuable slice), worse on shirts and t-shirts
    cand = scored(true, with_misses(true, {SHIRT: 4, TEE: 5}))
    champ = scored(true, with_misses(true, {WATCH: 2}))
    assert cand.business_weighted_score > champ.business_weighted_score
    t = T.model_copy(update={"min_improvement": 0.0, "slice_top_n": 4, "max_slice_recall_drop": 0.05})
    d = decide(cand, champ, t)
    assert not d.promote
    assert set(d.failing_slices) == {SHIRT, TEE}
    assert SHIRT in d.reason and TEE in d.reason
    assert [s["category"] for s in d.slices][0] == WATCH  # ranked by business value
    assert all(s["passed"] == (s["category"] not in {SHIRT, TEE}) for s in d.slices)


def test_slice_drop_within_tolerance_passes():
    true = golden()
    cand = scored(true, with_misses(true, {SHIRT: 20}))  # loses 5 points on shirts: allowed
    champ = scored(true, with_misses(true, {WATCH: 2}))
    d = decide(cand, champ, T.model_copy(update={"min_improvement": 0.0, "slice_top_n": 4,
                                                 "max_slice_recall_drop": 0.05}))
    assert d.promote and d.failing_slices == () and len(d.slices) == 4


def test_slices_only_cover_the_top_n():
    true = golden()
    cand = scored(true, with_misses(true, {JEANS: 2}))
    champ = scored(true, with_misses(true, {WATCH: 2}))
    d = decide(cand, champ, T.model_copy(update={"min_improvement": 0.0, "slice_top_n": 1}))
    assert [s["category"] for s in d.slices] == [WATCH] and d.promote


# ---- properties --------------------------------------------------------------------------------

@given(
    cand=st.floats(0, 1), champ=st.floats(0, 1), acc=st.floats(0, 1),
    min_imp=st.floats(0, 1), floor_s=st.floats(0, 1), floor_a=st.floats(0, 1),
)
def test_a_candidate_below_the_champion_is_never_promoted(cand, champ, acc, min_imp, floor_s, floor_a):
    thresholds = GateParams(min_improvement=min_imp, floor_score=floor_s, floor_accuracy=floor_a,
                            mode="point", slice_top_n=0)
    d = decide(Scores(cand, acc), Scores(champ, acc), thresholds)
    if cand <= champ:
        assert not d.promote
    if d.promote:
        assert cand - champ >= min_imp and cand >= floor_s and acc >= floor_a


@st.composite
def paired_models(draw):
    n = draw(st.integers(2, 40))
    unit = st.floats(0, 1, allow_nan=False)
    values = np.array(draw(st.lists(st.floats(0.1, 5), min_size=n, max_size=n)))
    cand = np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    champ = np.array(draw(st.lists(unit, min_size=n, max_size=n)))
    return values, cand, champ


def _scores(values, credits, version):
    ids = tuple(str(i) for i in range(len(values)))
    paths = tuple(SHIRT for _ in ids)
    pred = tuple(SHIRT if c == 1.0 else TEE for c in credits)
    listings = PerListing(ids, paths, pred, values, credits)
    return Scores(float((values * credits).sum() / values.sum()), float(np.mean(credits == 1.0)), version, listings)


@settings(max_examples=60, deadline=None)
@given(models=paired_models(), min_imp=st.floats(0, 0.5), rel=st.floats(0, 0.5),
       confidence=st.floats(0.5, 0.99), top_n=st.integers(0, 3), drop=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_interval_mode_never_promotes_a_candidate_below_the_champion(models, min_imp, rel, confidence,
                                                                     top_n, drop, seed):
    values, cand_credits, champ_credits = models
    t = GateParams(min_improvement=min_imp, min_relative_improvement=rel, floor_score=0, floor_accuracy=0,
                   mode="interval", confidence=confidence, n_bootstrap=200, bootstrap_seed=seed,
                   slice_top_n=top_n, max_slice_recall_drop=drop)
    cand, champ = _scores(values, cand_credits, "2"), _scores(values, champ_credits, "1")
    d = decide(cand, champ, t)
    if cand.business_weighted_score <= champ.business_weighted_score:
        assert not d.promote
    if d.promote:
        assert d.interval[0] > d.required_improvement >= min_imp
        assert d.delta >= d.required_improvement


def test_a_promotion_reason_reads_as_a_sentence_and_xcom_figures_are_rounded():
    true = golden()
    d = decide(scored(true, true, "2"), scored(true, with_misses(true, {TEE: 4}), "1"),
               GateParams(min_improvement=0.01, floor_score=0.5, floor_accuracy=0.6, mode="interval",
                          slice_top_n=0, n_bootstrap=300))
    assert d.promote
    assert "beats the champion's" in d.reason and f"by {d.delta:+.4f}: the 95% interval [" in d.reason
    assert "of the delta lies above the required 0.0100" in d.reason
    point = decide(Scores(0.80, 0.9), Scores(0.70000000000000001, 0.8), T)
    assert point.reason.endswith("by +0.1000 (required: 0.0100); coverage guardrail skipped: the champion "
                                 "vNone stores no auto-categorisation threshold (registered before calibration)")
    xcom = point.to_dict()
    assert xcom["delta"] == 0.1 and xcom["candidate_score"] == 0.8  # not 0.10000000000000009
    assert all(len(repr(x).split(".")[-1]) <= 6 for x in d.to_dict()["interval"])


# ---- coverage guardrail ------------------------------------------------------------------------

def covered(scores: Scores, coverage: float | None, precision: float | None = 0.99,
            value: float | None = None) -> Scores:
    """``scores`` with golden coverage figures at the version's own threshold (None: none stored)."""
    from dataclasses import replace

    return replace(scores, coverage=coverage, auto_precision=precision if coverage is not None else None,
                   value_coverage=(coverage if value is None else value) if coverage is not None else None)


COVER = GateParams(min_improvement=0.01, floor_score=0.5, floor_accuracy=0.6, mode="point", slice_top_n=0,
                   max_coverage_drop=0.02)


def test_a_winner_losing_more_coverage_than_allowed_is_rejected_whatever_its_score():
    d = decide(covered(Scores(0.99, 0.99, "2"), 0.50), covered(Scores(0.60, 0.7, "1"), 0.60), COVER)
    assert not d.promote and d.decision == "rejected"
    assert "coverage at the target precision drops" in d.reason and "0.6000 -> 0.5000" in d.reason
    assert "whatever the score" in d.reason and "beats" not in d.reason  # the score check itself passed
    assert d.coverage["checked"] and d.coverage["passed"] is False
    assert d.coverage["drop"] == pytest.approx(0.1) and d.coverage["max_drop"] == 0.02
    assert d.coverage["candidate"]["coverage"] == 0.5 and d.coverage["champion"]["coverage"] == 0.6


def test_coverage_drop_within_the_allowance_and_a_coverage_gain_promote():
    for cand_cov in (0.59, 0.90):
        d = decide(covered(Scores(0.90, 0.9, "2"), cand_cov), covered(Scores(0.80, 0.8, "1"), 0.60), COVER)
        assert d.promote, d.reason
        assert d.coverage["passed"] is True and "within the allowed 0.0200" in d.reason


@pytest.mark.parametrize("champ_cov,cand_cov,passed", [
    (0.50, 0.48, True),          # the allowed drop passes: 0.50 - 0.48 = 0.020000000000000018 in floats
    (0.30, 0.28, True),          # 0.019999999999999962
    (0.50, 0.4799, False),       # just over it
])
def test_the_coverage_boundary(champ_cov, cand_cov, passed):
    d = decide(covered(Scores(0.90, 0.9, "2"), cand_cov), covered(Scores(0.80, 0.8, "1"), champ_cov), COVER)
    assert d.coverage["passed"] is passed and d.promote is passed


def test_a_score_loser_gaining_coverage_is_still_rejected_for_its_score():
    d = decide(covered(Scores(0.70, 0.9, "2"), 0.95), covered(Scores(0.80, 0.8, "1"), 0.10), COVER)
    assert not d.promote and "does not beat" in d.reason and "coverage at the target" not in d.reason


def test_a_champion_without_a_stored_threshold_skips_the_guardrail_and_says_why():
    d = decide(covered(Scores(0.90, 0.9, "2"), 0.0), Scores(0.80, 0.8, "1"), COVER)
    assert d.promote
    assert "coverage guardrail skipped: the champion v1 stores no auto-categorisation threshold" in d.reason
    assert d.coverage["checked"] is False and d.coverage["passed"] is None and d.coverage["drop"] is None
    rejected = decide(covered(Scores(0.70, 0.9, "2"), 0.0), Scores(0.80, 0.8, "1"), COVER)
    assert not rejected.promote and "guardrail skipped" in rejected.reason
    no_cand = decide(Scores(0.90, 0.9, "2"), covered(Scores(0.80, 0.8, "1"), 0.9), COVER)
    assert no_cand.promote and "the challenger v2 stores no auto-categorisation threshold" in no_cand.reason


def test_first_model_records_its_coverage_without_a_comparison():
    d = decide(covered(Scores(0.90, 0.9, "1"), 0.4, 0.99, 0.5), None, COVER)
    assert d.promote and d.coverage["checked"] is False and d.coverage["champion"] is None
    assert d.coverage["candidate"] == {"coverage": 0.4, "auto_precision": 0.99, "value_coverage": 0.5}
    assert d.to_dict()["coverage"]["candidate"]["coverage"] == 0.4
