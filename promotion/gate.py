"""The promotion gate: a pure function deciding whether a challenger replaces the champion.

Modelled on TFX Evaluator's "blessing": a value threshold (absolute floors every promoted model
passes), a change threshold (the challenger must beat the champion's business-weighted score by
at least ``gate.min_improvement``), a first-run rule (no champion: floors only), and a recorded
reason. Moving the alias is a separate step (:mod:`promotion.promote`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from common.params import GateParams


@dataclass(frozen=True)
class Scores:
    """A model version's scores on the golden test set.

    Attributes:
        business_weighted_score: in [0, 1] (see common.scoring).
        accuracy: leaf accuracy in [0, 1].
        version: the registry version the scores belong to, if registered.
    """

    business_weighted_score: float
    accuracy: float
    version: str | None = None


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and the figures behind it."""

    promote: bool
    decision: str
    reason: str
    candidate_score: float
    champion_score: float | None
    delta: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate: Scores, champion: Scores | None, thresholds: GateParams) -> Decision:
    """Decides on a challenger.

    Rules, in order: (1) the challenger must pass both absolute floors; (2) with no champion,
    passing the floors promotes it; (3) otherwise its business-weighted score must exceed the
    champion's, by at least ``thresholds.min_improvement`` (a tie never promotes).

    Args:
        candidate: the challenger's scores.
        champion: the current champion's scores on the same golden set, or None.
        thresholds: floors and minimum improvement (``gate`` in params.yaml).

    Returns:
        The decision; ``decision`` is ``"promoted"`` or ``"rejected"``.
    """
    score = candidate.business_weighted_score
    champ = champion.business_weighted_score if champion else None
    delta = None if champ is None else score - champ

    def verdict(promote: bool, reason: str) -> Decision:
        return Decision(promote, "promoted" if promote else "rejected", reason, score, champ, delta)

    if score < thresholds.floor_score:
        return verdict(False, f"business-weighted score {score:.4f} is below the floor {thresholds.floor_score:.4f}")
    if candidate.accuracy < thresholds.floor_accuracy:
        return verdict(False, f"accuracy {candidate.accuracy:.4f} is below the floor {thresholds.floor_accuracy:.4f}")
    if champion is None:
        return verdict(True, f"first model: no champion yet; passes the floors (score {score:.4f}, "
                             f"accuracy {candidate.accuracy:.4f})")
    if delta <= 0 or delta < thresholds.min_improvement:
        return verdict(False, f"score {score:.4f} does not beat the champion's {champ:.4f} by at least "
                              f"{thresholds.min_improvement:.4f} (delta {delta:+.4f})")
    return verdict(True, f"score {score:.4f} beats the champion's {champ:.4f} by {delta:+.4f} "
                         f"(>= {thresholds.min_improvement:.4f})")
