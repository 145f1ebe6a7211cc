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

import hashlib
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


_REFUSING_CODES = {"403", "404", "AccessDenied", "NoSuchKey", "InvalidObjectState"}
"""S3 error codes that will not go away on a retry: the object is refused, not the copy retried."""


class FeedError(RuntimeError):
    """A feed cannot be read (its folder or prefix cannot be listed): the ingest task fails."""


class BatchRefused(FeedError):
    """The feed holds one batch the platform refuses to copy (a link, an unreadable file, a key
    that leaves the batch folder, an unsafe or undated name).

    Ingest quarantines that batch with the reason and carries on with the next ones; the batch
    is tried again only once its content changes (:meth:`FeedSource.fingerprint`).

    Attributes:
        reason: short code for the report (``batch_holds_link``, ``batch_file_unreadable``,
            ``batch_key_outside_folder``, ``batch_name_invalid``, ``batch_name_undated``).
        detail: what was refused, in words.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


def check_batch_id(batch_id: str) -> str:
    """Returns ``batch_id`` if it is a safe folder name, else raises :class:`BatchRefused`
    (``batch_name_invalid``)."""
    if not BATCH_ID.match(batch_id) or ".." in batch_id:
        raise BatchRefused("batch_name_invalid",
                           f"batch folder {batch_id[:200]!r} is not a plain folder name (letters, "
                           "digits, '.', '_', '-'; at most 128 characters)")
    return batch_id


def is_hidden(name: str) -> bool:
    """Entries named ``.x`` or ``_x`` are not batches: a batch being published (``.b.tmp``), the
    taxonomy (``_taxonomy.json``), a feed's own bookkeeping. They are skipped, not refused."""
    return name.startswith((".", "_"))


class FeedSource(Protocol):
    """What ingest needs of a feed."""

    url: str

    def list_batches(self) -> list[str]:
        """Names of the batch folders in the feed, sorted; hidden ones (:func:`is_hidden`) left
        out. Names are not checked here: ingest refuses unsafe or undated ones.

        Raises:
            FeedError: when the feed cannot be listed.
        """
        ...

    def download_batch(self, batch_id: str, dest: Path) -> int:
        """Copies every file of a batch below ``dest``; returns the number of files.

        Files already in ``dest`` with the source's size are kept (a resumed copy); each new
        file appears atomically (``.part`` + rename).

        Raises:
            BatchRefused: the batch holds something refused (a link, an unreadable file, a key
                leaving the batch folder).
        """
        ...

    def fingerprint(self, batch_id: str) -> str:
        """A digest of the batch's content as the feed holds it now (hex SHA-256).

        Two listings of an unchanged batch give the same digest; a re-publication with other
        content gives another. Local feeds hash each file's path, size and bytes; S3 feeds each
        key, size and ETag.
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
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            raise FeedError(f"feed folder {self.root} cannot be listed: {exc}") from exc
        return sorted(e.name for e in entries if not is_hidden(e.name) and e.is_dir(follow_symlinks=False))

    def _files(self, batch_id: str) -> list[Path]:
        """The batch's files in sorted order; refuses links and anything but files and folders."""
        src = self.root / check_batch_id(batch_id)
        files = []
        try:
            paths = sorted(src.rglob("*"))
        except OSError as exc:
            raise BatchRefused("batch_file_unreadable", f"batch {batch_id}: {exc}") from exc
        for path in paths:
            rel = path.relative_to(src)
            if path.is_symlink():
                raise BatchRefused("batch_holds_link",
                                   f"batch {batch_id} holds a symbolic link {rel}; refused")
            if path.is_file():
                files.append(path)
            elif not path.is_dir():
                raise BatchRefused("batch_file_unreadable",
                                   f"batch {batch_id}: {rel} is not a regular file")
        return files

    def download_batch(self, batch_id: str, dest: Path) -> int:
        src = self.root / check_batch_id(batch_id)
        files = self._files(batch_id)
        for path in files:
            target = dest / path.relative_to(src)
            if not (target.is_file() and target.stat().st_size == path.stat().st_size):
                try:
                    _atomic_fetch(target, lambda part, path=path: shutil.copyfile(path, part))
                except PermissionError as exc:  # a file the feed will never let us read
                    raise BatchRefused("batch_file_unreadable",
                                       f"batch {batch_id}: {path.relative_to(src)}: {exc.strerror}") from exc
        return len(files)

    def fingerprint(self, batch_id: str) -> str:
        src = self.root / batch_id
        digest = hashlib.sha256()
        try:
            paths = sorted(src.rglob("*"))
        except OSError as exc:  # a folder that cannot be listed: its error is its content
            return hashlib.sha256(f"unlistable {exc.errno}".encode()).hexdigest()
        for path in paths:
            rel = path.relative_to(src).as_posix()
            if path.is_symlink():
                digest.update(f"L {rel} {os.readlink(path)}\n".encode("utf-8", "surrogateescape"))
            elif path.is_file():
                try:
                    with open(path, "rb") as fh:
                        content = hashlib.file_digest(fh, "sha256").hexdigest()
                except OSError as exc:
                    content = f"unreadable {exc.errno}"
                digest.update(f"F {rel} {path.stat().st_size} {content}\n".encode("utf-8", "surrogateescape"))
            elif not path.is_dir():  # a FIFO, a socket, a device: refused, but part of the content
                digest.update(f"O {rel}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

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
                if name and not is_hidden(name):
                    names.add(name)
        return sorted(names)

    def _objects(self, batch_id: str):
        prefix = self._key(batch_id) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if rel and not rel.endswith("/"):
                    yield rel, obj

    def fingerprint(self, batch_id: str) -> str:
        digest = hashlib.sha256()
        for rel, obj in sorted(self._objects(batch_id), key=lambda item: item[0]):
            digest.update(f"{rel} {obj['Size']} {obj.get('ETag', '')}\n".encode())
        return digest.hexdigest()

    def download_batch(self, batch_id: str, dest: Path) -> int:
        from botocore.exceptions import ClientError

        check_batch_id(batch_id)
        count = 0
        dest_root = dest.resolve()
        for rel, obj in self._objects(batch_id):
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest_root) or target == dest_root:
                raise BatchRefused("batch_key_outside_folder",
                                   f"object key {obj['Key']!r} escapes the batch folder; refused")
            if not (target.is_file() and target.stat().st_size == obj["Size"]):
                try:
                    _atomic_fetch(target, lambda part, key=obj["Key"]: self.client.download_file(
                        self.bucket, key, str(part)))
                except ClientError as exc:
                    code = str(exc.response.get("Error", {}).get("Code", ""))
                    if code not in _REFUSING_CODES:
                        raise  # throttling, a server error: the task's retry fetches it
                    raise BatchRefused("batch_file_unreadable",
                                       f"batch {batch_id}: {rel}: S3 answered {code}") from exc
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
