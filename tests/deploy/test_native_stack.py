"""The compose topology natively: Airflow 3 on the CeleryExecutor (PostgreSQL, Redis), an MLflow
server on PostgreSQL with S3 artifacts, the feed on S3 (moto); the DAG triggered through the
REST API; and the same stack driven through the Airflow and MLflow UIs in headless Chromium.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from common.catalog import load_catalog
from common.params import load_params, write_params
from ingestion.feed import publish
from tests.conftest import PROJECT_ROOT
from tests.deploy.native_stack import DAG_ID, WORKERS, NativeStack, service_available, start_stack
from tests.integration.test_dag_end_to_end import small_params

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.stack]

RUN_TIMEOUT_S = 1200
"""Seconds a weekly run may take before the test fails: a bound on a hang, not a speed goal (speed
is measured by the benchmarks). 420 s, the bound before 2026-12-07, was passed by the third week
(its gate still running) on a machine that ran the whole suite in 67 min instead of 37."""
SHARD = 25
"""``validate.image_shard_size`` of the stack's runs."""
WEEKS = 3
"""Weekly batches in the feed: a state of three weeks, as a reviewer meets it (issue 29)."""
OUR_LOGGERS = ("promotion", "training", "common", "monitoring", "ingestion", "validation")
SCREENSHOTS = PROJECT_ROOT / "tests" / "output" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
REVIEWER = ("reviewer", "reviewer-" + os.urandom(6).hex())


