"""The DVC remote on S3 (dvc-s3) against a moto server: push, credentials, pull back.

A moto S3 server runs on 127.0.0.1 with IAM authentication switched on (moto's
``/moto-api/reset-auth``), so a request signed with a wrong key is refused the way AWS refuses
it. A tiny listings store of real fashion listings is versioned through the real
:func:`ingestion.versioning.version_data` with ``LCP_DVC_REMOTE_URL=s3://...`` and the
endpoint in ``LCP_DVC_S3_ENDPOINT_URL``; credentials are only in the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from common.catalog import CANONICAL_COLUMNS, PATH_SEP
from common.params import Params
from common.state import State
from common.store import batch_file, image_key, image_path, partition_dir, replace_partition

pytestmark = pytest.mark.integration

BUCKET = "lcp-dvc"
PREFIX = "remote/listing-classifier"
CLASSES = 4
PER_CLASS = 5
BATCH = "fashion-2026-11-02"
# Environment variables that could hand DVC (boto3) credentials other than the test's own.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")


def tiny_store(fashion_dir: Path, store: Path) -> pd.DataFrame:
    """Writes a listings store of ``CLASSES * PER_CLASS`` real fashion listings, one batch.

    The partition is written with :func:`common.store.replace_partition` in the store's own
    layout (``image_key`` from :func:`common.store.image_key`), as validation writes it.

    Args:
        fashion_dir: the real catalog (``styles.csv`` + ``images/``).
        store: the ``data/listings`` folder to write.

    Returns:
        The listings written (canonical columns).
    """
    styles = pd.read_csv(fashion_dir / "styles.csv", on_bad_lines="skip")
    styles = styles[[(fashion_dir / "images" / f"{i}.jpg").exists() for i in styles["id"]]]
    top = styles["articleType"].value_counts().index[:CLASSES]
    picked = (styles[styles["articleType"].isin(top)].sort_values("id")
              .groupby("articleType", group_keys=False).head(PER_CLASS))
    rows, images = [], {}
    for r in picked.itertuples():
        data = (fashion_dir / "images" / f"{r.id}.jpg").read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        key = image_key(BATCH, sha, ".jpg")
        images[key] = data
        rows.append({
            "listing_id": str(r.id), "title": str(r.productDisplayName), "description": None,
            "brand": None, "price": 999.0, "currency": "INR", "attributes": None,
            "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, r.articleType]),
            "image_key": key, "image_sha256": sha, "catalog": "fashion", "batch_id": BATCH,
            "ingested_at": pd.Timestamp("2026-11-02", tz="UTC"),
        })
    frame = pd.DataFrame(rows)[list(CANONICAL_COLUMNS)]

    def build(folder: Path) -> None:
        """Fills the temporary folder that becomes the partition (paths relative to it)."""
        final = partition_dir(store, BATCH)
        for key, data in images.items():
            target = folder / image_path(store, key).relative_to(final)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        frame.to_parquet(folder / batch_file(store, BATCH).relative_to(final), index=False)

    replace_partition(store, BATCH, build)
    return frame


def tree_digest(folder: Path) -> dict[str, str]:
    """``{relative path: sha256 of the bytes}`` of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dvc(ws: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs ``python -m dvc`` in the workspace with the current environment (no check)."""
    env = {**os.environ, "PYTHONPATH": str(ws), "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with IAM auth on, a bucket and a user allowed on it.

    Yields:
        ``{"endpoint", "admin" (boto3 client, moto's root keys), "key_id", "secret"}``: the
        user's real access key, the only credentials moto accepts once auth is on.
    """
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        def client(service: str, key_id: str = "admin", secret: str = "admin"):
            return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                                aws_access_key_id=key_id, aws_secret_access_key=secret)

        admin = client("s3")
        admin.create_bucket(Bucket=BUCKET)
        iam = client("iam")
        iam.create_user(UserName="dvc-pusher")
        iam.put_user_policy(UserName="dvc-pusher", PolicyName="dvc-remote", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*",
                           "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
        key = iam.create_access_key(UserName="dvc-pusher")["AccessKey"]
        # from here on every request must be signed by a known key (0 unauthenticated actions left)
        reset = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10)
        assert reset.status_code == 200, reset.text
        # the listing test (below) reads the bucket as this user, proving auth is really on
        user = client("s3", key["AccessKeyId"], key["SecretAccessKey"])
        yield {"endpoint": endpoint, "admin": user, "key_id": key["AccessKeyId"],
               "secret": key["SecretAccessKey"]}
    finally:
        # moto's auth switch is process-wide (the server runs in this process): switch it back off
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        server.stop()


