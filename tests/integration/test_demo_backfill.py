"""``make demo`` / ``make season`` create their weekly runs with ``airflow backfill create``; a
create that SQLite refuses because another component holds the metadata DB's lock (seen when
``airflow standalone`` starts on a loaded machine) is tried again instead of ending the demo.

Real Airflow CLI on a metadata DB of this test's own (not the session's, whose runs other
modules read), a real SQLite write lock held until the first attempt has failed on it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "scripts"))
import demo  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def own_airflow(tmp_path, monkeypatch) -> Path:
    """A migrated metadata DB with the DAGs serialized, in ``tmp_path``; returns the DB file."""
    home = tmp_path / "airflow"
    db = home / "airflow.db"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{db}")
    airflow = str(Path(sys.executable).parent / "airflow")
    for args in (["db", "migrate"], ["dags", "reserialize"]):
        proc = subprocess.run([airflow, *args], capture_output=True, text=True, env=os.environ.copy())
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return db


def _hold_write_lock(db: Path, log: Path, released: threading.Event, timeout_s: float = 120.0) -> None:
    """Holds an exclusive SQLite lock on ``db`` until ``log`` shows the refused attempt."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if log.exists() and demo.SQLITE_LOCKED in log.read_text(errors="replace"):
                break
            time.sleep(0.2)
    finally:
        conn.execute("COMMIT")
        conn.close()
        released.set()


def _backfill_runs(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM dag_run WHERE dag_id = ? AND run_type = 'backfill'",
                            (demo.DAG_ID,)).fetchone()[0]


def test_a_backfill_refused_by_a_locked_metadata_db_is_created_on_the_next_attempt(own_airflow, tmp_path, capsys):
    log = tmp_path / "airflow-backfill.log"
    released = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(own_airflow, log, released), daemon=True)
    holder.start()
    time.sleep(0.5)  # the lock is taken before the first attempt starts

    code = demo.create_backfill(date(2026, 9, 14), date(2026, 9, 27), log, attempts=4, wait_s=1.0)

    holder.join(timeout=10)
    assert released.is_set()
    assert code == 0, log.read_text()[-3000:]
    assert "the metadata DB was locked (attempt 1 of 4)" in capsys.readouterr().out
    assert _backfill_runs(own_airflow) == 2  # the two weekly intervals, created once


def test_any_other_backfill_failure_is_returned_at_once(own_airflow, tmp_path, capsys):
    log = tmp_path / "airflow-backfill.log"
    assert demo.create_backfill(date(2026, 9, 14), date(2026, 9, 27), log) == 0
    # a second backfill of the same DAG while the first is active: Airflow refuses it
    code = demo.create_backfill(date(2026, 9, 14), date(2026, 9, 27), log, attempts=4, wait_s=30.0)
    assert code != 0
    assert "attempt" not in capsys.readouterr().out
    assert _backfill_runs(own_airflow) == 2


def test_the_demo_waits_for_the_api_server_before_any_run_starts():
    """``wait_for_api`` returns only once the health endpoint answers (here a real HTTP server
    started 3 s late on the port), and names the URL when nothing answers in time."""
    import http.server
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(200 if self.path == "/api/v2/monitor/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    servers = []

    def serve_late():
        time.sleep(3)
        server = http.server.HTTPServer(("127.0.0.1", port), Health)
        servers.append(server)
        server.serve_forever()

    threading.Thread(target=serve_late, daemon=True).start()
    start = time.monotonic()
    try:
        demo.wait_for_api(port, timeout_s=60)
        waited = time.monotonic() - start
    finally:
        while not servers:
            time.sleep(0.1)
        servers[0].shutdown()
    assert waited >= 2.5  # it did not go on before the server answered

    with pytest.raises(TimeoutError, match=f"localhost:{port}/api/v2/monitor/health"):
        demo.wait_for_api(port, timeout_s=1)
