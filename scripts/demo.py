"""The main job, end to end: publish a catalog as weekly batches and run the retraining DAG
once per week through Airflow's own scheduler, then print a summary.

The weeks run the way scheduled weekly retraining runs: ``airflow standalone`` (api-server,
scheduler on the LocalExecutor, dag-processor, triggerer) on the state's Airflow home, and
``airflow backfill create`` over the weekly data intervals that cover the published batches, so
each week is a real DAG run with its logical date, its task logs in ``<state>/airflow/logs``
(what the Airflow UI shows) and its true start and end times. While the backfill runs the
scheduler creates no scheduled run (``[scheduler] use_job_schedule = False``); at the end both
DAGs are left unpaused, so that the weekly schedule fires whenever a scheduler runs (``make ui``).

Run through ``make demo`` (which sets the state folder and Airflow's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.catalog import load_catalog  # noqa: E402
from common.params import PARAMS_ENV, STATE_PARAMS, load_params, write_params  # noqa: E402
from common.state import State  # noqa: E402

DAG_ID = "listing_classifier_retraining"
ROLLBACK_DAG_ID = "listing_classifier_rollback"
RUN_TIMEOUT_S = 3 * 3600
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


SQLITE_LOCKED = "database is locked"
"""SQLite's answer to a writer that waited out the busy timeout (Python's sqlite3 default, 5 s:
Airflow sets none) while another held the lock; the standalone scheduler and dag-processor write
the same metadata DB, and a backfill create met it twice when ``make season`` started."""


def create_backfill(start: date, end: date, log: Path, attempts: int = 4, wait_s: float = 5.0) -> int:
    """``airflow backfill create`` over ``start .. end``, one active run at a time; returns its exit code.

    When SQLite refuses the runs' inserts (:data:`SQLITE_LOCKED`), Airflow deletes the backfill
    it had committed ("clean up the orphan so the user can retry", ``airflow.models.backfill.
    _create_backfill``), so the create is tried again, up to ``attempts`` times, ``wait_s``
    apart; any other failure (an orphan it could not delete included) is returned at once.
    """
    args = ("backfill", "create", "--dag-id", DAG_ID, "--from-date", start.isoformat(),
            "--to-date", end.isoformat(), "--max-active-runs", "1")
    for attempt in range(1, attempts):
        code = airflow(*args, log=log)
        if code == 0 or SQLITE_LOCKED not in log.read_text(errors="replace"):
            return code
        print(f"   the metadata DB was locked (attempt {attempt} of {attempts}): trying again in {wait_s:.0f} s")
        time.sleep(wait_s)
    return airflow(*args, log=log)


def airflow_env(port: int) -> dict:
    """The environment of the demo's Airflow: the venv first on PATH (``standalone`` starts its
    components as a bare ``airflow``), the api-server and its Task Execution API on ``port``, and
    no scheduled runs while the demo's backfill runs."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parsed_dags() -> set[str]:
    """The DAG ids the dag-processor has written to the metadata database."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return set(session.scalars(select(DagModel.dag_id)).all())


def wait_for_dags(timeout_s: float = 300) -> None:
    """Waits until the dag-processor has parsed both DAGs into the metadata DB."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if {DAG_ID, ROLLBACK_DAG_ID} <= parsed_dags():
            return
        time.sleep(3)
    raise TimeoutError(f"the dag-processor did not parse {DAG_ID} within {timeout_s:.0f} s")


def wait_for_api(port: int, timeout_s: float = 300) -> None:
    """Waits until the api-server answers its health check (``/api/v2/monitor/health``): a task
    started before would fail its first try with "Connection refused" (its log then not found)."""
    import urllib.request

    url = f"http://localhost:{port}/api/v2/monitor/health"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"the api-server did not answer {url} within {timeout_s:.0f} s")


