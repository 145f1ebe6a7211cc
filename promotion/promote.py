"""Gate and promote: score the challenger and the champion on the same golden set, decide, record
the review in MLflow, and move the ``champion`` alias only when the gate (and, when required, a
human reviewer) says so.

Steps, each small and separately callable:

1. :func:`gate_challenger` re-scores both models (:func:`promotion.registry.score_version`),
   calls the pure :func:`promotion.gate.decide`, runs the serving check of the challenger in a
   fresh process, and records tags, the Markdown description and comparison artifacts. It moves
   no alias but ``challenger``.
2. :func:`promote` moves ``previous-champion`` then ``champion`` per the recorded decision.
3. :func:`record_review` records a reviewer's approval or rejection (DAG param ``require_approval``).

Each returns its typed result (:class:`common.results.GateResult`, ``PromoteResult``,
``ReviewResult``); :func:`promote` and :func:`record_review` read the gate's.

CLI (prints the gate's or the promote step's result as JSON)::

    python -m promotion.promote gate --version 3      # decide and record, moves nothing
    python -m promotion.promote promote --version 3   # gate, then move aliases per the decision
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from common.cli import configure_logging
from common.params import Params, load_params
from common.results import GateResult, PromoteResult, ReviewResult
from common.state import State
from promotion.gate import Decision, Scores, decide
from promotion.registry import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DESCRIPTION_CHARS,
    TAG_VALUE_CHARS,
    alias_version,
    golden_frame,
    golden_probabilities,
    mlflow_client,
    score_version,
    set_version_tags,
)

SERVING_CHECK_ROWS = 5
"""Golden listings the serving check predicts."""

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """The registry is not in the state the recorded decision was made in."""


def _decision_tags(result: GateResult) -> dict[str, str]:
    """The tags a reviewer filters versions by (:data:`promotion.registry.VERSION_TAGS`); the rest
    of the decision (accuracies, slices, serving check, mode, floors) is in the description and
    the run's ``comparison/<golden_rev>/decision.json``."""
    def num(x, spec=".6f"):
        return None if x is None else format(x, spec)

    return {
        "decision": result.decision,
        "reason": result.reason[:TAG_VALUE_CHARS],
        "candidate_score": num(result.candidate_score),
        "champion_score": num(result.champion_score),
        "champion_version": str(result.champion_version) if result.champion_version else None,
        "delta": num(result.delta, "+.6f"),
    }


def leaves_without_golden(state: State, golden) -> tuple[str, ...]:
    """The leaf categories of the listings store that have no golden listing: the gate cannot
    see how a model does on them (named in the gate report).

    Args:
        state: the state folder (its listings store).
        golden: :func:`promotion.registry.golden_frame`.

    Returns:
        Sorted category paths.
    """
    from common.store import read_store

    stored = set(read_store(state.listings_store, columns=["category_path"])["category_path"].dropna())
    return tuple(sorted(stored - set(golden["category_path"])))


@dataclass(frozen=True)
class _Scored:
    """Both sides on the golden set (:func:`promotion.registry.score_version`'s figures and
    per-listing results); the champion's are None on a first run or when it is the challenger."""

    champion_version: str | None
    cand: dict
    cand_listings: Any
    champ: dict | None = None
    champ_listings: Any = None

    @property
    def unchanged(self) -> bool:
        """The challenger already is the champion (a retried run, or a week with nothing new)."""
        return self.champ is None and self.champion_version is not None


def _score(state: State, params: Params, client, version: str, golden, golden_rev: str) -> _Scored:
    """Scoring: the challenger, and the champion unless there is none or it is the challenger."""
    champion_version = alias_version(client, params.registry.model_name, ALIAS_CHAMPION)
    cand, cand_listings = score_version(state, params, version, golden, golden_rev)
    if champion_version is None or str(champion_version) == str(version):
        return _Scored(champion_version, cand, cand_listings)
    try:
        champ, champ_listings = score_version(state, params, champion_version, golden, golden_rev)
    except RuntimeError as exc:
        raise RuntimeError(f"the champion (version {champion_version}) cannot be re-scored on golden set "
                           f"{golden_rev}; nothing was decided and no alias moved: {exc}") from exc
    return _Scored(champion_version, cand, cand_listings, champ, champ_listings)


_COVERAGE = ("coverage", "auto_precision", "value_coverage")
"""Score fields of the coverage guardrail, each at the version's own stored threshold."""