def skip_unless_ci(reason: str) -> None:
    """Skips on a developer's machine without the stack's services; fails in CI (``CI`` set, as
    CI services set it), where a missing service is a misconfiguration, not a reason to skip."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI is set, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, fashion_dir):
    """The running stack on 240 real fashion listings (three weekly batches on S3; each run below
    takes one: the REST API's two runs, then the one triggered from the UI)."""
    if reason := service_available():
        skip_unless_ci(reason)
    root = tmp_path_factory.mktemp("native-stack")
    feed = root / "feed"
    publish(fashion_dir, feed, weeks=WEEKS, catalog=load_catalog("catalogs/fashion.yaml"),
            start=date(2026, 11, 2), limit=240)
    # floors at 0: the subject is the topology, and a 4-epoch first model on ~150 listings can
    # score under small_params' 5% accuracy floor (4.9% in one CI run), which the gate rejects
    params = small_params(root / "params.yaml", floor=0.0)
    # shards of SHARD rows: each weekly batch (~80 listings) maps check_images over a few of them
    write_params(load_params(params).with_overrides({"validate": {"image_shard_size": SHARD}}), params)
    running = start_stack(root, params, feed)
    try:
        # this test reads the registry as a reviewer would: an account of its own, READ only
        from mlflow.server.auth.client import AuthServiceClient

        from promotion.tracking_auth import as_account

        with as_account(*running.mlflow_admin):
            AuthServiceClient(running.mlflow_url).create_user(*REVIEWER)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MLFLOW_TRACKING_USERNAME", REVIEWER[0])
            env.setenv("MLFLOW_TRACKING_PASSWORD", REVIEWER[1])
            yield running
    finally:
        running.stop()


def _mlflow(stack: NativeStack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _mlflow_status(stack: NativeStack, method: str, path: str, body: dict | None = None,
                   auth: tuple[str, str] | None = None) -> int:
    """The HTTP status of one request to the tracking server, anonymous unless ``auth``."""
    request = urllib.request.Request(f"{stack.mlflow_url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", _basic(*auth))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_dag_run_through_the_rest_api_on_celery_registers_a_model(stack):
    conf = {"epochs": 4, "max_batches": 1}
    status, run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns",
                            {"dag_run_id": "api-triggered", "logical_date": datetime.now(UTC).isoformat(),
                             "conf": conf})
    assert status in (200, 201), run
    assert run["conf"] == conf
    started = time.monotonic()
    ended = stack.wait_for_run("api-triggered", RUN_TIMEOUT_S)
    assert ended["state"] == "success", (ended["task_states"], stack.task_logs("api-triggered"))
    print(f"[native] DAG run on Celery: {time.monotonic() - started:.0f}s")
    # the tasks ran on the Celery workers (their logs name them), not in-process
    assert "listing_classifier_retraining" in "".join(stack.tail(w, 1_000_000) for w in WORKERS)

    client = _mlflow(stack)
    versions = [v for v in client.search_model_versions("name = 'listing-classifier'")
                if v.tags.get("airflow_run_id") == "api-triggered"]
    assert len(versions) == 1
    version = versions[0]
    assert client.get_run(version.run_id).data.tags["dag_id"] == DAG_ID
    assert version.tags["decision"] == "promoted"  # the first model: floors at 0 are enough
    # promoted by the tasks' own account on a basic-auth server ...
    assert client.get_model_version_by_alias("listing-classifier", "champion").version == version.version
    # ... where nobody else may move the champion: anonymous 401, a reviewer (READ) 403
    alias = {"name": "listing-classifier", "alias": "champion", "version": version.version}
    assert _mlflow_status(stack, "POST", "/api/2.0/mlflow/registered-models/alias", alias) == 401
    assert _mlflow_status(stack, "POST", "/api/2.0/mlflow/registered-models/alias", alias, REVIEWER) == 403
    assert _mlflow_status(stack, "GET", "/api/2.0/mlflow/registered-models/get?name=listing-classifier") == 401
    assert _mlflow_status(stack, "GET", "/api/2.0/mlflow/registered-models/get?name=listing-classifier",
                          auth=REVIEWER) == 200
    run_params = client.get_run(version.run_id).data.params
    assert run_params.get("train.epochs") == "4", {k: v for k, v in run_params.items() if "epoch" in k}
    # artifacts went through the server to S3 (moto), not to a local folder
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="listing-classifier", Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("MLmodel") for k in keys), keys[:20]

    # the gate task's log, as the UI shows it (read back through the REST API): the decision
    status, log = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/api-triggered/taskInstances/gate/logs/1")
    assert status == 200, log
    text = json.dumps(log)
    assert "[gate] promoted v" in text, text[-2000:]
    # lineage on the run page: its datasets and a training curve with one point per epoch
    run = client.get_run(version.run_id)
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"train", "val", "golden"}
    assert [m.step for m in client.get_metric_history(version.run_id, "epoch_train_loss")] == [0, 1, 2, 3]

    # operator extra links: api-server paths, resolved to the MLflow UI when opened
    status, links = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/api-triggered/taskInstances/register/links")
    assert status == 200, links
    register_links = links["extra_links"]
    assert register_links["MLflow run"] == f"/lcp/mlflow/runs/{version.run_id}"
    assert register_links["MLflow model version"] == f"/lcp/mlflow/models/listing-classifier/versions/{version.version}"
    status, links = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/api-triggered/taskInstances/promote/links")
    assert status == 200, links
    assert links["extra_links"]["MLflow champion"] == register_links["MLflow model version"]
    version_page = f"{stack.mlflow_url}/#/models/listing-classifier/versions/{version.version}"
    for link in [*register_links.values(), *links["extra_links"].values()]:
        # behind Airflow's login, as every plugin endpoint: anonymous 401, never the redirect
        assert _redirect(f"{stack.airflow_url}{link}") == 401, link
        location = _redirect(f"{stack.airflow_url}{link}", stack.token())
        assert location in (version_page, f"{stack.mlflow_url}/#/runs/{version.run_id}"), location
        request = urllib.request.Request(location, headers={"Authorization": _basic(*REVIEWER)})
        with urllib.request.urlopen(request, timeout=30) as page:  # the MLflow UI answers a reviewer
            assert page.status == 200

    # every link in the version description: MLflow-relative ones (#/...) and the Data Docs on
    # the Airflow UI, which answer a reviewer (MLflow login) and a logged-in Airflow user
    description = client.get_model_version("listing-classifier", version.version).description
    links = re.findall(r"\]\(([^)\s]+)\)", description)
    assert any(link.startswith("#/experiments/") for link in links), links
    assert any("/data-docs/" in link for link in links), links
    for link in links:
        if link.startswith("#/"):
            # the MLflow app routes the fragment in the browser: the page is the UI at "/", and
            # the run or experiment it names must exist for the reviewer
            url, auth = f"{stack.mlflow_url}/", _basic(*REVIEWER)
            run_id_in_link = re.search(r"/runs/([0-9a-f]{32})", link)
            if run_id_in_link:
                assert _mlflow_status(stack, "GET", f"/api/2.0/mlflow/runs/get?run_id={run_id_in_link[1]}",
                                      auth=REVIEWER) == 200, link
        else:
            assert link.startswith(stack.airflow_url), link
            url, auth = link, f"Bearer {stack.token()}"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": auth}),
                                    timeout=30) as page:
            assert page.status == 200, link

    # week 2, through the REST API as well (the UI's run below takes week 3)
    status, run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns",
                            {"dag_run_id": "api-week-2", "logical_date": datetime.now(UTC).isoformat(),
                             "conf": conf})
    assert status in (200, 201), run
    ended = stack.wait_for_run("api-week-2", RUN_TIMEOUT_S)
    assert ended["state"] == "success", (ended["task_states"], stack.task_logs("api-week-2"))

    # the image checks were mapped over the batches' shards (SHARD rows each) and the two
    # workers shared them: each worker's own log names the mapped task instances it executed
    ran = {w: set(re.findall(r"task_id='check_images'.*?run_id='([^']+)'.*?map_index=(-?\d+)",
                             stack.tail(w, 10_000_000))) for w in WORKERS}
    for run_id in ("api-triggered", "api-week-2"):
        status, mapped = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/check_images/listMapped")
        assert status == 200, mapped
        indexes = {str(ti["map_index"]) for ti in mapped["task_instances"]}
        assert len(indexes) >= 2 and all(ti["state"] == "success" for ti in mapped["task_instances"]), mapped
        assert all(ti["rendered_map_index"].startswith("fashion-") for ti in mapped["task_instances"]), mapped
        executed = {w: {i for r, i in ran[w] if r == run_id} for w in WORKERS}
        assert set().union(*executed.values()) == indexes, (run_id, executed, indexes)
    assert all(ran[w] for w in WORKERS), {w: sorted(ran[w]) for w in WORKERS}  # both workers took some
    print(f"[native] mapped check_images per worker: { {w: len(ran[w]) for w in WORKERS} }")