def weekly_runs(weeks_wanted: int, timeout_s: float) -> list[dict]:
    """Polls the backfill's DAG runs (``monitoring.season.dag_runs``, read from the metadata DB
    in this process) until each has ended; prints each as it ends."""
    from monitoring.season import dag_runs

    seen: set[str] = set()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        # read in this process: an `airflow dags list-runs` a poll cost ~5 CPU-seconds each time
        runs = [r for r in dag_runs(DAG_ID) if r["run_id"].startswith("backfill__")]
        for run in sorted(runs, key=lambda r: r["logical_date"]):
            if run["state"] in ("success", "failed") and run["run_id"] not in seen:
                seen.add(run["run_id"])
                print(f"   run {run['run_id']}: {run['state']} ({run['start']} -> {run['end']})")
                for line in gate_lines(run["run_id"]):
                    print("     ", line[:400])
        if len(seen) >= weeks_wanted:
            return runs
        time.sleep(10)
    raise TimeoutError(f"the weekly runs did not end within {timeout_s:.0f} s")


def gate_lines(run_id: str) -> list[str]:
    """The ``[gate]``/``[promote]``/``[ingest]``/``[validate]`` lines of a run's task logs."""
    root = Path(os.environ["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}"
    out = []
    for task in ("ingest", "validate", "gate", "promote"):
        for log in sorted((root / f"task_id={task}").glob("attempt=*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line).get("event", "")
                except ValueError:
                    event = line
                if isinstance(event, str) and event.startswith(("[ingest]", "[validate]", "[gate]", "[promote]")):
                    out.append(event)
    return out


def stop(proc: subprocess.Popen) -> None:
    """Stops ``airflow standalone`` with every process below it, the tasks' own process groups
    included (TERM, KILL 30 s later), then marks the task instances and DAG runs it left
    unfinished failed (:mod:`stop_airflow`): a stopped demo leaves no backfill run "running"."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stop_airflow import stop_airflow

    stop_airflow([proc.pid], grace_s=30)
    proc.wait()


def latest_start(weeks: int, today: date | None = None) -> date:
    """The latest Monday from which ``weeks`` weekly data intervals (Airflow's ``@weekly``: Sunday
    00:00 UTC to the next Sunday) have all ended by ``today``: a backfill runs none in the future."""
    today = today or date.today()
    last_sunday = today - timedelta(days=(today.weekday() + 1) % 7)  # the latest interval end
    return last_sunday - timedelta(weeks=weeks) - timedelta(days=6)


def run_weeks(data: Path, weeks: int, start: date, order: str = "hash", limit: int | None = None) -> int:
    """Publishes ``data`` as ``weeks`` weekly batches and runs the DAG once per week through
    ``airflow standalone`` + ``airflow backfill create``; returns 0 when every run succeeded.

    Args:
        data: the source catalog folder.
        weeks: weekly batches to publish and DAG runs to wait for.
        start: the first week's Monday (the backfill's first logical date).
        order: ``"hash"`` or ``"time"`` (:func:`ingestion.feed.publish`).
        limit: publish only this many listings (a deterministic sample), e.g. for a quick try.
    """
    last = latest_start(weeks)
    if start > last:
        print(f"the last of {weeks} weeks from {start} ends after today ({date.today()}): Airflow does "
              f"not backfill data intervals in the future, so those weeks would never run; start on "
              f"{last} or earlier (START=, --start)")
        return 2
    state = State.from_env().ensure()
    params = load_params()
    remembered = state.root / STATE_PARAMS
    if not remembered.is_file():  # the state remembers its params: a later `make ui` runs with them
        write_params(params, remembered)
    logs = state.root / "logs"
    logs.mkdir(exist_ok=True)

    from ingestion.feed import publish

    print(f"== publishing {data} as {weeks} weekly batches ({order} order) into {state.feed_url}")
    batches = publish(data, Path(state.feed_url), weeks, load_catalog(params.catalog), start, limit=limit,
                      order=order)
    print("   batches:", ", ".join(batches))

    print(f"== airflow db migrate (AIRFLOW_HOME={os.environ.get('AIRFLOW_HOME')})")
    if airflow("db", "migrate", log=logs / "airflow-db-migrate.log") != 0:
        print(f"airflow db migrate failed: see {logs / 'airflow-db-migrate.log'}")
        return 1

    port = free_port()
    log = logs / "airflow-standalone.log"
    print(f"== airflow standalone on port {port} (LocalExecutor; log: {log})")
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"],
                                env=airflow_env(port), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    # a TERM (a killed make, a CI timeout) or HUP (a closed terminal) unwinds through ``finally``
    # like Ctrl-C, so that ``airflow standalone`` (a session of its own: no signal meant for make
    # reaches it) and its components are stopped instead of left running
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    try:
        os.environ.update(airflow_env(port))
        wait_for_dags()
        wait_for_api(port)  # no run starts (unpause, backfill) before the api-server answers
        for dag_id in (DAG_ID, ROLLBACK_DAG_ID):
            airflow("dags", "unpause", dag_id, log=logs / "airflow-unpause.log")
        # one weekly data interval per batch: the scheduler's logical dates, not ours
        end = start + timedelta(weeks=weeks) - timedelta(days=1)
        print(f"== airflow backfill create {DAG_ID} {start} .. {end}")
        if create_backfill(start, end, logs / "airflow-backfill.log") != 0:
            print(f"airflow backfill create failed: see {logs / 'airflow-backfill.log'}")
            return 1
        runs = weekly_runs(weeks, RUN_TIMEOUT_S * weeks)
    finally:
        stop(proc)
    failed = [r["run_id"] for r in runs if r["state"] != "success"]
    if failed:
        print(f"DAG run(s) failed: {', '.join(failed)}: see the task logs in "
              f"{state.airflow_home}/logs (or make ui)")
        return 1
    return 0


DEMO_PROFILE = ROOT / "profiles" / "demo.yaml"


def profile_params(state: State, profile: Path) -> Path:
    """The state's ``params.yaml``: ``params.yaml`` with the profile's overrides, written when the
    state has none yet (a state keeps the params it was built with); returns its path.

    Raises:
        FileNotFoundError: when the profile does not exist.
        pydantic.ValidationError: when an override names no parameter or has a bad value.
    """
    import yaml

    path = state.root / STATE_PARAMS
    if not path.is_file():
        overrides = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
        write_params(load_params(ROOT / "params.yaml").with_overrides(overrides), path)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="source catalog folder")
    parser.add_argument("--weeks", type=int, default=2)
    parser.add_argument("--start", type=date.fromisoformat, default=date(2026, 11, 2))
    parser.add_argument("--profile", type=Path, default=DEMO_PROFILE,
                        help="params overrides of the demo (default: profiles/demo.yaml); "
                             "ignored when LCP_PARAMS names a params file")
    args = parser.parse_args()
    started = time.time()
    if not os.environ.get(PARAMS_ENV):
        os.environ[PARAMS_ENV] = str(profile_params(State.from_env().ensure(), args.profile))
        print(f"== demo profile {args.profile} -> {os.environ[PARAMS_ENV]}")
    if run_weeks(args.data, args.weeks, args.start) != 0:
        return 1
    print_summary(State.from_env(), load_params(), time.time() - started)
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
    print(f"\nThe weekly runs, with their task logs: make ui, then http://localhost:8080 (user admin, "
          f"password in {state.airflow_home}/simple_auth_manager_passwords.json.generated).")
    print(f"{DAG_ID} is unpaused: its @weekly schedule fires whenever a scheduler runs (make ui);"
          " pause it in the UI to stop weekly retraining.")
    print("MLflow UI:  make ui  (http://localhost:5000, model 'listing-classifier')")
    print("Registry:   make status")


if __name__ == "__main__":
    sys.exit(main())