def _decide(params: Params, version: str, scored: _Scored) -> Decision:
    """Decision: :func:`promotion.gate.decide` on both sides' scores (the pure gate)."""
    cand, champ = scored.cand, scored.champ
    return decide(
        Scores(cand["business_weighted_score"], cand["accuracy"], str(version), scored.cand_listings,
               *(cand[k] for k in _COVERAGE)),
        Scores(champ["business_weighted_score"], champ["accuracy"], str(scored.champion_version),
               scored.champ_listings, *(champ[k] for k in _COVERAGE)) if champ else None,
        params.gate,
    )


def _unchanged(params: Params, version: str, golden_rev: str, scored: _Scored) -> GateResult:
    """The result for a challenger that already is the champion: scored, not compared; its
    figures rounded by :meth:`promotion.gate.Decision.to_dict` like every decision's."""
    score = scored.cand["business_weighted_score"]
    verdict = Decision(promote=False, decision="unchanged", reason="this version is already the champion",
                       candidate_score=score, champion_score=score, delta=0.0, mode=params.gate.mode).to_dict()
    return GateResult(**verdict, version=str(version), champion_version=scored.champion_version,
                      candidate_accuracy=scored.cand["accuracy"], champion_accuracy=scored.cand["accuracy"],
                      golden_rev=golden_rev, n_golden=scored.cand["n"])


def _serving_check(state: State, client, name: str, version: str, golden, verdict: dict) -> tuple[dict, dict]:
    """Alias and serving check of a challenger the gate would promote: ``challenger`` moves to
    it, and it must answer a few golden listings in a fresh process, else it is rejected.

    Returns:
        ``(verdict, serving_check)``: the verdict (turned into a rejection when the check
        failed) and ``{"ok", "detail", "seconds"}``.
    """
    from promotion.serving_check import check_serving
    from training.serving import model_input

    if alias_version(client, name, ALIAS_CHALLENGER) != str(version):
        client.set_registered_model_alias(name, ALIAS_CHALLENGER, version)
    rows = model_input(golden.head(SERVING_CHECK_ROWS)).to_dict("records")
    serving = check_serving(state.tracking_uri, f"models:/{name}@{ALIAS_CHALLENGER}", rows)
    serving_check = {k: serving[k] for k in ("ok", "detail", "seconds")}
    if not serving["ok"]:
        verdict = {**verdict, "promote": False, "decision": "rejected",
                   "reason": f"serving check failed: {serving['detail']} (the gate itself passed: "
                             f"{verdict['reason']})"}
    return verdict, serving_check


def _golden_label_issues(client, name: str, version: str, golden, golden_rev: str,
                         run_id: str | None) -> dict | None:
    """Label issues: :func:`common.label_issues.golden_suspects` by ``version`` (the champion;
    the challenger on a first run), on the challenger's run. A failure is reported, never
    decides the gate."""
    from common.label_issues import golden_suspects

    if not run_id:
        return None
    try:
        return golden_suspects(client, str(version), golden, golden_rev, run_id,
                               lambda: golden_probabilities(client, name, str(version), golden))
    except Exception as exc:  # label issues are advice to a person: they never block a promotion
        log.warning("[gate] golden label issues not computed: %s", exc)
        return {"error": str(exc)[:500], "scored_by": str(version)}


def _record(client, params: Params, name: str, mv, result: GateResult, scored: _Scored) -> None:
    """Report: the decision tags, the Markdown description and, on the challenger's run, the
    comparison artifacts (``decision.json`` holding the whole decision)."""
    from promotion import report
    from promotion.lineage import load_batches

    per_class = report.per_class_delta(scored.cand_listings, scored.champ_listings)
    lineage = {**(client.get_run(mv.run_id).data.tags if mv.run_id else {}), **mv.tags}
    markdown = report.markdown_report(result.to_dict(), per_class, lineage, max(5, params.gate.slice_top_n),
                                      load_batches(mv.run_id) if mv.run_id else [])
    set_version_tags(client, name, result.version, _decision_tags(result))  # no empty value written
    client.update_model_version(name, result.version, description=markdown)
    if mv.run_id:
        report.log_comparison(client, mv.run_id, result.golden_rev, result.to_dict(), per_class,
                              scored.cand_listings, scored.champ_listings, markdown)


