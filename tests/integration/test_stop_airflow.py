"""A stop is not cut short by the signals that come while it runs: ``make demo`` (scripts/demo.py)
exits on TERM through ``SystemExit``, and GNU make, on a TERM, sends its recipe a second one, as
an impatient user's second Ctrl-C does. The stop still ends every process and marks the metadata
DB's unfinished runs failed; the process acts on the signal once the stop is done.

Real processes, the session's real Airflow metadata DB (``airflow db migrate``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

# as scripts/demo.py's run_weeks: a TERM unwinds through ``finally`` into the stop
STOPPER = """
import logging, signal, subprocess, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
sys.path.insert(0, {scripts!r})
from stop_airflow import stop_airflow
signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
# a process that outlives its TERM (as a busy task does), so the stop waits out its grace
tree = subprocess.Popen(["bash", "-c", "trap '' TERM; echo started; sleep 60 & wait"],
                        stdout=subprocess.PIPE, text=True, start_new_session=True)
tree.stdout.readline()
print("tree", tree.pid, flush=True)
try:
    stop_airflow([tree.pid], grace_s=4)
finally:
    print("after the stop", flush=True)
print("not reached: the held TERM exits first", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_signals_during_the_stop_are_held_until_it_is_done(airflow_db, tmp_path):
    script = tmp_path / "stopper.py"
    script.write_text(STOPPER.format(scripts=str(PROJECT_ROOT / "scripts")))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stdout.readline()
    assert first.startswith("tree "), first + proc.stdout.read()
    tree = int(first.split()[1])
    time.sleep(1.0)  # inside the grace period: the tree ignores the stop's TERM
    assert _alive(tree)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        proc.send_signal(sig)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=120)
    assert "marked 0 task instance(s) and 0 DAG run(s) failed" in out, out
    assert "signal SIGTERM arrived while stopping" in out, out
    assert "after the stop" in out and "not reached" not in out, out
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out)
    assert not _alive(tree)


def test_the_task_instances_and_runs_a_stop_leaves_unfinished_are_marked_failed(airflow_db):
    """What ``make ui``'s stop leaves in the metadata DB when no Airflow component marked it: a DAG
    run still "running" and its task "running" (the stack test in tests/deploy/test_ui_stop.py
    cannot count on it: there the killed task often reports its own failure first). A real run of
    the rollback DAG (its task marked success by ``dag.test``, not executed), set back to that
    state through Airflow's ORM."""
    import importlib.util

    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select, update

    spec = importlib.util.spec_from_file_location("stop_airflow", PROJECT_ROOT / "scripts" / "stop_airflow.py")
    stop_airflow = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stop_airflow)

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("listing_classifier_rollback")
    run_id = dag.test(run_conf={"to": "previous-champion", "reason": "test"}, mark_success_pattern=".*").run_id
    with create_session() as session:
        # whatever else this session's DB holds unfinished is marked too: counted first
        before_ti = session.scalar(select(func.count()).select_from(TaskInstance)
                                   .where(TaskInstance.state.in_(stop_airflow.UNFINISHED_TI)))
        before_runs = session.scalar(select(func.count()).select_from(DagRun)
                                     .where(DagRun.state.in_(("running", "queued"))))
        session.execute(update(TaskInstance).where(TaskInstance.run_id == run_id)
                        .values(state="running", end_date=None))
        session.execute(update(DagRun).where(DagRun.run_id == run_id).values(state="running", end_date=None))

    assert stop_airflow.fail_unfinished_runs() == (before_ti + 1, before_runs + 1)

    with create_session() as session:
        tis = session.execute(select(TaskInstance.task_id, TaskInstance.state, TaskInstance.end_date)
                              .where(TaskInstance.run_id == run_id)).all()
        run = session.execute(select(DagRun.state, DagRun.end_date).where(DagRun.run_id == run_id)).one()
    assert [(t, s) for t, s, _ in tis] == [("rollback", "failed")]
    assert tis[0].end_date is not None and run.end_date is not None
    assert run.state == "failed"
    # nothing unfinished is left for a second stop
    assert stop_airflow.fail_unfinished_runs() == (0, 0)
