"""Gate and promote: score the challenger and the champion on the same golden set, decide, tag,
and move the ``champion`` alias only when the gate says so.

CLI::

    python -m promotion.promote gate --version 3      # decide and tag, moves nothing
    python -m promotion.promote promote --version 3   # move aliases per the recorded decision
"""

from __future__ import annotations

import argparse
import json
import sys

from common.params import Params, load_params
from common.state import State
from promotion.gate import Scores, decide
from promotion.registry import (
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    alias_version,
    golden_frame,
    mlflow_client,
    score_version,
)


def gate_challenger(state: State, params: Params, version: str, golden_rev: str) -> dict:
    """Re-scores champion and challenger on the golden set and records the gate's decision.

    Every version gets the tags ``decision``, ``candidate_score``, ``champion_score``,
    ``champion_version``, ``delta`` and ``reason``.

    Args:
        state: the state folder.
        params: the effective params (``gate``, ``score``, ``registry``).
        version: the challenger's model version.
        golden_rev: DVC hash of the golden set both are scored on.

    Returns:
        The decision as a dict (promotion.gate.Decision fields) plus ``version``,
        ``champion_version`` and both accuracies.

    Raises:
        RuntimeError: when the champion (or challenger) cannot be loaded or scored; no tag is
            written and no alias moves.
    """
    client = mlflow_client(state)
    name = params.registry.model_name
    golden = golden_frame(state)
    cand = score_version(state, params, version, golden, golden_rev)
    champion_version = alias_version(client, name, ALIAS_CHAMPION)
    champ = None
    if champion_version is not None and str(champion_version) != str(version):
        champ = score_version(state, params, champion_version, golden, golden_rev)
    if champion_version is not None and str(champion_version) == str(version):
        result = {"promote": False, "decision": "unchanged", "version": str(version),
                  "reason": "this version is already the champion", "champion_version": champion_version,
                  "candidate_score": cand["business_weighted_score"], "champion_score": cand["business_weighted_score"],
                  "delta": 0.0}
        print(f"[gate] {result['reason']}")
        return result
    decision = decide(
        Scores(cand["business_weighted_score"], cand["accuracy"], str(version)),
        Scores(champ["business_weighted_score"], champ["accuracy"], str(champion_version)) if champ else None,
        params.gate,
    )
    result = {**decision.to_dict(), "version": str(version), "champion_version": champion_version,
              "candidate_accuracy": cand["accuracy"], "champion_accuracy": champ["accuracy"] if champ else None}
    tags = {
        "decision": decision.decision,
        "reason": decision.reason,
        "candidate_score": f"{decision.candidate_score:.6f}",
        "champion_score": "none" if decision.champion_score is None else f"{decision.champion_score:.6f}",
        "champion_version": str(champion_version) if champion_version else "none",
        "delta": "none" if decision.delta is None else f"{decision.delta:+.6f}",
        "min_improvement": str(params.gate.min_improvement),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    print(f"[gate] challenger v{version} score={decision.candidate_score:.4f} champion "
          f"v{champion_version} score={tags['champion_score']} delta={tags['delta']} -> "
          f"{decision.decision}: {decision.reason}")
    return result


def promote(state: State, params: Params, decision: dict) -> dict:
    """Moves ``champion`` to the challenger when the decision says promote (and the previous
    champion to ``previous-champion``); otherwise leaves every alias where it is.

    Args:
        decision: :func:`gate_challenger`'s result.

    Returns:
        ``{"champion": version after the step, "moved": bool, "decision": str}``.
    """
    client = mlflow_client(state)
    name = params.registry.model_name
    version = decision["version"]
    current = alias_version(client, name, ALIAS_CHAMPION)
    if not decision.get("promote"):
        print(f"[promote] v{version} {decision['decision']}: champion stays v{current}")
        return {"champion": current, "moved": False, "decision": decision["decision"]}
    if current is not None and str(current) != str(version):
        client.set_registered_model_alias(name, ALIAS_PREVIOUS, current)
    client.set_registered_model_alias(name, ALIAS_CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_from", str(current))
    print(f"[promote] champion -> v{version} (was v{current})")
    return {"champion": str(version), "moved": True, "decision": decision["decision"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promotion.promote", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["gate", "promote"])
    parser.add_argument("--version", required=True)
    parser.add_argument("--params", default=None)
    args = parser.parse_args(argv)
    state = State.from_env()
    params = load_params(args.params or state.workspace / "params.yaml")
    golden_rev = _golden_rev(state)
    result = gate_challenger(state, params, args.version, golden_rev)
    if args.command == "promote":
        result = promote(state, params, result)
    print(json.dumps(result))
    return 0


def _golden_rev(state: State) -> str:
    import yaml

    return yaml.safe_load((state.workspace / "data" / "golden.dvc").read_text())["outs"][0]["md5"]


if __name__ == "__main__":
    sys.exit(main())
