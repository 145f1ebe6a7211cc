"""Feed sources: where marketplaces drop their weekly batches.

One interface, two sources: a local folder and an S3 prefix (boto3). A feed holds one folder
(prefix) per batch, ``<feed>/<batch_id>/``, and the catalog's ``taxonomy.json`` at its root.
Credentials for S3 come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL`` ...) as boto3 reads them, or from an Airflow connection named by
``$LCP_FEED_CONN_ID`` (an ``aws`` connection: login = access key id, password = secret key,
extra ``endpoint_url``, ``region_name``, ``aws_session_token``), never from files in the repo.

Downloads resume: each file is written to ``<name>.part`` and renamed when complete, and a file
already present with the source's size is not fetched again, so a retry after an interrupted
copy only fetches what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Protocol

CONN_ENV = "LCP_FEED_CONN_ID"
"""Environment variable naming the Airflow connection that holds the S3 feed's credentials."""

PART = ".part"
"""Suffix of a file being downloaded; renamed away when the file is complete."""

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Allowed batch ids: a folder name with no path tricks (no ``/``, ``..`` prefix, spaces)."""


class FeedError(RuntimeError):
    """A feed cannot be read, or holds something that is not a batch."""


def check_batch_id(batch_id: str) -> str:
    """Returns ``batch_id`` if it is a safe folder name, else raises :class:`FeedError`."""
    if not BATCH_ID.match(batch_id) or ".." in batch_id:
        raise FeedError(f"refusing batch id {batch_id!r}: not a plain folder name")
    return batch_id


class FeedSource(Protocol):
    """What ingest needs of a feed."""

    url: str

    def list_batches(self) -> list[str]:
        """Batch ids in the feed, sorted."""
        ...

    def download_batch(self, batch_id: str, dest: Path) -> int:
        """Copies every file of a batch below ``dest``; returns the number of files.

        Files already in ``dest`` with the source's size are kept (a resumed copy); each new
        file appears atomically (``.part`` + rename).
        """
        ...

    def read_bytes(self, name: str) -> bytes:
        """A file at the feed root (e.g. ``taxonomy.json``)."""
        ...


class LocalFeed:
    """A feed in a local folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def list_batches(self) -> list[str]:
        if not self.root.is_dir():
            raise FeedError(f"feed folder {self.root} does not exist")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and BATCH_ID.match(p.name))

    def download_batch(self, batch_id: str, dest: Path) -> int:
        src = self.root / check_batch_id(batch_id)
        count = 0
        for path in sorted(src.rglob("*")):
            if path.is_symlink():
                raise FeedError(f"batch {batch_id} holds a symbolic link {path.relative_to(src)}; refused")
            if path.is_file():
                target = dest / path.relative_to(src)
                if not (target.is_file() and target.stat().st_size == path.stat().st_size):
                    _atomic_fetch(target, lambda part, path=path: shutil.copyfile(path, part))
                count += 1
        return count

    def read_bytes(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class S3Feed:
    """A feed under an S3 prefix, read with boto3 (endpoint and credentials from the environment)."""

    def __init__(self, url: str, client=None, conn_id: str | None = None):
        """Args:
            url: ``s3://bucket/prefix``.
            client: a boto3 S3 client; default one built from ``conn_id``, else from the
                environment.
            conn_id: an Airflow connection holding the credentials (see the module doc).

        Raises:
            FeedError: when ``url`` is not an S3 URL.
        """
        match = re.match(r"^s3://([^/]+)/?(.*)$", url)
        if not match:
            raise FeedError(f"not an S3 URL: {url!r}")
        self.url = url
        self.bucket = match.group(1)
        self.prefix = match.group(2).strip("/")
        if client is None:
            client = s3_client(conn_id)
        self.client = client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def list_batches(self) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        prefix = self._key("") + "/" if self.prefix else ""
        names: set[str] = set()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix):].rstrip("/")
                if BATCH_ID.match(name):
                    names.add(name)
        return sorted(names)

    def download_batch(self, batch_id: str, dest: Path) -> int:
        prefix = self._key(check_batch_id(batch_id)) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        count = 0
        dest_root = dest.resolve()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                target = (dest / rel).resolve()
                if not target.is_relative_to(dest_root):
                    raise FeedError(f"object key {obj['Key']!r} escapes the batch folder; refused")
                if not (target.is_file() and target.stat().st_size == obj["Size"]):
                    _atomic_fetch(target, lambda part, key=obj["Key"]: self.client.download_file(
                        self.bucket, key, str(part)))
                count += 1
        return count

    def read_bytes(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()


def _atomic_fetch(target: Path, fetch) -> None:
    """Calls ``fetch(part_path)`` then renames the part onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART)
    fetch(part)
    os.replace(part, target)


def s3_client(conn_id: str | None = None):
    """A boto3 S3 client: from the Airflow connection ``conn_id`` (else ``$LCP_FEED_CONN_ID``)
    when one is named, else from the environment as boto3 reads it.

    Raises:
        airflow.exceptions.AirflowNotFoundException: when the named connection does not exist.
    """
    import boto3

    conn_id = conn_id or os.environ.get(CONN_ENV)
    if not conn_id:
        return boto3.client("s3")
    from airflow.sdk import BaseHook  # only when a connection is asked for: Airflow is heavy

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}
    session = boto3.session.Session(
        aws_access_key_id=conn.login or None, aws_secret_access_key=conn.password or None,
        aws_session_token=extra.get("aws_session_token"), region_name=extra.get("region_name"))
    return session.client("s3", endpoint_url=extra.get("endpoint_url") or None)


def open_feed(url: str, conn_id: str | None = None) -> FeedSource:
    """A local folder path or an ``s3://bucket/prefix`` URL -> its feed source.

    Args:
        url: the feed.
        conn_id: Airflow connection with the S3 credentials (default ``$LCP_FEED_CONN_ID``;
            unset: the environment's credentials). Ignored for a local folder.
    """
    if url.startswith("s3://"):
        return S3Feed(url, conn_id=conn_id)
    return LocalFeed(url)
