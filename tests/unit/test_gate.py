"""The promotion gate's decision rule, every branch."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.params import GateParams
from promotion.gate import Scores, decide

T = GateParams(min_improvement=0.01, floor_score=0.5, floor_accuracy=0.6)


def test_first_model_promoted_when_it_passes_the_floors():
    d = decide(Scores(0.7, 0.8), None, T)
    assert d.promote and d.decision == "promoted"
    assert "first model" in d.reason
    assert d.champion_score is None and d.delta is None


@pytest.mark.parametrize("score,acc,word", [(0.4, 0.9, "score"), (0.9, 0.5, "accuracy")])
def test_floors_reject_even_without_champion(score, acc, word):
    d = decide(Scores(score, acc), None, T)
    assert not d.promote and d.decision == "rejected"
    assert word in d.reason and "floor" in d.reason


def test_floor_applies_with_champion_too():
    d = decide(Scores(0.45, 0.9), Scores(0.3, 0.9), T)
    assert not d.promote and "floor" in d.reason


def test_promoted_when_improvement_reaches_threshold():
    d = decide(Scores(0.80, 0.9), Scores(0.78, 0.9), T)
    assert d.promote
    assert d.delta == pytest.approx(0.02)
    assert d.candidate_score == 0.80 and d.champion_score == 0.78


def test_rejected_when_improvement_below_threshold():
    d = decide(Scores(0.785, 0.9), Scores(0.78, 0.9), T)
    assert not d.promote and "does not beat" in d.reason


def test_tie_never_promotes_even_with_zero_threshold():
    d = decide(Scores(0.8, 0.9), Scores(0.8, 0.9), GateParams(min_improvement=0.0, floor_score=0, floor_accuracy=0))
    assert not d.promote


@given(
    cand=st.floats(0, 1), champ=st.floats(0, 1), acc=st.floats(0, 1),
    min_imp=st.floats(0, 1), floor_s=st.floats(0, 1), floor_a=st.floats(0, 1),
)
def test_a_candidate_below_the_champion_is_never_promoted(cand, champ, acc, min_imp, floor_s, floor_a):
    thresholds = GateParams(min_improvement=min_imp, floor_score=floor_s, floor_accuracy=floor_a)
    d = decide(Scores(cand, acc), Scores(champ, acc), thresholds)
    if cand <= champ:
        assert not d.promote
    if d.promote:
        assert cand - champ >= min_imp and cand >= floor_s and acc >= floor_a
