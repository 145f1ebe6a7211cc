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
import stat
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Protocol

from common.batches import date_text
from common.files import NotRegularFileError, file_kind, open_regular

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
    """The feed holds one batch the platform refuses to copy (a link, a FIFO or device, a hard
    link to a file outside the feed, an unreadable file, a key that leaves the batch folder, an
    unsafe, undated or misdated name).

    Ingest quarantines that batch with the reason and carries on with the next ones; the batch
    is tried again only once its content changes (:meth:`FeedSource.fingerprint`).

    Attributes:
        reason: short code for the report (``batch_holds_link``, ``batch_holds_hard_link``,
            ``batch_not_a_folder``, ``batch_file_unreadable``, ``batch_key_outside_folder``,
            ``batch_name_invalid``, ``batch_name_undated``, ``batch_name_date_invalid``).
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
        out. Names are not checked here: ingest refuses unsafe or undated ones, and batches that
        are no folder (a local feed lists a link or a FIFO where a batch folder would stand).

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
        """A file at the feed root (e.g. ``taxonomy.json``).

        Raises:
            FeedError: when a local feed's file is no regular file of the feed's own (a link,
                a FIFO, a hard link to a file outside the feed).
        """
        ...


class LocalFeed:
    """A feed in a local folder, read without ever leaving it.

    Only folders and regular files are read, each checked with ``lstat`` where it is listed and
    opened with :func:`common.files.open_regular` (no symbolic link followed, no FIFO waited
    on); the folder tree is walked with :func:`os.fwalk` (folder descriptors, safe against a
    folder swapped for a link while it is walked) and every file opened is checked to be the one
    listed (device and inode). A batch is refused (:class:`BatchRefused`) when it, or anything
    in it, is a symbolic link (``batch_holds_link``), a FIFO, socket or device
    (``batch_file_unreadable``; ``batch_not_a_folder`` for the batch itself), or a file with a
    hard link outside the feed folder (``batch_holds_hard_link``).

    Hard links: a hard link is a regular file, and a partner may well link one image into two
    of its own batches (a re-publication) on its disk. What is refused is a file that also has
    a name *outside* the feed folder: it is a file of someone else's (``/etc/shadow``, the
    platform's own secrets) given a name in the feed, and copying it would read what the feed
    never held. A file whose ``st_nlink`` names are all found inside the feed folder is
    accepted. Staging always receives a copy of the bytes, never a link.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def list_batches(self) -> list[str]:
        """Names of the batch folders, and of everything else at the feed root that stands where
        a batch folder would (a symbolic link, a FIFO, a socket, a device, a regular file whose
        name ends with a batch date), so that ingest refuses it with a reason instead of
        passing it by. Other regular files are the feed's own (``taxonomy.json``)."""
        if not self.root.is_dir():
            raise FeedError(f"feed folder {self.root} does not exist")
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            raise FeedError(f"feed folder {self.root} cannot be listed: {exc}") from exc
        names = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            if entry.is_file(follow_symlinks=False) and date_text(entry.name) is None:
                continue  # a file of the feed's own, e.g. its taxonomy
            names.append(entry.name)
        return sorted(names)

    def _walk(self, batch_id: str) -> list[tuple[str, os.stat_result]]:
        """Every entry below a batch folder, ``(path relative to it, its lstat)``, sorted by
        path; links are listed, never followed.

        Raises:
            BatchRefused: ``batch_holds_link`` (the batch folder is a link), ``batch_not_a_folder``
                (it is a FIFO, socket, device or file), ``batch_file_unreadable`` (it or a
                folder in it cannot be listed).
        """
        src = self.root / check_batch_id(batch_id)
        try:
            top = os.lstat(src)
        except OSError as exc:
            raise BatchRefused("batch_file_unreadable", f"batch {batch_id}: {exc.strerror}") from exc
        if stat.S_ISLNK(top.st_mode):
            raise BatchRefused("batch_holds_link",
                               f"batch folder {batch_id} is a symbolic link (to "
                               f"{os.readlink(src)!r}), not a folder; refused: links are never followed")
        if not stat.S_ISDIR(top.st_mode):
            raise BatchRefused("batch_not_a_folder",
                               f"{batch_id} at the feed root is a {file_kind(top.st_mode)}, not a "
                               "batch folder; refused")

        def fail(exc: OSError) -> None:
            raise exc

        entries = []
        try:
            for folder, dirs, files, fd in os.fwalk(src, onerror=fail, follow_symlinks=False):
                rel_folder = Path(folder).relative_to(src)
                for name in dirs + files:
                    entries.append(((rel_folder / name).as_posix(),
                                    os.stat(name, dir_fd=fd, follow_symlinks=False)))
                # fwalk sorts a link to a folder into dirs: it is listed above, never entered
                dirs[:] = [d for d in dirs
                           if stat.S_ISDIR(os.stat(d, dir_fd=fd, follow_symlinks=False).st_mode)]
        except OSError as exc:
            raise BatchRefused("batch_file_unreadable", f"batch {batch_id}: {exc}") from exc
        return sorted(entries, key=lambda e: e[0])

    def _links_inside(self) -> Counter:
        """How many names each multiply-linked regular file has inside the feed folder, by
        ``(st_dev, st_ino)`` (links never followed)."""
        inside: Counter = Counter()
        for _, _, files, fd in os.fwalk(self.root, follow_symlinks=False):
            for name in files:
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    inside[st.st_dev, st.st_ino] += 1
        return inside

    def _outside_names(self, st: os.stat_result, inside: Counter | None) -> tuple[int, Counter | None]:
        """``(names of the file outside the feed folder, the feed's link count)``; the count is
        taken once, only when a file has more than one name."""
        if st.st_nlink <= 1:
            return 0, inside
        if inside is None:
            inside = self._links_inside()
        return max(st.st_nlink - inside[st.st_dev, st.st_ino], 0), inside

    def _files(self, batch_id: str) -> list[tuple[Path, str, os.stat_result]]:
        """The batch's regular files ``(path, relative path, lstat)`` in sorted order; refuses
        links, anything but files and folders, and files with a hard link outside the feed."""
        src = self.root / batch_id
        files, inside = [], None
        for rel, st in self._walk(batch_id):
            if stat.S_ISLNK(st.st_mode):
                raise BatchRefused("batch_holds_link",
                                   f"batch {batch_id} holds a symbolic link {rel}; refused")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise BatchRefused("batch_file_unreadable",
                                   f"batch {batch_id}: {rel} is a {file_kind(st.st_mode)}, not a "
                                   "regular file; refused")
            outside, inside = self._outside_names(st, inside)
            if outside:
                raise BatchRefused("batch_holds_hard_link",
                                   f"batch {batch_id}: {rel} is a hard link to a file with "
                                   f"{outside} other name(s) outside the feed folder; refused "
                                   "(publish a copy of the file instead)")
            files.append((src / rel, rel, st))
        return files

    def check_batch(self, batch_id: str) -> int:
        """The number of files of a batch that :meth:`download_batch` would copy, for a tool that
        reads the feed in place (``python -m validation``).

        Raises:
            BatchRefused: as :meth:`download_batch` refuses the batch before copying anything.
        """
        return len(self._files(batch_id))

    def download_batch(self, batch_id: str, dest: Path) -> int:
        files = self._files(batch_id)
        for path, rel, listed in files:
            target = dest / rel
            if target.is_file() and target.stat().st_size == listed.st_size:
                continue
            try:
                with open_regular(path) as fh:
                    now = os.fstat(fh.fileno())
                    same = (now.st_dev, now.st_ino, now.st_nlink)
                    if same != (listed.st_dev, listed.st_ino, listed.st_nlink):
                        raise BatchRefused(
                            "batch_file_unreadable",
                            f"batch {batch_id}: {rel} changed while the batch was copied (the "
                            "file, or a folder above it, was replaced); refused")
                    _atomic_fetch(target, lambda part, fh=fh: _copy_to(fh, part))
            except NotRegularFileError as exc:  # replaced by a link or a FIFO since it was listed
                reason = "batch_holds_link" if exc.kind == "symbolic link" else "batch_file_unreadable"
                raise BatchRefused(reason, f"batch {batch_id}: {rel} is now a {exc.kind}; refused") from exc
            except (PermissionError, FileNotFoundError) as exc:  # a file the feed never lets us read
                raise BatchRefused("batch_file_unreadable",
                                   f"batch {batch_id}: {rel}: {exc.strerror}") from exc
        return len(files)

    def fingerprint(self, batch_id: str) -> str:
        src = self.root / batch_id
        digest = hashlib.sha256()
        try:
            entries = self._walk(batch_id)
        except BatchRefused as exc:  # a link, a FIFO, an unlistable folder: its refusal is its content
            return hashlib.sha256(str(exc).encode("utf-8", "surrogateescape")).hexdigest()
        for rel, st in entries:
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(src / rel)
                except OSError as exc:
                    target = f"unreadable {exc.errno}"
                digest.update(f"L {rel} {target}\n".encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                try:
                    with open_regular(src / rel) as fh:
                        content = hashlib.file_digest(fh, "sha256").hexdigest()
                except OSError as exc:
                    content = f"unreadable {exc.errno}"
                # a file with other names: fixing a refused hard link (a copy) changes the content
                shared = " linked" if st.st_nlink > 1 else ""
                digest.update(f"F {rel} {st.st_size} {content}{shared}\n".encode("utf-8", "surrogateescape"))
            elif not stat.S_ISDIR(st.st_mode):  # a FIFO, a socket, a device: refused, but part of the content
                digest.update(f"O {rel}\n".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()

    def read_bytes(self, name: str) -> bytes:
        """A regular file at the feed root, never through a link, never waiting on a FIFO.

        Raises:
            FeedError: when it is a link, a FIFO, a socket, a device or a folder, or a hard
                link to a file with a name outside the feed folder.
            FileNotFoundError, OSError: when it is missing or cannot be read.
        """
        path = self.root / name
        try:
            with open_regular(path) as fh:
                outside, _ = self._outside_names(os.fstat(fh.fileno()), None)
                if outside:
                    raise FeedError(f"feed file {path} is a hard link to a file with {outside} "
                                    "other name(s) outside the feed folder; refused")
                return fh.read()
        except NotRegularFileError as exc:
            raise FeedError(f"feed file {path} is a {exc.kind}, not a regular file; refused "
                            "(links are never followed)") from exc


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


def _copy_to(source: BinaryIO, part: Path) -> None:
    with open(part, "wb") as out:
        shutil.copyfileobj(source, out)


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
