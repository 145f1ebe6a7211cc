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
