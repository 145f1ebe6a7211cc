"""Serving check before promotion (after TFX's InfraValidator).

``models:/<name>@challenger`` is loaded as a pyfunc in a *fresh Python process* (nothing of the
gate's process is reused: not its imports, not its loaded model) and asked to predict a few
golden listings. A model that fails to load, raises, or answers with the wrong shape or columns
is not promoted.

CLI (what the parent process runs)::

    python -m promotion.serving_check --uri models:/listing-classifier@challenger --input rows.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPECTED_COLUMNS = ["category_path", "leaf", "probability"]
OPTIONAL_COLUMNS = ["auto"]
"""Served after the expected ones by a version that stores an auto-categorisation threshold
(``training.serving.ListingClassifierModel``); versions registered before it have none."""


def check_serving(tracking_uri: str, model_uri: str, rows: list[dict], timeout_s: float = 300.0) -> dict:
    """Loads and queries the model in a subprocess.

    Args:
        tracking_uri: the MLflow tracking / registry URI the child uses.
        model_uri: e.g. ``models:/listing-classifier@challenger``.
        rows: a few model inputs, ``[{"title": str, "image_path": str}, ...]``.
        timeout_s: wall-clock limit of the child, seconds.

    Returns:
        ``{"ok": bool, "detail": str, "seconds": float, "predictions": list | None}``; never raises
        for a model failure (the caller decides), only for an unusable ``rows``.

    Raises:
        ValueError: when ``rows`` is empty.
    """
    if not rows:
        raise ValueError("the serving check needs at least one input row")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lcp-serving-") as tmp:
        request = Path(tmp) / "rows.json"
        request.write_text(json.dumps(rows))
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
        cmd = [sys.executable, "-m", "promotion.serving_check", "--uri", model_uri, "--input", str(request)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                                  cwd=Path(__file__).resolve().parent.parent)
        except subprocess.TimeoutExpired:
            return {"ok": False, "detail": f"no answer within {timeout_s:.0f} s", "predictions": None,
                    "seconds": time.perf_counter() - started}
    seconds = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"ok": False, "detail": f"exit {proc.returncode}: {' | '.join(tail)[-600:]}",
                "predictions": None, "seconds": seconds}
    answer = json.loads(lines[-1])
    problems = []
    if answer.get("columns") not in (EXPECTED_COLUMNS, EXPECTED_COLUMNS + OPTIONAL_COLUMNS):
        problems.append(f"columns {answer.get('columns')} != {EXPECTED_COLUMNS} (+ {OPTIONAL_COLUMNS})")
    if len(answer.get("predictions", [])) != len(rows):
        problems.append(f"{len(answer.get('predictions', []))} predictions for {len(rows)} rows")
    ok = not problems
    detail = (f"{len(rows)} listings predicted in a fresh process ({seconds:.1f} s incl. load)" if ok
              else "; ".join(problems))
    return {"ok": ok, "detail": detail, "predictions": answer.get("predictions"), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    """Child side: load, predict, print one JSON line ``{"columns": [...], "predictions": [...]}``."""
    parser = argparse.ArgumentParser(prog="python -m promotion.serving_check", description=__doc__.split("\n")[0])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--input", required=True)
    args = parser.parse_args(argv)
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(args.uri)
    out = model.predict(pd.DataFrame(json.loads(Path(args.input).read_text())))
    print(json.dumps({"columns": list(out.columns), "predictions": out["category_path"].astype(str).tolist()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