def gate_challenger(state: State, params: Params, version: str, golden_rev: str) -> GateResult:
    """Re-scores champion and challenger on the golden set, decides, and records the review.

    Steps: scoring (:func:`_score`), decision (:func:`_decide`, the pure gate), alias and serving
    check (:func:`_serving_check`, only for a challenger the gate would promote), golden label
    issues (:func:`_golden_label_issues`), report (:func:`_record`).

    Records on the version: the tags a reviewer filters by (``decision``, ``reason``, both
    scores, ``delta``, ``champion_version``; the interval and the golden revision are in the
    description and the run's comparison artifacts; lineage tags come
    from registration), the Markdown description (:func:`promotion.report.markdown_report`), and
    on its run the comparison artifacts, ``decision.json`` holding the whole decision.
    A challenger the gate would promote must also pass the serving check
    (:mod:`promotion.serving_check`), else it is rejected.

    A challenger that already is the champion (a retried run, or a week with nothing new) is
    ``"unchanged"``: scored, not compared, and nothing is recorded.

    Args:
        state: the state folder.
        params: the effective params (``gate``, ``score``, ``registry``).
        version: the challenger's model version.
        golden_rev: DVC hash of the golden set both are scored on (the version_data step's
            ``golden_rev``).

    Returns:
        The :class:`promotion.gate.Decision` fields plus the versions compared, both
        accuracies, ``golden_rev``, ``n_golden``, the serving check and the experiment id.

    Raises:
        RuntimeError: when the champion (or challenger) cannot be loaded or scored; no decision
            tag is written and no alias moves.
        mlflow.exceptions.MlflowException: when the tracking server cannot be reached (the task
            fails and Airflow retries it); no alias moves.
    """
    client = mlflow_client(state)
    name = params.registry.model_name
    golden = golden_frame(state)
    scored = _score(state, params, client, version, golden, golden_rev)
    if scored.unchanged:
        result = _unchanged(params, version, golden_rev, scored)
        log.info("[gate] %s", result.reason)
        return result
    decision = _decide(params, version, scored)
    verdict, serving_check = decision.to_dict(), None
    if decision.promote:
        verdict, serving_check = _serving_check(state, client, name, version, golden, verdict)
    # the decision is the first line of ours a reviewer reads in the task log
    log.info("[gate] %s v%s (champion v%s): %s | challenger score=%.4f champion score=%s delta=%s "
             "interval=%s", verdict["decision"], version, scored.champion_version, verdict["reason"],
             decision.candidate_score, verdict.get("champion_score"), verdict.get("delta"),
             list(verdict["interval"]) if verdict.get("interval") else None)
    mv = client.get_model_version(name, version)
    suspects = _golden_label_issues(client, name, scored.champion_version or str(version), golden,
                                    golden_rev, mv.run_id)
    result = GateResult(
        **verdict, version=str(version), champion_version=scored.champion_version,
        candidate_accuracy=scored.cand["accuracy"],
        champion_accuracy=scored.champ["accuracy"] if scored.champ else None,
        golden_rev=golden_rev, n_golden=scored.cand["n"], serving_check=serving_check,
        leaves_without_golden=leaves_without_golden(state, golden), golden_label_issues=suspects,
        experiment_id=client.get_run(mv.run_id).info.experiment_id if mv.run_id else None)
    _record(client, params, name, mv, result, scored)
    return result


def promote(state: State, params: Params, decision: GateResult) -> PromoteResult:
    """Moves ``champion`` to the challenger when the decision says promote (and the previous
    champion to ``previous-champion``); otherwise leaves every alias where it is.

    Args:
        state: the state folder.
        params: the effective params (``registry``).
        decision: :func:`gate_challenger`'s result.

    Returns:
        The champion after the step, whether it moved, and the decision acted on.

    Raises:
        PromotionError: when the champion moved since the gate decided (re-run the gate).
        mlflow.exceptions.MlflowException: when the tracking server cannot be reached; since
            ``champion`` is the last alias set, a failure leaves it where it was.
    """
    client = mlflow_client(state)
    name = params.registry.model_name
    version = decision.version
    current = alias_version(client, name, ALIAS_CHAMPION)
    if not decision.promote:
        log.info("[promote] v%s %s: champion stays v%s", version, decision.decision, current)
        return PromoteResult(champion=current, moved=False, decision=decision.decision)
    if decision.decision == "promoted" and str(current) != str(decision.champion_version):
        if str(current) == str(version):  # a retried task
            return PromoteResult(champion=current, moved=False, decision=decision.decision)
        raise PromotionError(f"the champion is v{current}, but the gate compared against "
                             f"v{decision.champion_version}: re-run the gate")
    if current is not None and str(current) != str(version):
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
        client.set_model_version_tag(name, current, "superseded_by", str(version))
    if current is not None:  # the first champion was promoted from nothing: no tag, never "None"
        client.set_model_version_tag(name, version, "promoted_from", str(current))
    client.set_registered_model_alias(name, ALIAS_CHAMPION, version)
    log.info("[promote] champion -> v%s (was v%s)", version, current)
    return PromoteResult(champion=str(version), moved=True, decision=decision.decision)