def _s3_env(monkeypatch, tmp_path: Path, endpoint: str, key_id: str | None, secret: str | None,
            prefix: str) -> None:
    """Points the DVC remote at ``s3://BUCKET/prefix`` on moto, credentials (if any) in the env only."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    # no ~/.aws files and no instance metadata either: only the environment below can authenticate
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if key_id is not None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    if secret is not None:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("LCP_DVC_REMOTE_URL", f"s3://{BUCKET}/{prefix}")
    monkeypatch.setenv("LCP_DVC_S3_ENDPOINT_URL", endpoint)


def _params() -> Params:
    return Params().with_overrides({"prepare": {"golden_fraction": 0.2, "golden_min_listings": 2}})


@pytest.fixture(scope="module")
def versioned(s3, fashion_dir, tmp_path_factory):
    """The tiny store versioned through ``version_data`` to the S3 remote.

    Yields:
        ``{"state", "result" (version_data's), "listings" and "golden" (tree digests before the
        push), "tmp"}``.
    """
    from ingestion.versioning import version_data

    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("dvc-s3")
    try:
        _s3_env(mp, tmp, s3["endpoint"], s3["key_id"], s3["secret"], PREFIX)
        state = State(tmp / "state").ensure()
        tiny_store(fashion_dir, state.listings_store)
        result = version_data(state, _params(), note="s3-remote-test")
        yield {"state": state, "result": result, "tmp": tmp,
               "listings": tree_digest(state.listings_store), "golden": tree_digest(state.golden_dir)}
    finally:
        mp.undo()


def test_version_data_pushes_to_s3_in_dvc_layout(s3, versioned):
    """Every file of the store and the golden set, and every directory manifest (one a partition,
    the golden set's), are objects in the bucket at ``<prefix>/files/md5/<2 hex>/<30 hex>``
    (DVC 3's content-addressed layout)."""
    from ingestion.workspace import partition_pointers

    result, state = versioned["result"], versioned["state"]
    assert result.remote == f"s3://{BUCKET}/{PREFIX}"
    partitions = partition_pointers(state.workspace)
    assert partitions and all(md5.endswith(".dir") for md5 in partitions.values())
    assert result.golden_rev.endswith(".dir")
    pages = s3["admin"].get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}

    def key(md5: str) -> str:
        return f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"

    expected = {key(result.golden_rev), *(key(md5) for md5 in partitions.values())}
    for folder in (state.listings_store, state.golden_dir):
        # the data, not git's files beside the partitions (their .dvc pointers, .gitignore)
        for path in (p for p in folder.rglob("*") if p.is_file() and p.parent.name != "batches"):
            expected.add(key(hashlib.md5(path.read_bytes()).hexdigest()))
    assert len(expected) > CLASSES * PER_CLASS  # the images, the parquet files, the manifests
    assert expected <= keys, sorted(expected - keys)[:5]
    # the object bytes are the file bytes (content-addressed: md5 of the body is the key)
    image = next(state.listings_store.rglob("*.jpg"))
    body = s3["admin"].get_object(Bucket=BUCKET, Key=key(hashlib.md5(image.read_bytes()).hexdigest()))["Body"]
    assert body.read() == image.read_bytes()


def test_no_credentials_in_the_workspace_config_or_history(s3, versioned):
    """``.dvc/config`` names the bucket and endpoint only; no key anywhere in the workspace's git."""
    ws = versioned["state"].workspace
    config = (ws / ".dvc" / "config").read_text()
    assert f"url = s3://{BUCKET}/{PREFIX}" in config and f"endpointurl = {s3['endpoint']}" in config
    for option in ("access_key_id", "secret_access_key", "session_token", "credentialpath", "profile"):
        assert option not in config, config
    for secret in (s3["key_id"], s3["secret"]):
        assert secret not in config
        history = subprocess.run(["git", "log", "-p", "--all"], cwd=ws, capture_output=True, text=True,
                                 check=True).stdout
        assert secret not in history
        assert not (ws / ".dvc" / "config.local").exists() or secret not in (ws / ".dvc" / "config.local").read_text()


def _pointers(ws: Path) -> list[str]:
    """The ``.dvc`` pointers of the store's partitions and of the golden set."""
    return [*sorted(p.relative_to(ws).as_posix() for p in (ws / "data/listings/batches").glob("*.dvc")),
            "data/golden.dvc"]


def test_data_comes_back_from_s3_after_the_cache_is_gone(s3, versioned, monkeypatch):
    """Local cache and data deleted: ``dvc pull`` (credentials from the environment) restores
    byte-identical files, in the workspace and in a fresh clone of its committed revision."""
    state, tmp = versioned["state"], versioned["tmp"]
    ws = state.workspace
    _s3_env(monkeypatch, tmp, s3["endpoint"], s3["key_id"], s3["secret"], PREFIX)
    shutil.rmtree(ws / ".dvc" / "cache")
    # the data, not the pointers beside the partition folders (git's)
    partitions = [p for p in (state.listings_store / "batches").iterdir() if p.is_dir()]
    assert partitions
    for folder in partitions:
        shutil.rmtree(folder)
    shutil.rmtree(state.golden_dir)
    # the two tracked folders (dvc.yaml's stages have not run here: no outputs to pull)
    pulled = dvc(ws, "pull", *_pointers(ws))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert tree_digest(state.listings_store) == versioned["listings"]
    assert tree_digest(state.golden_dir) == versioned["golden"]

    # a fresh clone (another machine): only the committed .dvc/config and the env credentials
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ws), str(clone)], check=True)
    subprocess.run(["git", "checkout", "-q", versioned["result"].data_rev], cwd=clone, check=True)
    pulled = dvc(clone, "pull", *_pointers(clone))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert tree_digest(clone / "data" / "listings") == versioned["listings"]
    assert tree_digest(clone / "data" / "golden") == versioned["golden"]


