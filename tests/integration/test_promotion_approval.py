"""The human approval step for real: a DAG run with ``require_approval`` parks in Airflow's HITL
``approval`` task, and a reviewer answers through Airflow's REST API, as the UI's "Required
actions" page does.

``dag.test()`` runs the retraining DAG in this process on the test session's Airflow (SQLite),
on ~200 real fashion listings with tiny params. On Airflow 3.3 an ``ApprovalOperator`` parks its
task in the ``awaiting_input`` state and ``dag.test()`` keeps the run alive until a response
arrives from outside. Meanwhile a real ``airflow api-server`` on the same metadata DB serves the
REST API; a reviewer thread logs in (``POST /auth/token``), finds the pending request
(``GET /api/v2/dags/{dag_id}/dagRuns/~/hitlDetails``) and answers it
(``PATCH .../taskInstances/approval/-1/hitlDetails``). That route records the response and
resumes the parked task; nothing in this test touches Airflow's tables directly.

Run 1, the first model (the gate would promote it on the floors): the reviewer rejects, so
``promote`` is skipped, no alias but ``challenger`` exists, and ``review`` records the rejection.
Run 2, another model (more epochs, so another workspace commit and version): the reviewer
approves, ``champion`` moves to it, and the version carries the approval tags. Then the manual
rollback DAG, on the same registry, refuses a rollback with no ``previous-champion`` and moves
``champion`` back to a named version.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import mlflow
import pytest

from common.catalog import load_catalog
from common.state import State
from ingestion.feed import publish
from tests.conftest import PROJECT_ROOT
from tests.deploy.native_stack import free_port, http_json
from tests.integration.test_dag_end_to_end import small_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "listing_classifier_retraining"
NAME = "listing-classifier"
WEEK1 = datetime(2026, 11, 2, tzinfo=UTC)
REVIEW_TIMEOUT_S = 900  # from the run's start to its approval request: ingest .. gate, tiny model


class AirflowApiServer:
    """``airflow api-server`` as a child process on this test session's metadata DB.

    Args:
        home: the test session's AIRFLOW_HOME (its SQLite DB is the one ``dag.test()`` writes).
        log: the server's output file.
    """

    def __init__(self, home: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        passwords = home / "approval-test-passwords.json"
        passwords.write_text(json.dumps({"admin": self.password}))
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__API")}
        env.update({
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        })
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "api-server",
                                      "--port", str(self.port)], env=env, cwd=PROJECT_ROOT,
                                     stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self._token: str | None = None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 240) -> None:
        """Waits for ``/api/v2/monitor/health``; raises with the log tail if the server died or is slow."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airflow api-server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if http_json("GET", f"{self.url}/api/v2/monitor/health", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"airflow api-server not ready after {timeout:.0f}s:\n{self.tail()}")

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """A REST API v2 call as the user ``admin`` (JWT from the simple auth manager's login)."""
        if self._token is None:
            status, reply = http_json("POST", f"{self.url}/auth/token",
                                      {"username": "admin", "password": self.password})
            assert status == 201, (status, reply)
            self._token = reply["access_token"]
        return http_json(method, f"{self.url}/api/v2{path}", body, self._token)

    def stop(self) -> None:
        """Stops the server's process group (SIGTERM, then SIGKILL)."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class Reviewer(threading.Thread):
    """Answers the DAG's pending approval request through the REST API, once.

    Waits until a ``hitlDetails`` entry of the DAG has no response and its task is parked
    (``awaiting_input``), then PATCHes the chosen option. If anything goes wrong it fails the
    DAG run through the API, so ``dag.test()`` (which waits for input forever) returns.

    Args:
        server: the running api-server.
        choice: ``"Approve"`` or ``"Reject"``.
        timeout: seconds to wait for the request to appear.
    """

    def __init__(self, server: AirflowApiServer, choice: str, timeout: float = REVIEW_TIMEOUT_S) -> None:
        super().__init__(daemon=True, name=f"reviewer-{choice}")
        self.server, self.choice, self.timeout = server, choice, timeout
        self.request: dict | None = None  # the pending hitlDetail as the API listed it
        self.response: dict | None = None  # the PATCH reply
        self.error: str | None = None
        self.last_listing = "no error"
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()

    def _pending(self) -> dict | None:
        status, body = self.server.api("GET", f"/dags/{DAG_ID}/dagRuns/~/hitlDetails?response_received=false")
        if status != 200:  # e.g. SQLite busy under the running DAG: ask again, report it on timeout
            self.last_listing = f"{status} {body}"
            return None
        for detail in body["hitl_details"]:
            if detail["task_instance"]["state"] == "awaiting_input":
                return detail
        return None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        run_id = None
        try:
            while not self._done.is_set() and time.monotonic() < deadline:
                detail = self._pending()
                if detail is None:
                    time.sleep(2)
                    continue
                self.request = detail
                ti = detail["task_instance"]
                run_id = ti["dag_run_id"]
                path = (f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                        f"{ti['task_id']}/{ti['map_index']}/hitlDetails")
                status, body = self.server.api("PATCH", path, {"chosen_options": [self.choice]})
                if status != 200:
                    raise RuntimeError(f"PATCH {path}: {status} {body}")
                self.response = body
                return
            if not self._done.is_set():
                self.error = (f"no approval request appeared within {self.timeout:.0f}s "
                              f"(last failed listing: {self.last_listing})")
        except Exception as exc:  # noqa: BLE001 - recorded, and the run is failed so dag.test() returns
            self.error = f"{type(exc).__name__}: {exc}"
            if run_id:
                self.server.api("PATCH", f"/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}", {"state": "failed"})


def approval_params(path: Path) -> Path:
    """The quick-run params with the gate's floors at 0: every first model passes the gate.

    The subject here is the human step, so run 1 must reach it whatever a 2-epoch model on 160
    listings scores (it can land under small_params' 5% accuracy floor, and then the gate
    rejects before anyone is asked).
    """
    return small_params(path, floor=0.0)


def _client(state: State):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=state.tracking_uri, registry_uri=state.tracking_uri)


def _aliases(state: State) -> dict[str, str | None]:
    from promotion.registry import alias_version

    client = _client(state)
    return {a: alias_version(client, NAME, a) for a in ("champion", "challenger", "previous-champion")}


def _run_with_review(server: AirflowApiServer, choice: str, conf: dict) -> dict:
    """One ``dag.test()`` run answered by a :class:`Reviewer`; returns what both saw."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag(DAG_ID)
    reviewer = Reviewer(server, choice)
    reviewer.start()
    started = time.monotonic()
    try:
        dag_run = dag.test(logical_date=WEEK1, run_conf=conf)
    finally:
        reviewer.stop()
        reviewer.join(timeout=60)
    assert reviewer.error is None, f"{reviewer.error}\n--- api-server log\n{server.tail()}"
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    return {"run": dag_run, "states": states, "reviewer": reviewer, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, fashion_dir, airflow_db):
    """Run 1 rejected, run 2 (more epochs: another model version) approved, on one state."""
    root = tmp_path_factory.mktemp("approval")
    state = State(root / "state").ensure()
    keys = ("LCP_STATE_DIR", "LCP_PARAMS", "LCP_FEED_URL", "LCP_TASK_RETRIES", "MLFLOW_TRACKING_URI")
    old = {k: os.environ.get(k) for k in keys}
    server = AirflowApiServer(airflow_db, root / "api-server.log")
    try:
        os.environ.update({"LCP_TASK_RETRIES": "0", "LCP_STATE_DIR": str(state.root),
                           "LCP_PARAMS": str(approval_params(root / "params.yaml"))})
        os.environ.pop("LCP_FEED_URL", None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        publish(fashion_dir, Path(state.feed_url), weeks=1, catalog=load_catalog("catalogs/fashion.yaml"),
                start=WEEK1.date(), limit=200)
        server.wait_ready()
        rejected = _run_with_review(server, "Reject", {"require_approval": True, "epochs": 2})
        listed = _client(state).search_model_versions(f"name = '{NAME}'")
        client = _client(state)
        after_reject = {"aliases": _aliases(state), "versions": {str(v.version): dict(v.tags) for v in listed},
                        "run_tags": {str(v.version): client.get_run(v.run_id).data.tags for v in listed},
                        # the golden revision is a run tag (the version keeps the reviewer's tags)
                        "decisions": {str(v.version): json.loads(mlflow.artifacts.load_text(
                            f"runs:/{v.run_id}/comparison/{client.get_run(v.run_id).data.tags['golden_rev']}"
                            "/decision.json")) for v in listed},
                        "descriptions": {str(v.version): v.description or "" for v in listed}}
        # the same week again, nothing new in the feed: retrained because the form asks for it
        approved = _run_with_review(server, "Approve", {"require_approval": True, "epochs": 3, "retrain": True})
        print(f"[approval] rejected run {rejected['seconds']:.0f}s, approved run {approved['seconds']:.0f}s")
        yield {"state": state, "rejected": rejected, "after_reject": after_reject, "approved": approved}
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_rejected_promotion_moves_nothing_and_is_recorded(reviewed):
    rejected, after = reviewed["rejected"], reviewed["after_reject"]
    assert str(rejected["run"].state) == "success", rejected["states"]
    states = rejected["states"]
    assert states["gate"] == "success" and states["needs_approval"] == "success"
    assert states["approval"] == "success", states  # the human answered; the task itself succeeded
    assert states["promote"] == "skipped" and states["review"] == "success", states
    request = rejected["reviewer"].request
    assert request["options"] == ["Approve", "Reject"]
    assert request["subject"].startswith("Promote listing-classifier v") and request["subject"].endswith("to champion?")
    assert rejected["reviewer"].response["chosen_options"] == ["Reject"]

    assert len(after["versions"]) == 1
    (version, tags), = after["versions"].items()
    assert request["subject"] == f"Promote listing-classifier v{version} to champion?"
    # the gate would have promoted it (a first model passing the floors); the reviewer did not
    decision = after["decisions"][version]  # the whole decision, beside the review tags
    assert decision["first_run"] is True and decision["serving_check"]["ok"] is True
    assert decision["decision"] == "promoted"  # what the gate said, before the reviewer
    assert after["aliases"] == {"champion": None, "challenger": version, "previous-champion": None}
    assert "promoted_from" not in tags
    assert tags["approval"] == "rejected" and tags["approval_by"] == "admin"
    assert tags["decision"] == "rejected" and "reviewer admin rejected the promotion" in tags["reason"]
    # lineage from the DAG's validate task: the GX validation id of the batch this run ingested
    run_tags = after["run_tags"][version]
    assert list(json.loads(run_tags["gx_validation_ids"])) == ["fashion-2026-11-02"], run_tags["gx_validation_ids"]
    assert all(json.loads(run_tags["gx_validation_ids"]).values())
    # the version row carries only the tags a reviewer filters by (and the review's events)
    from promotion.registry import VERSION_TAGS

    assert set(tags) <= {*VERSION_TAGS, "approval", "approval_by"}, sorted(set(tags) - set(VERSION_TAGS))
    # the MLflow UI's description: the human review on top of the gate's report and its links
    description = after["descriptions"][version]
    assert description.startswith("## Human review: **REJECTED** by admin"), description[:300]
    assert "## Gate: **PROMOTED**" in description and "[training run](" in description
    assert "[GX Data Docs](" in description


def test_an_approved_promotion_moves_champion_and_is_recorded(reviewed):
    approved, state = reviewed["approved"], reviewed["state"]
    assert str(approved["run"].state) == "success", approved["states"]
    assert approved["states"]["approval"] == "success" and approved["states"]["promote"] == "success"
    assert approved["states"]["review"] == "success"
    assert approved["reviewer"].response["chosen_options"] == ["Approve"]
    assert approved["reviewer"].response["responded_by"]["name"] == "admin"

    client = _client(state)
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
    assert len(versions) == 2, sorted(versions)
    rejected_version = next(iter(reviewed["after_reject"]["versions"]))
    new = next(v for k, v in versions.items() if k != rejected_version)
    assert approved["reviewer"].request["subject"] == f"Promote listing-classifier v{new.version} to champion?"
    assert _aliases(state)["champion"] == str(new.version)
    assert new.tags["decision"] == "promoted" and new.tags["approval"] == "approved"
    assert new.tags["approval_by"] == "admin" and "promoted_from" not in new.tags  # the first champion
    assert new.description.startswith("## Human review: **APPROVED** by admin"), new.description[:300]
    # the earlier rejection stays on its version
    old = versions[rejected_version].tags
    assert old["approval"] == "rejected" and old["decision"] == "rejected"


def test_rollback_dag_refuses_without_previous_champion_then_moves_champion_back(reviewed):
    """The manually triggered ``listing_classifier_rollback`` DAG, run by ``dag.test()``."""
    from airflow.dag_processing.dagbag import DagBag

    state = reviewed["state"]
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("listing_classifier_rollback")
    before = _aliases(state)
    assert before["champion"] and before["previous-champion"] is None
    refused = dag.test(run_conf={"to": "previous-champion", "reason": "nothing to go back to"})
    assert str(refused.state) == "failed"
    assert _aliases(state) == before

    target = next(iter(reviewed["after_reject"]["versions"]))
    moved = dag.test(run_conf={"to": target, "reason": "test: back to the older model"})
    assert str(moved.state) == "success"
    after = _aliases(state)
    assert after["champion"] == target and after["previous-champion"] == before["champion"]
    client = _client(state)
    tags = client.get_model_version(NAME, target).tags
    assert tags["rollback_from"] == before["champion"] and tags["rollback_by"] == f"airflow:{moved.run_id}"
    assert tags["rollback_reason"] == "test: back to the older model"
    assert client.get_model_version(NAME, before["champion"]).tags["rolled_back_to"] == target
