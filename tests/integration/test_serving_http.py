"""The champion served over HTTP by ``mlflow models serve``, a real subprocess and real requests.

The session's tiny model (``tiny_trained``: ~300 real fashion listings) is registered in a copy
of its state with a registry of its own and given the alias ``champion``; ``mlflow models serve
-m models:/listing-classifier@champion --env-manager local`` then answers on a free port, with
``LCP_SERVING_IMAGE_ROOT`` set to the listings store. Good requests (images as paths under the
root, or as base64 bytes) get one prediction per listing; bad ones (an undecodable image, a path
outside the root, a missing ``title``) get HTTP 400 naming the row and the listing, and the
server keeps serving.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.servers import free_port, stop_process
from tests.integration.test_promotion_champion import copy_state
from tests.integration.test_promotion_registry import NAME, client_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STARTUP_S = 240
"""Most seconds for the server to answer ``/ping`` (loading torch and the model; the shared
2-core box is loaded)."""


def post(port: int, body: dict) -> tuple[int, dict]:
    """POSTs JSON to ``/invocations``; (HTTP status, decoded JSON answer)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def server(tiny_trained, tmp_path_factory):
    """The registered champion served on a free port; yields ``{"port", "golden", "store"}``."""
    from promotion.register import register_challenger
    from promotion.registry import golden_frame

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    state = copy_state(tiny_trained["state"], tmp_path_factory.mktemp("serving") / "state")
    registered = register_challenger(state, tiny_trained["params"], tiny_trained["data"],
                                     tiny_trained["trained"].workspace_commit, "test_dag", "serve")
    client_for(state).set_registered_model_alias(NAME, "champion", registered.version)
    port = free_port()
    # the server execs `uvicorn` through bash: the venv's bin must be on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": state.tracking_uri,
           "LCP_SERVING_IMAGE_ROOT": str(state.listings_store)}
    log = (tmp_path_factory.mktemp("serving-log") / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert process.poll() is None, f"server exited: {open(log.name).read()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as ping:
                    if ping.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no /ping within {STARTUP_S} s: {open(log.name).read()[-3000:]}"
            time.sleep(1)
        yield {"port": port, "golden": golden_frame(state).head(6).reset_index(drop=True),
               "store": state.listings_store}
    finally:
        stop_process(process)
        log.close()


def records(golden, store, as_bytes: bool = False) -> list[dict]:
    """Golden listings as request records: ``image_path`` relative to the image root, or the
    encoded file as base64 ``image_bytes``."""
    rows = []
    for _, g in golden.iterrows():
        row = {"listing_id": str(g["listing_id"]), "title": g["title"]}
        if as_bytes:
            row["image_bytes"] = base64.b64encode(open(g["image_path"], "rb").read()).decode()
        else:
            row["image_path"] = os.path.relpath(g["image_path"], store)
        rows.append(row)
    return rows


def check_good(port: int, rows: list[dict]) -> list[dict]:
    status, answer = post(port, {"dataframe_records": rows})
    assert status == 200, answer
    predictions = answer["predictions"]
    assert len(predictions) == len(rows)
    for p in predictions:
        assert p["category_path"].count(" > ") == 2 and p["leaf"] == p["category_path"].split(" > ")[-1]
        assert 0.0 <= p["probability"] <= 1.0 and isinstance(p["auto"], bool)
    return predictions


def test_good_requests_by_path_and_by_bytes_agree(server):
    port, golden, store = server["port"], server["golden"], server["store"]
    by_path = check_good(port, records(golden, store))
    by_bytes = check_good(port, records(golden, store, as_bytes=True))
    assert [p["category_path"] for p in by_bytes] == [p["category_path"] for p in by_path]
    # dataframe_split with the batch_size param (in the signature's params schema) agrees too
    rows = records(golden, store)
    columns = list(rows[0])
    status, answer = post(port, {"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]},
                                 "params": {"batch_size": 2}})
    assert status == 200, answer
    assert [p["category_path"] for p in answer["predictions"]] == [p["category_path"] for p in by_path]
    status, answer = post(port, {"dataframe_records": rows, "params": {"batch_size": 0}})
    assert status == 400 and "batch_size must be a positive integer" in answer["message"]


@pytest.mark.parametrize("fault", ["undecodable_bytes", "outside_root", "missing_file"])
def test_a_bad_row_is_a_400_naming_it_and_the_server_keeps_serving(server, fault):
    port, golden, store = server["port"], server["golden"], server["store"]
    if fault == "undecodable_bytes":
        rows = records(golden, store, as_bytes=True)
        rows[2]["image_bytes"] = base64.b64encode(b"this is not an image").decode()
        expected = "cannot read its image (image_bytes of 20 bytes)"
    elif fault == "outside_root":
        rows = records(golden, store)
        rows[2]["image_path"] = "../../../etc/passwd"
        expected = "is outside the image root $LCP_SERVING_IMAGE_ROOT"
    else:
        rows = records(golden, store)
        rows[2]["image_path"] = "no/such/image.jpg"
        expected = "cannot read its image (image_path"
    status, answer = post(port, {"dataframe_records": rows})
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"row 2 (listing_id {rows[2]['listing_id']}): " in answer["message"]
    assert expected in answer["message"]
    check_good(port, records(golden, store))  # still serving


def test_a_missing_required_column_is_a_400(server):
    port, golden, store = server["port"], server["golden"], server["store"]
    rows = [{k: v for k, v in r.items() if k != "title"} for r in records(golden, store)]
    status, answer = post(port, {"dataframe_records": rows})
    assert status == 400, answer
    assert "title" in answer["message"]
    check_good(port, records(golden, store))
