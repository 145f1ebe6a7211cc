"""The promotion gate: a pure function deciding whether a challenger replaces the champion.

Modelled on TFX Evaluator's "blessing":

* **value threshold**: absolute floors of the business-weighted score and of leaf accuracy,
  which every promoted model passes, the first one included;
* **change threshold**: the challenger must beat the champion's score by the *required
  improvement* ``max(min_improvement, min_relative_improvement * champion_score)``; in
  ``interval`` mode the lower bound of a paired bootstrap confidence interval of the delta must
  lie above it, in ``point`` mode the delta itself must reach it (a tie never promotes);
* **slices**: none of the ``slice_top_n`` categories carrying the most business value may lose
  more than ``max_slice_recall_drop`` of leaf recall; every failing slice is reported;
* **coverage guardrail**: the challenger's golden *coverage* (share of listings it
  auto-categorises at its own stored threshold, ``training.calibration``) may be at most
  ``max_coverage_drop`` (absolute) below the champion's, whatever its score; a champion that
  stores no threshold (registered before calibration) has no coverage, and the guardrail is
  skipped with the reason saying so;
* **first run**: with no champion, only the value thresholds apply, and the reason says so.

Moving an alias is a separate, tiny step (:mod:`promotion.promote`). Nothing here touches MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from common.params import GateParams
from common.results import GateDecision
from common.scoring import category_recall, top_value_categories


@dataclass(frozen=True)
class PerListing:
    """One model's per-listing results on the golden set, in golden order.

    Attributes:
        listing_ids: N listing ids (the pairing key of the bootstrap).
        true_paths: N true category paths.
        predicted_paths: N predicted category paths.
        values: float64 ``(N,)``, business value ``v(y_i)`` of the true category.
        credits: float64 ``(N,)``, ``credit(yhat_i, y_i)`` in [0, 1].
    """

    listing_ids: tuple[str, ...]
    true_paths: tuple[str, ...]
    predicted_paths: tuple[str, ...]
    values: np.ndarray = field(repr=False, compare=False)
    credits: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Scores:
    """A model version's scores on the golden test set.

    Attributes:
        business_weighted_score: in [0, 1] (see common.scoring).
        accuracy: leaf accuracy in [0, 1].
        version: the registry version the scores belong to, if registered.
        listings: per-listing results; required by the interval mode and by slice checks.
        coverage: share of the golden listings auto-categorised at the version's own stored
            threshold, in [0, 1]; None when the version stores no threshold.
        auto_precision: leaf accuracy of those listings (None when none or no threshold).
        value_coverage: their share of the golden set's business value (None: no threshold).
    """

    business_weighted_score: float
    accuracy: float
    version: str | None = None
    listings: PerListing | None = field(default=None, repr=False, compare=False)
    coverage: float | None = None
    auto_precision: float | None = None
    value_coverage: float | None = None


@dataclass(frozen=True)
class SliceResult:
    """Leaf recall of one top-value category for both models (``drop = champion - candidate``)."""

    category: str
    value: float
    n: int
    recall_candidate: float
    recall_champion: float
    drop: float
    passed: bool


class Decision(GateDecision):
    """The gate's verdict and the figures behind it: :class:`common.results.GateDecision`, whose
    :meth:`to_dict` rounds the figures."""

    def to_dict(self) -> dict:
        """The decision as JSON types, figures rounded to :data:`XCOM_DECIMALS` decimals (what
        the DAG's XCom, the task log and the tags show)."""
        return _rounded(self.model_dump(mode="json"))


XCOM_DECIMALS = 6
"""Decimals kept in a decision's figures: far below any score difference the gate can resolve
(one golden listing of 749 is 0.0013), and no float noise such as 0.016100000000000003."""


def _rounded(value):
    if isinstance(value, float):
        return value if math.isnan(value) else round(value, XCOM_DECIMALS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def paired_bootstrap_delta(
    values: np.ndarray,
    credits_candidate: np.ndarray,
    credits_champion: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of the difference of two business-weighted scores.

    The golden listings are resampled with replacement (the *same* resample for both models:
    a paired bootstrap, so the listings' shared difficulty cancels out); each resample gives
    ``sum_I v_i (c_i - d_i) / sum_I v_i``, and the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of those deltas: the percentile interval of Efron &
    Tibshirani, *An Introduction to the Bootstrap* (1993), ch. 13. Seeded, so deterministic.

    Args:
        values: float ``(N,)``, business value of each listing's true category (>= 0).
        credits_candidate: float ``(N,)``, the candidate's credit per listing.
        credits_champion: float ``(N,)``, the champion's credit per listing, same listings.
        n_resamples: bootstrap resamples B.
        confidence: two-sided level in (0, 1).
        seed: seed of NumPy's PCG64 generator.

    Returns:
        ``(low, high)``, floats in [-1, 1].

    Raises:
        ValueError: on empty or misaligned arrays, or when every value is 0.
    """
    v = np.asarray(values, dtype=np.float64)
    d = np.asarray(credits_candidate, dtype=np.float64) - np.asarray(credits_champion, dtype=np.float64)
    if v.ndim != 1 or d.shape != v.shape or len(v) == 0:
        raise ValueError(f"values {v.shape} and credit differences {d.shape} must be equal, non-empty 1-D")
    if v.sum() <= 0:
        raise ValueError("the bootstrap needs at least one listing of positive value")
    rng = np.random.default_rng(seed)
    n = len(v)
    vd = v * d
    deltas = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bounds the (chunk, N) index matrix to ~16 MB
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        den = v[idx].sum(axis=1)
        # a resample of only zero-value listings has no score: count it as no difference
        deltas[start:stop] = np.divide(vd[idx].sum(axis=1), den, out=np.zeros(stop - start), where=den > 0)
    alpha = 1.0 - confidence
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def slice_results(candidate: PerListing, champion: PerListing, top_n: int,
                  max_drop: float) -> list[SliceResult]:
    """Leaf recall of both models on the ``top_n`` categories of most business value.

    Args:
        candidate: the candidate's per-listing results.
        champion: the champion's, on the same listings in the same order.
        top_n: how many categories (see :func:`common.scoring.top_value_categories`).
        max_drop: the largest allowed ``recall_champion - recall_candidate``.

    Returns:
        One :class:`SliceResult` per category, most valuable first.
    """
    results = []
    for category in top_value_categories(candidate.true_paths, candidate.values, top_n):
        mask = [t == category for t in candidate.true_paths]
        r_cand = category_recall(candidate.true_paths, candidate.predicted_paths, category)
        r_champ = category_recall(champion.true_paths, champion.predicted_paths, category)
        drop = r_champ - r_cand
        results.append(SliceResult(category, float(candidate.values[mask].sum()), int(sum(mask)),
                                   r_cand, r_champ, drop, drop <= max_drop + 1e-12))
    return results


def required_improvement(champion_score: float, thresholds: GateParams) -> float:
    """``max(min_improvement, min_relative_improvement * champion_score)``."""
    return max(thresholds.min_improvement, thresholds.min_relative_improvement * champion_score)


def _check_pairing(candidate: PerListing, champion: PerListing) -> None:
    if candidate.listing_ids != champion.listing_ids or candidate.true_paths != champion.true_paths:
        raise ValueError("candidate and champion were not scored on the same golden listings in the same order")


def _figures(s: Scores) -> dict:
    return {"coverage": s.coverage, "auto_precision": s.auto_precision, "value_coverage": s.value_coverage}


def coverage_check(candidate: Scores, champion: Scores | None, max_drop: float) -> dict:
    """The coverage guardrail: ``champion.coverage - candidate.coverage <= max_drop``.

    Skipped (``checked`` False) on a first run, and when either side stores no threshold
    (``coverage`` None: a version registered before calibration). The boundary passes.

    Returns:
        :attr:`Decision.coverage`.
    """
    out = {"candidate": _figures(candidate), "champion": _figures(champion) if champion else None,
           "drop": None, "max_drop": max_drop, "checked": False, "passed": None}
    if champion is None:
        out["note"] = "first model: no champion coverage to compare"
    elif champion.coverage is None:
        out["note"] = (f"coverage guardrail skipped: the champion v{champion.version} stores no "
                       "auto-categorisation threshold (registered before calibration)")
    elif candidate.coverage is None:
        out["note"] = (f"coverage guardrail skipped: the challenger v{candidate.version} stores no "
                       "auto-categorisation threshold")
    else:
        drop = champion.coverage - candidate.coverage
        passed = drop <= max_drop + 1e-12
        out.update(drop=drop, checked=True, passed=passed)
        out["note"] = (f"golden coverage {champion.coverage:.4f} -> {candidate.coverage:.4f} "
                       f"(drop {drop:+.4f}; " + ("within" if passed else "more than")
                       + f" the allowed {max_drop:.4f})")
    return out


def decide(candidate: Scores, champion: Scores | None, thresholds: GateParams) -> Decision:
    """Decides on a challenger (module docstring for the rules).

    Args:
        candidate: the challenger's scores.
        champion: the current champion's scores on the same golden set, or None (first run).
        thresholds: ``gate`` in params.yaml.

    Returns:
        The decision; ``decision`` is ``"promoted"`` or ``"rejected"``. Rejections list every
        failed check in ``reason``; failing slices are all named.

    Raises:
        ValueError: when the interval mode or the slice check needs per-listing results that
            one side lacks, or when the two sides were scored on different listings.
    """
    t = thresholds
    score = candidate.business_weighted_score
    failures: list[str] = []
    if score < t.floor_score:
        failures.append(f"business-weighted score {score:.4f} is below the floor {t.floor_score:.4f}")
    if candidate.accuracy < t.floor_accuracy:
        failures.append(f"accuracy {candidate.accuracy:.4f} is below the floor {t.floor_accuracy:.4f}")

    if champion is None:
        ok = not failures
        reason = ("first model: no champion yet, so only the value thresholds apply; "
                  + (f"passes the floors (score {score:.4f}, accuracy {candidate.accuracy:.4f})" if ok
                     else "; ".join(failures)))
        return Decision(promote=ok, decision="promoted" if ok else "rejected", reason=reason,
                        candidate_score=score, champion_score=None, delta=None, mode=t.mode,
                        first_run=True, coverage=coverage_check(candidate, None, t.max_coverage_drop))

    champ = champion.business_weighted_score
    delta = score - champ
    required = required_improvement(champ, t)
    needs_listings = t.mode == "interval" or t.slice_top_n > 0
    if needs_listings and (candidate.listings is None or champion.listings is None):
        raise ValueError(f"gate mode {t.mode!r} with slice_top_n={t.slice_top_n} needs per-listing "
                         "results of both models")
    if needs_listings:
        _check_pairing(candidate.listings, champion.listings)

    interval = None
    if delta <= 0:
        failures.append(f"score {score:.4f} does not beat the champion's {champ:.4f} (delta {delta:+.4f})")
    elif delta < required:
        failures.append(f"delta {delta:+.4f} is below the required improvement {required:.4f}")
    if t.mode == "interval":
        c, h = candidate.listings, champion.listings
        interval = paired_bootstrap_delta(c.values, c.credits, h.credits, t.n_bootstrap, t.confidence,
                                          t.bootstrap_seed)
        if not interval[0] > required:
            failures.append(f"the lower bound {interval[0]:+.4f} of the {t.confidence:.0%} bootstrap interval "
                            f"[{interval[0]:+.4f}, {interval[1]:+.4f}] of the delta is not above the "
                            f"required improvement {required:.4f}")

    slices: list[SliceResult] = []
    if t.slice_top_n > 0:
        slices = slice_results(candidate.listings, champion.listings, t.slice_top_n, t.max_slice_recall_drop)
        for s in slices:
            if not s.passed:
                failures.append(f"slice {s.category!r} loses {s.drop:.1%} leaf recall "
                                f"({s.recall_champion:.3f} -> {s.recall_candidate:.3f}, n={s.n}; "
                                f"max {t.max_slice_recall_drop:.1%})")

    coverage = coverage_check(candidate, champion, t.max_coverage_drop)
    if coverage["passed"] is False:
        failures.append(f"coverage at the target precision drops: {coverage['note']}, whatever the score")

    ok = not failures
    if ok:
        evidence = (f": the {t.confidence:.0%} interval [{interval[0]:+.4f}, {interval[1]:+.4f}] of "
                    f"the delta lies above the required {required:.4f}" if interval
                    else f" (required: {required:.4f})")
        reason = (f"score {score:.4f} beats the champion's {champ:.4f} by {delta:+.4f}{evidence}"
                  + (f"; no top-{len(slices)} slice loses more than {t.max_slice_recall_drop:.1%} recall"
                     if slices else ""))
    else:
        reason = "; ".join(failures)
    if ok or not coverage["checked"]:  # a failed check is already among the failures
        reason += f"; {coverage['note']}"
    return Decision(promote=ok, decision="promoted" if ok else "rejected", reason=reason,
                    candidate_score=score, champion_score=champ, delta=delta,
                    required_improvement=required, interval=interval,
                    confidence=t.confidence if interval else None, mode=t.mode,
                    slices=tuple(_slice_dict(s) for s in slices),
                    failing_slices=tuple(s.category for s in slices if not s.passed), coverage=coverage)


def _slice_dict(s: SliceResult) -> dict:
    d = asdict(s)
    for k in ("recall_candidate", "recall_champion", "drop"):
        if isinstance(d[k], float) and math.isnan(d[k]):
            d[k] = None
    return d


def per_listing(listing_ids: Sequence[str], true_paths: Sequence[str], predicted_paths: Sequence[str],
                values: np.ndarray, credits: np.ndarray) -> PerListing:
    """Builds a :class:`PerListing` (tuples for the paths, float64 arrays for the terms)."""
    return PerListing(tuple(map(str, listing_ids)), tuple(true_paths), tuple(predicted_paths),
                      np.asarray(values, dtype=np.float64), np.asarray(credits, dtype=np.float64))
