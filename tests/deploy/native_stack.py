"""The docker-compose topology run natively, for tests: real processes, real PostgreSQL and Redis.

Started as child processes from the project's venv: an MLflow tracking server (backend store on
PostgreSQL, artifacts proxied to S3, MLflow's basic-auth app as in docker-compose: the tasks use
their own account, :func:`promotion.tracking_auth.ensure_task_account`), and Airflow 3 with the CeleryExecutor (api-server,
scheduler, dag-processor, two Celery workers on one queue; Redis broker, PostgreSQL metadata and result
backend). S3 (the feed and MLflow's artifacts) is a moto server in the test process. Each stack
gets its own databases, Redis database number and Celery queue, so it shares nothing with other
users of the machine's PostgreSQL and Redis; :meth:`NativeStack.stop` stops every process it
started and drops the databases.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PG_DSN = os.environ.get("LCP_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("LCP_TEST_REDIS", "redis://127.0.0.1:6379")
BIN = Path(sys.executable).parent
DAG_ID = "listing_classifier_retraining"
BUCKET = "listing-classifier"
WORKERS = ("worker1", "worker2")
"""The Celery workers of a stack (their log names; ``<name>@<host>`` their Celery hostnames)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_available() -> str | None:
    """Why the stack cannot run here (PostgreSQL or Redis unreachable), or None."""
    import psycopg2
    import redis

    try:
        psycopg2.connect(f"{PG_DSN}/postgres", connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return f"PostgreSQL not reachable at {PG_DSN}: {exc}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis not reachable at {REDIS_URL}: {exc}"
    return None


def _sql(statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{PG_DSN}/postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None,
              timeout: float = 30) -> tuple[int, dict]:
    """One JSON request; returns (status, decoded body or {"raw": text})."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, {"raw": text}


@dataclass
class NativeStack:
    """A running stack; build it with :func:`start_stack`."""

    root: Path
    airflow_url: str
    mlflow_url: str
    s3_endpoint: str
    admin_password: str
    env: dict
    databases: list[str]
    redis_db: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    moto: object = None
    mlflow_admin: tuple[str, str] = ("admin", "")
    mlflow_tasks: tuple[str, str] = ("airflow-tasks", "")
    _token: str | None = None

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def spawn(self, name: str, argv: list[str]) -> None:
        """Starts one component in its own process group, output to ``logs/<name>.log``."""
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        out = self.log(name).open("ab")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=PROJECT_ROOT, start_new_session=True)

    def check_alive(self) -> None:
        """Raises with the log tail of any component that exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def wait_for(self, what: str, probe, timeout: float) -> object:
        """Polls ``probe()`` until it returns a truthy value; fails fast if a component died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                value = probe()
            except (OSError, urllib.error.URLError):
                value = None
            if value:
                return value
            time.sleep(2)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s; logs: "
                           + "\n".join(f"--- {n}\n{self.tail(n, 1500)}" for n in self.procs))

    def token(self) -> str:
        """A JWT from the simple auth manager's ``POST /auth/token``."""
        if self._token is None:
            status, body = http_json("POST", f"{self.airflow_url}/auth/token",
                                     {"username": "admin", "password": self.admin_password})
            assert status == 201, (status, body)
            self._token = body["access_token"]
        return self._token

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A call to Airflow's REST API v2 (``path`` starts after ``/api/v2``)."""
        return http_json(method, f"{self.airflow_url}/api/v2{path}", body, self.token())

    def wait_for_run(self, run_id: str, timeout: float) -> dict:
        """Waits until the DAG run ends; returns it with ``task_states`` added."""
        def ended():
            status, run = self.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
            return run if status == 200 and run["state"] in ("success", "failed") else None

        run = self.wait_for(f"DAG run {run_id}", ended, timeout)
        _, tis = self.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        run["task_states"] = {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}
        return run

    def task_logs(self, run_id: str) -> str:
        """Every task log of a run on disk (the worker writes them under AIRFLOW_HOME/logs)."""
        logs = sorted((self.root / "airflow" / "logs").rglob("*.log"))
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in logs
                         if run_id in str(p))

    def stop(self) -> None:
        """Stops every process (SIGTERM to its group, then SIGKILL), moto, and drops the databases."""
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self.moto is not None:
            self.moto.stop()
        import redis

        redis.Redis.from_url(f"{REDIS_URL}/{self.redis_db}").flushdb()
        for db in self.databases:
            _sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def start_stack(root: Path, params_file: Path, feed_dir: Path) -> NativeStack:
    """Starts the whole stack on a feed folder uploaded to S3 (moto); returns it running.

    Args:
        root: an empty folder for the stack (Airflow home, state folder, logs).
        params_file: the params file the pipeline reads (``LCP_PARAMS``).
        feed_dir: a local feed (``ingestion.feed.publish``) to upload under ``s3://<bucket>/feed``.

    Raises:
        TimeoutError, RuntimeError: a component did not come up (with its log tail).
    """
    import boto3
    from moto.server import ThreadedMotoServer

    tag = f"lcp_test_{os.getpid()}_{secrets.token_hex(3)}"
    databases = [f"{tag}_airflow", f"{tag}_mlflow"]
    for db in databases:
        _sql(f'CREATE DATABASE "{db}"')
    redis_db = 8 + os.getpid() % 8
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    s3_endpoint = f"http://{host}:{port}"
    s3_env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
              "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    s3.create_bucket(Bucket=BUCKET)
    for path in sorted(feed_dir.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"feed/{path.relative_to(feed_dir).as_posix()}")

    api_port, mlflow_port = free_port(), free_port()
    airflow_home = root / "airflow"
    airflow_home.mkdir(parents=True)
    password = secrets.token_urlsafe(12)
    tasks_password = secrets.token_urlsafe(16)
    passwords_file = airflow_home / "passwords.json"
    passwords_file.write_text(json.dumps({"admin": password}))
    pg = PG_DSN.replace("postgresql://", "postgresql+psycopg2://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MLFLOW_", "LCP_"))}
    env.update(s3_env)
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{pg}/{databases[0]}",
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{redis_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{pg}/{databases[0]}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": tag,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # only the runs the test triggers: no scheduled run of the weekly interval
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "LCP_STATE_DIR": str(root / "state"),
        "LCP_PARAMS": str(params_file),
        "LCP_FEED_URL": f"s3://{BUCKET}/feed",
        "LCP_TASK_RETRIES": "0",
        "LCP_MLFLOW_UI_URL": f"http://127.0.0.1:{mlflow_port}",
        "LCP_AIRFLOW_UI_URL": f"http://127.0.0.1:{api_port}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        # the tasks' own account on the basic-auth tracking server (what docker-compose passes)
        "MLFLOW_TRACKING_USERNAME": "airflow-tasks",
        "MLFLOW_TRACKING_PASSWORD": tasks_password,
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    stack = NativeStack(root=root, airflow_url=f"http://127.0.0.1:{api_port}",
                        mlflow_url=f"http://127.0.0.1:{mlflow_port}", s3_endpoint=s3_endpoint,
                        admin_password=password, env=env, databases=databases, redis_db=redis_db,
                        moto=moto, mlflow_admin=("admin", secrets.token_urlsafe(16)),
                        mlflow_tasks=("airflow-tasks", tasks_password))
    try:
        migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True,
                                 text=True, timeout=300)
        assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
        from promotion.tracking_auth import ensure_task_account, write_server_config

        auth_config = write_server_config(root / "mlflow-auth" / "basic_auth.ini", f"{pg}/{databases[1]}")
        mlflow_env = {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
                      "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{mlflow_port},localhost:{mlflow_port}",
                      "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
                      "MLFLOW_AUTH_ADMIN_USERNAME": stack.mlflow_admin[0],
                      "MLFLOW_AUTH_ADMIN_PASSWORD": stack.mlflow_admin[1],
                      "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}
        stack.env = {**env, **mlflow_env}
        stack.spawn("mlflow", [str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
                               "--host", "127.0.0.1", "--port", str(mlflow_port),
                               "--backend-store-uri", f"{pg}/{databases[1]}", "--serve-artifacts",
                               "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--workers", "1"])
        stack.env = env
        stack.wait_for("MLflow server", lambda: http_json("GET", f"{stack.mlflow_url}/health")[0] == 200, 180)
        ensure_task_account(stack.mlflow_url, *stack.mlflow_tasks, "listing-classifier", "listing-classifier",
                            *stack.mlflow_admin)
        airflow = str(BIN / "airflow")
        stack.spawn("api-server", [airflow, "api-server", "--port", str(api_port)])
        stack.spawn("scheduler", [airflow, "scheduler"])
        stack.spawn("dag-processor", [airflow, "dag-processor"])
        for worker in WORKERS:  # two workers on one queue: mapped tasks spread over both
            stack.spawn(worker, [airflow, "celery", "worker", "--queues", tag, "--concurrency", "1",
                                 "--celery-hostname", f"{worker}@%h"])
        stack.wait_for("Airflow api-server",
                       lambda: http_json("GET", f"{stack.airflow_url}/api/v2/monitor/health")[0] == 200, 240)
        stack.wait_for("the DAG to be parsed", lambda: stack.api("GET", f"/dags/{DAG_ID}")[0] == 200, 240)
        for worker in WORKERS:
            stack.wait_for(f"the Celery {worker}", lambda w=worker: "ready." in stack.tail(w, 100_000), 180)
        return stack
    except BaseException:
        stack.stop()
        raise