def record_review(state: State, params: Params, decision: GateResult, approval: dict | None,
                  required: bool) -> ReviewResult:
    """Records the human review of a promotion on the version (tags ``approval*``).

    A rejection also turns the version's ``decision`` tag into ``rejected`` with the reviewer
    in the reason; no alias is touched here (a rejected promotion never reached :func:`promote`).
    When a review was required, its outcome heads the version's Markdown description.

    Args:
        state: the state folder.
        params: the effective params (``registry``).
        decision: :func:`gate_challenger`'s result.
        approval: the reviewer's response as the DAG's ``approval`` task pushes it to XCom
            (``chosen_options``, ``responded_by_user``: ``{"id", "name"}`` or None), or None
            when no review ran.
        required: the DAG run's ``require_approval``.

    Returns:
        The version and the review's outcome: ``approved``, ``rejected``, ``not required``,
        ``not needed`` or ``missing`` (approval required, no response; recorded as a rejection).
    """
    client = mlflow_client(state)
    name = params.registry.model_name
    version = decision.version
    if not required:
        status = "not required"
    elif not decision.promote:
        status = "not needed"  # the gate already rejected it: nothing to approve
    elif not approval:
        status = "missing"
    else:
        status = "approved" if (approval.get("chosen_options") or [""])[0] == "Approve" else "rejected"
    user = (approval or {}).get("responded_by_user") or {}
    reviewer = user.get("name") or user.get("id") or "unknown"
    client.set_model_version_tag(name, version, "approval", status)
    if status in ("approved", "rejected"):
        client.set_model_version_tag(name, version, "approval_by", str(reviewer))
    if status in ("rejected", "missing"):
        why = (f"reviewer {reviewer} rejected the promotion" if status == "rejected"
               else "approval was required but no reviewer response was recorded")
        client.set_model_version_tag(name, version, "decision", "rejected")
        client.set_model_version_tag(name, version, "reason", f"{why} (gate: {decision.reason})"[:TAG_VALUE_CHARS])
    if status in ("approved", "rejected", "missing"):
        _describe_review(client, name, version, status, reviewer)
    log.info("[review] v%s: approval %s", version, status)
    return ReviewResult(version=str(version), approval=status)


REVIEW_HEADING = "## Human review"


def _describe_review(client, name: str, version: str, status: str, reviewer: str) -> None:
    """Puts the review on top of the version's Markdown description (the gate's report).

    The gate's report says what the gate decided; a reviewer reading the version in the MLflow UI
    must also see that a human overruled (or confirmed) it. A retried ``review`` replaces its
    own heading instead of stacking a second one.
    """
    headline = {
        "approved": f"{REVIEW_HEADING}: **APPROVED** by {reviewer}",
        "rejected": f"{REVIEW_HEADING}: **REJECTED** by {reviewer}; the champion alias did not move",
        "missing": f"{REVIEW_HEADING}: **NO RESPONSE** recorded; treated as rejected, the champion alias did not move",
    }[status]
    body = client.get_model_version(name, version).description or ""
    if body.startswith(REVIEW_HEADING):
        body = body.split("\n\n", 1)[1] if "\n\n" in body else ""
    client.update_model_version(name, version, description=f"{headline}\n\n{body}"[:DESCRIPTION_CHARS])


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI (module docstring); prints the result as JSON and returns 0."""
    parser = argparse.ArgumentParser(prog="python -m promotion.promote", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["gate", "promote"])
    parser.add_argument("--version", required=True)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    configure_logging()
    state = State.from_env()
    params = load_params(args.params or state.workspace / "params.yaml")
    golden_rev = _golden_rev(state)
    result = gate_challenger(state, params, args.version, golden_rev)
    if args.command == "promote":
        result = promote(state, params, result)
    print(json.dumps(result.to_dict()))
    return 0


def _golden_rev(state: State) -> str:
    from ingestion.dvcfiles import out_md5

    return out_md5(state.workspace / "data" / "golden.dvc")


if __name__ == "__main__":
    sys.exit(main())
