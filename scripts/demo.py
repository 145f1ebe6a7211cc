"""The main job, end to end: publish a catalog as weekly batches and run the retraining DAG
once per week with ``airflow dags test``, then print a summary.

Run through ``make demo`` (which sets the state folder and Airflow's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.catalog import load_catalog  # noqa: E402
from common.params import load_params  # noqa: E402
from common.state import State  # noqa: E402

DAG_ID = "listing_classifier_retraining"
SHOWN = ("[ingest]", "[validate]", "[register]", "[gate]", "[promote]", "epoch", "Epoch", "ERROR",
         "Traceback", "Error:", "failed", "metrics")


def airflow(*args: str, log: Path | None = None) -> int:
    """Runs the Airflow CLI of this interpreter; echoes the interesting lines, logs everything."""
    cmd = [str(Path(sys.executable).parent / "airflow"), *args]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
            open(log or os.devnull, "w") as fh:
        for line in proc.stdout:
            fh.write(line)
            if any(s in line for s in SHOWN):
                print("   ", line.rstrip()[:300], flush=True)
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="source catalog folder")
    parser.add_argument("--weeks", type=int, default=2)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 2))
    args = parser.parse_args()
    started = time.time()
    state = State.from_env().ensure()
    params = load_params()
    logs = state.root / "logs"
    logs.mkdir(exist_ok=True)

    from ingestion.feed import publish

    print(f"== publishing {args.data} as {args.weeks} weekly batches into {state.feed_url}")
    batches = publish(args.data, Path(state.feed_url), args.weeks, load_catalog(params.catalog), args.start)
    print("   batches:", ", ".join(batches))

    print(f"== airflow db migrate (AIRFLOW_HOME={os.environ.get('AIRFLOW_HOME')})")
    if airflow("db", "migrate", log=logs / "airflow-db-migrate.log") != 0:
        print(f"airflow db migrate failed: see {logs / 'airflow-db-migrate.log'}")
        return 1

    for week in range(args.weeks):
        logical = args.start + timedelta(weeks=week)
        log = logs / f"dags-test-{logical.isoformat()}.log"
        print(f"== week {week + 1}: airflow dags test {DAG_ID} {logical.isoformat()}  (log: {log})")
        t0 = time.time()
        rc = airflow("dags", "test", DAG_ID, f"{logical.isoformat()}T00:00:00+00:00", log=log)
        print(f"   week {week + 1} finished in {time.time() - t0:.0f} s, exit {rc}")
        if rc != 0:
            print(f"the DAG run failed: see {log}")
            return rc

    print_summary(state, params, time.time() - started)
    return 0


def print_summary(state: State, params, seconds: float) -> None:
    """Batches ingested / quarantined, data revision, metrics, promotion decisions, UI hints."""
    from ingestion.manifest import read_manifest
    from promotion.status import registry_status

    manifest = read_manifest(state.manifest)
    status = registry_status(state, params.registry.model_name)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=state.workspace, capture_output=True,
                         text=True).stdout.strip()
    metrics = json.loads((state.workspace / "metrics.json").read_text())
    print("\n================ summary ================")
    for batch_id, entry in sorted(manifest.items()):
        report = entry.get("report", {})
        print(f"batch {batch_id}: {entry['status']} ({report.get('accepted_rows', 0)} accepted, "
              f"{report.get('rejected_rows', 0)} rejected)")
    print(f"data revision (workspace commit): {rev}")
    print("last metrics (golden test set):", json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                     for k, v in metrics.items()}))
    for v in status["versions"]:
        print(f"model version {v['version']}: {v['decision']} -- challenger {v['candidate_score']} vs "
              f"champion {v['champion_score']} (v{v['champion_version']}), delta {v['delta']}: {v['reason']}")
    print(f"champion: {status['champion']}")
    print(f"wall time: {seconds / 60:.1f} min")
    print(f"\nAirflow UI: make ui  (http://localhost:8080, user admin, password in "
          f"{state.airflow_home}/simple_auth_manager_passwords.json.generated)")
    print("MLflow UI:  make ui  (http://localhost:5000, model 'listing-classifier')")
    print("Registry:   make status")


if __name__ == "__main__":
    sys.exit(main())