def _redirect(url: str, token: str | None = None) -> str | int:
    """The Location of a redirect answer (not followed), or the status of a 401/403 answer."""
    class NoFollow(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        urllib.request.build_opener(NoFollow).open(request, timeout=30)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return exc.code
        assert exc.code == 307, (url, exc.code)
        return exc.headers["Location"]
    raise AssertionError(f"{url} did not redirect")


def _shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SCREENSHOTS / path.name)


def _logged_in_page(pw, stack: NativeStack):
    """Debian's Chromium, headless, logged in to the Airflow UI as admin (the simple auth
    manager's form); the MLflow UI's basic-auth login is the reviewer's, sent to MLflow's origin
    only. Returns ``(browser, page)``; close the browser when done."""
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000},
                            http_credentials={"username": REVIEWER[0], "password": REVIEWER[1],
                                              "origin": stack.mlflow_url})
    page.set_default_timeout(60_000)
    try:
        page.goto(f"{stack.airflow_url}/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(stack.admin_password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url)
    except Exception:
        browser.close()
        raise
    return browser, page


def test_airflow_and_mlflow_uis_in_headless_chromium(stack, tmp_path):
    """Log in, trigger through the Params form with a changed value, see success; then MLflow."""
    if not CHROMIUM.exists():
        skip_unless_ci(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    before = {r["dag_run_id"] for r in stack.api("GET", f"/dags/{DAG_ID}/dagRuns")[1]["dag_runs"]}

    with sync_api.sync_playwright() as pw:
        browser, page = _logged_in_page(pw, stack)
        try:
            _shot(page, tmp_path, "01-airflow-home")

            page.goto(f"{stack.airflow_url}/dags/{DAG_ID}")
            page.get_by_text(DAG_ID).first.wait_for()
            _shot(page, tmp_path, "02-dag")

            # the trigger form (Airflow Params): change `epochs` to 3
            page.get_by_role("button", name="Trigger").first.click()
            dialog = page.get_by_role("dialog")
            dialog.wait_for()
            # the form field of Param `epochs` (Airflow renders it as element_<param name>)
            epochs = dialog.locator("[id='number-input:element_epochs'] input").first
            if not epochs.is_visible():  # the Run Parameters section starts collapsed
                dialog.get_by_role("button", name="Run Parameters").click()
            epochs.fill("3")
            _shot(page, tmp_path, "03-trigger-form")
            dialog.get_by_role("button", name="Trigger").last.click()

            def new_run():
                runs = stack.api("GET", f"/dags/{DAG_ID}/dagRuns")[1]["dag_runs"]
                return next((r for r in runs if r["dag_run_id"] not in before), None)

            run = stack.wait_for("the run triggered from the UI", new_run, 60)
            assert run["conf"].get("epochs") == 3, run["conf"]
            ended = stack.wait_for_run(run["dag_run_id"], RUN_TIMEOUT_S)
            assert ended["state"] == "success", (ended["task_states"], stack.task_logs(run["dag_run_id"]))
            page.goto(f"{stack.airflow_url}/dags/{DAG_ID}/runs/{run['dag_run_id']}")
            page.get_by_text("success").first.wait_for()
            _shot(page, tmp_path, "04-run-success")

            # MLflow: the registered model, alias champion, and the decision tags of a version
            page.goto(f"{stack.mlflow_url}/#/models/listing-classifier")
            page.get_by_text("listing-classifier").first.wait_for()
            page.get_by_text("champion").first.wait_for()
            _shot(page, tmp_path, "05-mlflow-model")
            champion = _mlflow(stack).get_model_version_by_alias("listing-classifier", "champion")
            page.goto(f"{stack.mlflow_url}/#/models/listing-classifier/versions/{champion.version}")
            for tag in ("decision", "candidate_score", "reason"):
                page.get_by_text(tag, exact=True).first.wait_for()
            page.get_by_text("promoted").first.wait_for()
            _shot(page, tmp_path, "06-mlflow-version-tags")
            run_id = champion.run_id
            experiment = _mlflow(stack).get_run(run_id).info.experiment_id
            page.goto(f"{stack.mlflow_url}/#/experiments/{experiment}/runs/{run_id}")
            page.get_by_text("golden").first.wait_for()  # for the screenshot: its Datasets panel
            _shot(page, tmp_path, "07-mlflow-run-datasets")

            # Data Docs with the network unreachable: only this machine's addresses answer
            def offline(route):
                host = route.request.url.split("/")[2].split(":")[0]
                return route.continue_() if host in ("127.0.0.1", "localhost") else route.abort()

            page.context.route("**/*", offline)
            page.goto(f"{stack.airflow_url}/data-docs/index.html")
            page.get_by_role("cell", name="listings_batch").first.wait_for()  # built by bootstrap-table
            _shot(page, tmp_path, "08-data-docs-offline")
            page.context.unroute("**/*")
        except Exception:
            _shot(page, tmp_path, "zz-failure")
            raise
        finally:
            browser.close()


def _our_events(log: dict) -> list[str]:
    """The events of a task log (REST API ``.../logs/1``) logged by the platform's own loggers."""
    events = []
    for entry in log.get("content", []):
        if isinstance(entry, dict) and str(entry.get("logger", "")).split(".")[0] in OUR_LOGGERS:
            events.append(str(entry.get("event", "")))
    return events


def test_a_reviewer_after_three_weeks(stack, tmp_path):
    """After three weekly runs (two through the REST API, one from the UI): every version's
    description ends with its last lineage row; no MLflow run of ours is left "Running"; the Data
    Docs index shows the platform's decision of each batch, never GX's "Failed" for an accepted
    one; each gate log's first line of ours is the decision, and the return value is not logged.
    Screenshots of each in tests/output/browser."""
    if not CHROMIUM.exists():
        skip_unless_ci(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from mlflow.entities import ViewType

    runs = [r for r in stack.api("GET", f"/dags/{DAG_ID}/dagRuns")[1]["dag_runs"] if r["state"] == "success"]
    assert len(runs) >= WEEKS, [(r["dag_run_id"], r["state"]) for r in runs]

    # the gate's log, as the UI reads it: the decision first, no return value dumped after it
    for run in runs:
        status, log = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/gate/logs/1")
        assert status == 200, log
        ours = _our_events(log)
        assert ours and ours[0].startswith(("[gate] promoted v", "[gate] rejected v", "[gate] unchanged")), ours[:3]
        assert "Returned value was" not in json.dumps(log)

    client = _mlflow(stack)
    versions = client.search_model_versions("name = 'listing-classifier'")
    assert len(versions) >= WEEKS, [v.version for v in versions]
    for version in versions:
        last = version.description.rstrip().splitlines()[-1]
        assert last.startswith("| the Airflow run that trained it |"), (version.version, last)
        assert len(version.description) <= 5000
    experiments = client.search_experiments(view_type=ViewType.ALL)
    running = client.search_runs([e.experiment_id for e in experiments], "attributes.status = 'RUNNING'",
                                 run_view_type=ViewType.ALL)
    assert not running, [(r.info.run_name, r.data.tags.get("kind")) for r in running]

    with sync_api.sync_playwright() as pw:
        browser, page = _logged_in_page(pw, stack)
        try:
            newest = max(versions, key=lambda v: int(v.version))
            page.goto(f"{stack.mlflow_url}/#/models/listing-classifier/versions/{newest.version}")
            page.get_by_text("the Airflow run that trained it").first.wait_for()  # the description's end
            _shot(page, tmp_path, "09-reviewer-version-description")

            info = client.get_run(newest.run_id).info
            page.goto(f"{stack.mlflow_url}/#/experiments/{info.experiment_id}")
            # the runs table (none of ours running): the newest run's link is there (its cell may be
            # scrolled out of the table's view, so attached rather than visible)
            page.locator(f"a[href*='{newest.run_id}']").first.wait_for(state="attached")
            _shot(page, tmp_path, "10-reviewer-experiment-runs")

            page.goto(f"{stack.airflow_url}/data-docs/index.html")
            page.get_by_role("cell", name="listings_batch").first.wait_for()
            decided = page.locator(".lcp-accepted-icon, .lcp-partial-icon, .lcp-quarantined-icon")
            assert decided.count() >= WEEKS, page.content()[-3000:]
            status_cells = page.locator("td").filter(has_text="Failed")
            assert status_cells.count() == 0, status_cells.all_inner_texts()
            _shot(page, tmp_path, "11-reviewer-data-docs-statuses")

            gate_of = runs[-1]["dag_run_id"]
            page.goto(f"{stack.airflow_url}/dags/{DAG_ID}/runs/{gate_of}/tasks/gate")
            page.get_by_text("[gate] ").first.wait_for(state="attached")  # the log view, as the API read it
            _shot(page, tmp_path, "12-reviewer-gate-log")
        except Exception:
            _shot(page, tmp_path, "zz-reviewer-failure")
            raise
        finally:
            browser.close()