WRONG = {
    "secret": "the user's key id with a wrong secret (S3: signature does not match)",
    "key_id": "an access key id S3 does not know",
    "missing": "no credentials in the environment at all",
}


@pytest.fixture(scope="module", params=sorted(WRONG))
def wrong_push(request, s3, fashion_dir, tmp_path_factory):
    """``version_data`` run once per kind of wrong credential against the authenticating server.

    Returns:
        ``{"kind", "prefix", "error" (the VersioningError, or None if none was raised)}``.
    """
    from ingestion.versioning import VersioningError, version_data

    kind = request.param
    prefix = f"wrong-{kind}"
    tmp = tmp_path_factory.mktemp(f"dvc-s3-wrong-{kind}")
    mp = pytest.MonkeyPatch()
    try:
        key_id = None if kind == "missing" else ("AKIAUNKNOWNKEY000000" if kind == "key_id" else s3["key_id"])
        secret = None if kind == "missing" else ("not-the-secret" if kind == "secret" else s3["secret"])
        _s3_env(mp, tmp, s3["endpoint"], key_id, secret, prefix)
        state = State(tmp / "state").ensure()
        tiny_store(fashion_dir, state.listings_store)
        try:
            version_data(state, _params(), note="wrong credentials")
            error = None
        except VersioningError as exc:
            error = exc
        return {"kind": kind, "prefix": prefix, "error": error}
    finally:
        mp.undo()


def test_a_wrong_credential_fails_the_push_and_nothing_lands(s3, wrong_push):
    """Wrong secret, unknown key id or no credentials: ``version_data`` raises
    ``VersioningError`` naming the failed ``dvc push`` and its workspace, and the bucket holds
    nothing under that remote's prefix."""
    error = wrong_push["error"]
    assert error is not None, f"version_data pushed with {WRONG[wrong_push['kind']]}"
    assert "-m dvc push" in str(error) and "failed in" in str(error), str(error)[-2000:]
    listed = s3["admin"].list_objects_v2(Bucket=BUCKET, Prefix=f"{wrong_push['prefix']}/")
    assert listed.get("KeyCount", 0) == 0


def test_a_wrong_credential_error_says_why(wrong_push):
    """The error tells the operator it is about credentials: S3's 403 or botocore's
    'Unable to locate credentials', as DVC reports it without ``-q``."""
    message = str(wrong_push["error"])
    expected = ("Unable to locate credentials",) if wrong_push["kind"] == "missing" else ("403", "Forbidden")
    assert any(text in message for text in expected), message[-2000:]
