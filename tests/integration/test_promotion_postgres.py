"""The registry flow against an MLflow tracking server on PostgreSQL, started by the test.

The machine's PostgreSQL (127.0.0.1:5432) gets a fresh database; ``mlflow server`` runs on it
with proxied artifacts in a temp folder. The tiny model of the session is registered, gated and
promoted through the server; then the server is stopped during the next gate, which must fail
and leave every alias as it was.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from tests.integration.servers import free_port, stop_process

pytestmark = pytest.mark.integration

NAME = "listing-classifier"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    try:
        conn = psycopg2.connect(dbname=dbname, connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable on {PG['host']}:{PG['port']}: {exc}")
    conn.autocommit = True
    return conn


def start_server(db_url: str, artifacts, port: int, log) -> subprocess.Popen:
    """Starts ``mlflow server`` on a PostgreSQL backend store and waits for ``/health``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db_url,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"mlflow server did not become healthy in 120 s; see {log.name}")


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    """A fresh PostgreSQL database and an MLflow tracking server on it; everything dropped after."""
    db = f"lcp_mlflow_{uuid.uuid4().hex[:10]}"
    admin = _pg_connect()
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    root = tmp_path_factory.mktemp("pg-mlflow")
    port = free_port()
    db_url = f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
    log = open(root / "server.log", "w")  # noqa: SIM115 -- closed in the finally block
    server = {"db": db, "db_url": db_url, "port": port, "root": root, "log": log,
              "url": f"http://127.0.0.1:{port}"}
    server["proc"] = start_server(db_url, root / "artifacts", port, log)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server["url"]
    try:
        yield server
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        stop_process(server["proc"])
        log.close()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


def test_register_gate_promote_through_a_postgres_tracking_server(pg_server, tiny_trained):
    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from promotion.registry import alias_version, mlflow_client

    state, params, data = tiny_trained["state"], tiny_trained["params"], tiny_trained["data"]
    assert state.tracking_uri == pg_server["url"]
    v1 = register_challenger(state, params, data, tiny_trained["trained"].workspace_commit, "pg_dag", "run-1")
    first = gate_challenger(state, params, v1.version, data.golden_rev)
    assert first.decision == "promoted", first.reason
    assert promote(state, params, first).moved
    client = mlflow_client(state)
    assert alias_version(client, NAME, "champion") == v1.version
    assert client.get_model_version(NAME, v1.version).tags["decision"] == "promoted"

    # the registry really lives in PostgreSQL
    conn = _pg_connect(pg_server["db"])
    cur = conn.cursor()
    cur.execute("SELECT version FROM model_versions WHERE name = %s", (NAME,))
    assert [str(r[0]) for r in cur.fetchall()] == [v1.version]
    cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (NAME,))
    assert str(cur.fetchone()[0]) == v1.version
    conn.close()


def test_server_down_during_the_gate_fails_and_moves_no_alias(pg_server, tiny_trained):
    from mlflow.exceptions import MlflowException

    from promotion.promote import gate_challenger
    from promotion.register import register_challenger
    from promotion.registry import alias_version, mlflow_client

    state, params, data = tiny_trained["state"], tiny_trained["params"], tiny_trained["data"]
    v2 = register_challenger(state, params, data, "pg-second-registration", "pg_dag", "run-2")
    client = mlflow_client(state)
    before = {a: alias_version(client, NAME, a) for a in ("champion", "challenger", "previous-champion")}
    assert before["challenger"] == v2.version

    stop_process(pg_server["proc"])
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
    try:
        # the first registry call (the champion alias) finds nothing listening: MLflow's REST
        # client gives up at once (no retries) and raises its own exception, not a lookalike
        # "no champion" (None) and not an error of ours
        with pytest.raises(MlflowException, match=rf"^API request to {re.escape(pg_server['url'])}/api/2\.0/"
                                                  r"mlflow/registered-models/(alias|search) failed with exception .*"
                                                  r"Connection refused") as raised:
            gate_challenger(state, params, v2.version, data.golden_rev)
        assert type(raised.value) is MlflowException and raised.value.error_code == "INTERNAL_ERROR"
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
        pg_server["proc"] = start_server(pg_server["db_url"], pg_server["root"] / "artifacts",
                                         pg_server["port"], pg_server["log"])

    client = mlflow_client(state)
    after = {a: alias_version(client, NAME, a) for a in before}
    assert after == before
    assert "decision" not in client.get_model_version(NAME, v2.version).tags
