"""Two seasons side by side, week by week: golden score with a paired interval, and time per week.

Reads two state folders built by ``make season`` on the same catalog and weeks (e.g. one with
``train.replay_size: 1000``, one with ``0``, training on everything), and for each week in which
both registered a challenger evaluated on the same golden listings (same ids and true paths;
two states' golden revisions differ in bytes) pairs the two challengers' golden predictions (each
run's ``evaluation/predictions.csv``, what its evaluate stage scored)
listing by listing and prints:

* leaf accuracy and business-weighted score of A and B (``params.score`` of A's state);
* the business-score difference A - B and its paired bootstrap 95% interval
  (:func:`promotion.gate.paired_bootstrap_delta`, the gate's own interval: 2,000 resamples);
* each week's ``train_evaluate`` and whole-run seconds (the season table, ``season/season.csv``)
  and the listings each challenger trained on (``models/train_log.json``'s ``train_rows`` /
  ``replay_counts`` on its run, when logged).

The season-wide line pools every compared week's listings (one resample across weeks would
pair a listing with itself in another week; it is the mean of the weekly differences, with the
interval of the pooled paired bootstrap).

Usage::

    .venv/bin/python benchmarks/season_compare.py --a /work/seasons/replay --b /work/seasons/all
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per artifact read


def _week_runs(state_dir: Path) -> pd.DataFrame:
    """The season table of a state (``season/season.csv``), one row per week."""
    path = state_dir / "season" / "season.csv"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make season STATE={state_dir}` to the end first")
    return pd.read_csv(path, dtype={"version": "string", "golden_rev": "string"})


def _predictions(state_dir: Path, version: str) -> tuple[pd.DataFrame, dict]:
    """A version's evaluate predictions (listing_id, true_path, predicted_path) and its train log."""
    import mlflow

    from common.params import load_params
    from common.state import State
    from common.tracking import mlflow_client

    state = State(state_dir)
    name = load_params(state_dir / "params.yaml").registry.model_name
    client = mlflow_client(state)
    run_id = client.get_model_version(name, version).run_id
    frame = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/predictions.csv")),
                        dtype={"listing_id": str, "true_path": str, "predicted_path": str}, keep_default_na=False)
    try:
        train_log = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/training/train_log.json"))
    except Exception:  # an older run without the log artifact: the row says "-"
        train_log = {}
    return frame, train_log


def _trained(train_log: dict) -> str:
    """``"<training listings> (<replay or full>)"`` of a train log (a full plan counts every
    training listing as new), ``"-"`` when the log says neither."""
    counts = (train_log.get("replay_counts") or {}).get("train")
    if counts:
        return f"{counts.get('new', 0) + counts.get('replayed', 0)} ({train_log.get('replay') or '-'})"
    epochs = train_log.get("epochs") or [{}]
    rows = sum(epochs[0].get("rows_per_rank") or [])
    return f"{rows} (full)" if rows else "-"


def compare(a_dir: Path, b_dir: Path) -> pd.DataFrame:
    """One row per week of the two seasons, compared where both trained (see the module doc)."""
    from common.params import load_params
    from common.scoring import listing_credits
    from promotion.gate import paired_bootstrap_delta

    score = load_params(a_dir / "params.yaml").score
    a_weeks, b_weeks = _week_runs(a_dir), _week_runs(b_dir)
    rows, pooled = [], []
    for (_, a), (_, b) in zip(a_weeks.iterrows(), b_weeks.iterrows(), strict=False):
        row = {"week": int(a["week"]), "a_seconds_train_evaluate": a.get("seconds_train_evaluate"),
               "b_seconds_train_evaluate": b.get("seconds_train_evaluate"),
               "a_seconds_run": a.get("seconds_run"), "b_seconds_run": b.get("seconds_run")}
        if pd.isna(a["version"]) or pd.isna(b["version"]):
            rows.append({**row, "note": "not compared (a season did not train this week)"})
            continue
        pa, log_a = _predictions(a_dir, str(a["version"]))
        pb, log_b = _predictions(b_dir, str(b["version"]))
        both = pa.merge(pb, on=["listing_id", "true_path"], suffixes=("_a", "_b"))
        if len(both) != len(pa) or len(both) != len(pb):
            rows.append({**row, "note": f"golden sets differ ({len(pa)} / {len(pb)} listings)"})
            continue
        true = both["true_path"].tolist()
        values, credit_a = listing_credits(true, both["predicted_path_a"].tolist(), score.value_table,
                                           score.level_credit, score.default_value)
        _, credit_b = listing_credits(true, both["predicted_path_b"].tolist(), score.value_table,
                                      score.level_credit, score.default_value)
        low, high = paired_bootstrap_delta(values, credit_a, credit_b)
        pooled.append((values, credit_a, credit_b))
        rows.append({**row, "golden": len(both),
                     "a_accuracy": float(np.mean(both["predicted_path_a"] == both["true_path"])),
                     "b_accuracy": float(np.mean(both["predicted_path_b"] == both["true_path"])),
                     "a_score": float(values @ credit_a / values.sum()),
                     "b_score": float(values @ credit_b / values.sum()),
                     "delta": float(values @ (credit_a - credit_b) / values.sum()),
                     "delta_low": low, "delta_high": high,
                     "a_trained": _trained(log_a), "b_trained": _trained(log_b), "note": ""})
    table = pd.DataFrame(rows)
    if pooled:
        values, ca, cb = (np.concatenate(p) for p in zip(*pooled, strict=True))
        low, high = paired_bootstrap_delta(values, ca, cb)
        table.attrs["pooled"] = {"weeks": len(pooled), "listings": len(values),
                                 "delta": float(values @ (ca - cb) / values.sum()), "low": low, "high": high}
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="state folder of season A")
    parser.add_argument("--b", type=Path, required=True, help="state folder of season B")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    table = compare(args.a, args.b)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if "pooled" in table.attrs:
        p = table.attrs["pooled"]
        print(f"pooled over {p['weeks']} weeks ({p['listings']} golden predictions): business score A - B "
              f"{p['delta']:+.4f}, paired bootstrap 95% [{p['low']:+.4f}, {p['high']:+.4f}]")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
