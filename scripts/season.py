"""A season of weekly retraining on a catalog that changes: ``make season``.

Publishes the catalog in its own time order (the adapter's ``order_by`` column, e.g. the
fashion catalog's ``year``; ties by listing id) as ``--weeks`` weekly batches, runs the
retraining DAG once per week the way ``make demo`` does (``airflow standalone`` and
``airflow backfill create`` over the weekly data intervals), with a quick training profile
(``profiles/season.yaml`` applied on top of ``params.yaml``, written to ``<state>/params.yaml``
and read by every task through ``LCP_PARAMS``), then prints the season table and writes it as
``<state>/season/season.csv`` and ``season.png`` (:mod:`monitoring.season`), also logged to
MLflow (run ``season/<model>``).

The state folder must be new: a season is published into an empty feed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from common.params import PARAMS_ENV, load_params  # noqa: E402
from common.state import State  # noqa: E402

DEFAULT_PROFILE = ROOT / "profiles" / "season.yaml"


def season_params(state: State, profile: Path) -> Path:
    """The state folder's ``params.yaml``: params.yaml with the profile's overrides (``demo.profile_params``).

    Raises:
        FileNotFoundError: when the profile does not exist.
        pydantic.ValidationError: when an override names no parameter or has a bad value.
    """
    import demo  # the state's params.yaml with a profile: one merge for the demo and the season

    return demo.profile_params(state, profile)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="source catalog folder")
    parser.add_argument("--weeks", type=int, default=10)
    parser.add_argument("--start", type=date.fromisoformat, default=None,
                        help="the first week's Monday (default: the latest that lets every week's "
                             "data interval end by today: Airflow backfills no future interval)")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE,
                        help="params overrides of the season (default: profiles/season.yaml)")
    parser.add_argument("--limit", type=int, default=None,
                        help="publish only this many listings (a deterministic sample): a quick try")
    args = parser.parse_args()
    started = time.time()
    state = State.from_env().ensure()
    from ingestion.manifest import read_manifest

    if read_manifest(state.manifest) or any(Path(state.feed_url).glob("*-*")):
        print(f"the state folder {state.root} already holds batches: a season starts from an empty "
              "one (make clean-state, or make season STATE=<new folder>)")
        return 2
    os.environ[PARAMS_ENV] = str(season_params(state, args.profile))
    print(f"== season profile {args.profile} -> {os.environ[PARAMS_ENV]}")

    import demo

    start = args.start or demo.latest_start(args.weeks)
    code = demo.run_weeks(args.data, args.weeks, start, order="time", limit=args.limit)
    from monitoring.season import write_season

    result, text = write_season(state, load_params())
    print("\n================ season ================")
    print(text)
    print(f"\ntable: {result.csv}\ntimeline: {result.png}\nMLflow run: season/"
          f"{load_params().registry.model_name} ({result.mlflow_run_id})")
    print(f"wall time: {(time.time() - started) / 60:.1f} min")
    return code


if __name__ == "__main__":
    sys.exit(main())
