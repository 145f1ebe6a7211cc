"""Registry state as JSON: the champion and, for every version, its decision, scores and reason.

CLI: ``python -m promotion.status`` (what ``make status`` runs).
"""

from __future__ import annotations

import json
import sys

from common.params import load_params
from common.state import State
from promotion.registry import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    alias_version,
    mlflow_client,
)


def registry_status(state: State, model_name: str) -> dict:
    """The registered model's aliases and versions.

    Returns:
        ``{"model": name, "champion": {"version", "business_weighted_score"} or None,
        "aliases": {alias: version}, "versions": [{"version", "decision", "candidate_score",
        "champion_score", "delta", "reason", "data_rev", "airflow_run_id"}]}``.
    """
    client = mlflow_client(state)
    aliases = {a: alias_version(client, model_name, a)
               for a in (ALIAS_CHAMPION, ALIAS_CHALLENGER, ALIAS_PREVIOUS)}
    versions = []
    for v in sorted(client.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version)):
        t = v.tags
        versions.append({
            "version": str(v.version),
            "decision": t.get("decision", "pending"),
            "candidate_score": _num(t.get("candidate_score")),
            "champion_score": _num(t.get("champion_score")),
            "champion_version": t.get("champion_version"),
            "delta": _num(t.get("delta")),
            "reason": t.get("reason"),
            "data_rev": t.get("data_rev"),
            "airflow_run_id": t.get("airflow_run_id"),
        })
    champion = None
    if aliases[ALIAS_CHAMPION] is not None:
        row = next(v for v in versions if v["version"] == str(aliases[ALIAS_CHAMPION]))
        champion = {"version": row["version"], "business_weighted_score": row["candidate_score"]}
    return {"model": model_name, "tracking_uri": state.tracking_uri, "champion": champion,
            "aliases": aliases, "versions": versions}


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


if __name__ == "__main__":
    print(json.dumps(registry_status(State.from_env(), load_params().registry.model_name), indent=2))
    sys.exit(0)
