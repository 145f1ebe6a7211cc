"""The listings store: accepted canonical listings, one self-contained partition folder per batch.

Layout::

    data/listings/batches/<batch_id>/listings.parquet          accepted listings of the batch
                                                                (CANONICAL_COLUMNS)
    data/listings/batches/<batch_id>/images/<sha256><ext>      their images, named by SHA-256

``image_key`` (a canonical column) is the image's path relative to ``data/listings``
(``batches/<batch_id>/images/<sha256>.jpg``); :func:`image_path` resolves it.

Why a folder per batch: DVC tracks ``data/listings`` as one directory (one ``.dvc`` pointer, one
hash for the whole store), and :mod:`ingestion.versioning` updates that pointer *granularly*:
``dvc add data/listings/batches/<batch_id>`` hashes, caches and pushes only that folder and
rewrites the directory manifest (DVC's documented "modifying large datasets" workflow). A batch
therefore costs the same whatever the size of the store. Images are content-addressed twice:
by name here (an image's name is its SHA-256, so the folder of a batch never holds two copies of
one image) and by DVC's cache and remote, which store one object per distinct content, so an
image sent again in a later batch (an update of the same listing) is uploaded once.

A partition folder is written whole: built in a hidden temporary folder next to it
(``batches/.<batch_id>.<uuid>.tmp``) and renamed into place, so a reader or ``dvc add`` never
sees half a partition, and its ``listings.parquet`` identifies its content (rows list their
images' SHA-256). Hidden entries under ``batches/`` are never partitions. A writer killed midway
leaves only hidden debris: :func:`recover_partitions` (run by every writer before it writes)
puts back a partition that was moved aside for its replacement and removes the rest. This module
is the store's only writer of partitions: :func:`write_partition` (accepted rows and their
images, as the validate step hands them over) on top of :func:`replace_partition`, and
:func:`remove_partition`.

Updates: a listing id that arrives again in a later batch is an update, and the latest version
wins: :func:`read_store` keeps the row of the latest batch date (the date in the batch id,
:func:`common.batches.version_order`), ties by ``ingested_at`` then batch id; never a time the
feed's files carry. The older row stays in its batch's partition (the raw history is never
rewritten); it is only hidden from readers.

The store's index: validation's cross-store checks (duplicate images, label and price drift) need
``listing_id, image_sha256, category_path, price, catalog`` of the latest versions only. They
read them with :func:`read_store` and ``columns=INDEX_COLUMNS``: a Parquet column projection of
each partition (a few bytes per listing), never an image file. Parquet partitions are the index.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.batches import version_order
from common.catalog import CANONICAL_COLUMNS

INDEX_COLUMNS = ("listing_id", "image_sha256", "category_path", "price", "catalog", "batch_id",
                 "ingested_at")
"""Columns the cross-store checks read: enough for duplicates by content hash and drift."""

BATCHES = "batches"
"""Folder of the partitions, relative to the store."""
LISTINGS_FILE = "listings.parquet"
"""A partition's table, relative to its folder."""
IMAGES = "images"
"""A partition's image folder, relative to its folder."""
STORE_SCHEMA = pa.schema([(c, pa.float64() if c == "price" else pa.string()) for c in CANONICAL_COLUMNS])
"""Arrow schema of a partition's table: ``CANONICAL_COLUMNS`` in order, every one a string except
``price`` (float64)."""

_DEBRIS = re.compile(r"^\.(?P<batch>.+)\.[0-9a-f]{32}\.(?P<kind>tmp|old|del)$")
"""Hidden folders of a partition writer: ``.tmp`` being built, ``.old`` the previous partition
moved aside for its replacement, ``.del`` a partition being deleted."""
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "Out of diskspace")  # the last: git

log = logging.getLogger(__name__)


class DiskFullError(OSError):
    """The disk holding the state folder is full (``ENOSPC`` / ``EDQUOT``) during a step.

    Raised by :func:`disk_full_errors` in place of the bare error, whose message names at best
    a temporary file (pyarrow's and GX's name no file at all); ``errno`` is ``ENOSPC``, the
    original error is chained (``__cause__``).
    """


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc``, or an exception it was raised from or while handling, says the disk is
    full: an ``OSError`` with ``ENOSPC``/``EDQUOT``, or that error's text (pyarrow, and tools
    that wrap the error or print it, keep only its text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if ((isinstance(exc, OSError) and exc.errno in _NO_SPACE)
                or any(text in str(exc) for text in _NO_SPACE_TEXT)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_full_errors(root: Path, step: str) -> Iterator[None]:
    """Turns a disk-full failure inside the block into a :class:`DiskFullError` naming the disk.

    Args:
        root: the state folder whose disk filled up.
        step: what was being done (``"validate batch b1"``), first in the message.

    Raises:
        DiskFullError: when the block raised an exception :func:`is_disk_full` recognises: the
            message names the step, the state folder and the file being written (``filename2``
            of a copy, else ``filename``) or the original message; any other exception passes
            unchanged.
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        cause, written = exc, None
        while cause is not None and written is None:
            written = getattr(cause, "filename2", None) or getattr(cause, "filename", None)
            cause = cause.__cause__ or cause.__context__
        detail = f"no space left writing {written}" if written else str(exc)[:600]
        raise DiskFullError(
            errno.ENOSPC,
            f"{step}: the disk holding the state folder {root} is full ({detail}). Files are "
            "written under temporary names and renamed into place, so nothing half written is "
            "left in use; free space on that disk and run the step again") from exc


def partition_dir(store: Path, batch_id: str) -> Path:
    """Folder of one batch's partition: ``<store>/batches/<batch_id>``."""
    return Path(store) / BATCHES / batch_id


def batch_file(store: Path, batch_id: str) -> Path:
    """Path of one batch's parquet table: ``<store>/batches/<batch_id>/listings.parquet``."""
    return partition_dir(store, batch_id) / LISTINGS_FILE


def image_key(batch_id: str, sha256: str, ext: str) -> str:
    """The ``image_key`` of a stored image: ``batches/<batch_id>/images/<sha256><ext>``.

    Args:
        batch_id: the batch whose partition holds the image.
        sha256: hex SHA-256 of the image bytes (64 characters).
        ext: extension with its dot (``".jpg"``, ``".png"``, ``".webp"``).
    """
    return f"{BATCHES}/{batch_id}/{IMAGES}/{sha256}{ext}"


def image_path(store: Path, image_key: str) -> Path:
    """Absolute path of a stored image from its ``image_key`` (relative to the store)."""
    return Path(store) / image_key


def batch_ids(store: Path) -> list[str]:
    """Ids of the batches with a partition in the store (a folder holding its table), sorted."""
    root = Path(store) / BATCHES
    if not root.is_dir():
        return []
    # hidden entries are partitions being written, or the debris of a killed writer
    return sorted(e.name for e in os.scandir(root)
                  if not e.name.startswith(".") and e.is_dir() and (Path(e.path) / LISTINGS_FILE).is_file())


def read_store(store: Path, columns: Sequence[str] | None = None,
               exclude_batches: Iterable[str] = ()) -> pd.DataFrame:
    """Reads the accepted listings, the latest version of each listing id.

    Args:
        store: the ``data/listings`` folder.
        columns: the columns to return (default ``CANONICAL_COLUMNS``); only these and the
            ones that decide the latest version (``listing_id, ingested_at, batch_id``) are read
            from the partitions (Parquet column projection).
        exclude_batches: batch ids whose partitions are ignored (e.g. the batch being
            re-validated, so it is not compared with itself).

    The latest version of a listing is the row of its latest batch date (ties: ``ingested_at``,
    then batch id; :func:`common.batches.version_order`).

    Returns:
        One row per listing id with ``columns``, sorted by ``listing_id``; an empty frame with
        those columns when the store is empty. ``price`` is float64, the rest ``str``/``None``;
        a column that older partitions lack (written before it was added) is ``None`` there.
    """
    columns = list(columns or CANONICAL_COLUMNS)
    skip = set(exclude_batches)
    files = [batch_file(store, b) for b in batch_ids(store) if b not in skip]
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c == "price" else "object")
                             for c in columns})
    needed = list(dict.fromkeys([*columns, "listing_id", "ingested_at", "batch_id"]))
    parts = []
    for f in files:  # a partition written before a column was added lacks it: None there
        present = set(pq.read_schema(f).names)
        part = pq.read_table(f, columns=[c for c in needed if c in present]).to_pandas()
        for column in needed:
            if column not in present:
                part[column] = pd.Series([None] * len(part), dtype="float64" if column == "price" else object)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    frame = version_order(frame).drop_duplicates("listing_id", keep="last")
    return frame.sort_values("listing_id", kind="stable").reset_index(drop=True)[columns]


def recover_partitions(store: Path, batch_id: str | None = None) -> list[str]:
    """Cleans up after partition writers that were killed: puts back a partition moved aside
    for a replacement that never arrived, removes every other hidden debris folder.

    A writer killed between the two renames of :func:`replace_partition` leaves the batch with
    no partition and its previous one in ``.<batch_id>.<token>.old``: that one is renamed back,
    so the store is as it was before the killed write (a batch the manifest lists as validated
    is never lost). Temporary folders (``.tmp``, half built) and folders being deleted
    (``.del``) are removed. Run it only where no other writer of the same batch is at work: the
    store has one writer at a time (the validate step; the DAG runs one run at a time).

    Args:
        store: the ``data/listings`` folder.
        batch_id: only this batch's debris; default every batch's.

    Returns:
        One line per action taken (also logged as a warning), empty when there was nothing.
    """
    root = Path(store) / BATCHES
    if not root.is_dir():
        return []
    debris = sorted(((m, Path(e.path)) for e in os.scandir(root)
                     if (m := _DEBRIS.match(e.name)) and batch_id in (None, m["batch"])),
                    key=lambda item: item[1].name)
    actions = []
    for match, path in debris:
        final = root / match["batch"]
        if match["kind"] == "old" and not final.exists():
            os.replace(path, final)
            actions.append(f"restored partition {final} from {path.name} (a replacement was killed midway)")
        else:
            shutil.rmtree(path, ignore_errors=True)
            actions.append(f"removed {path} (left by a killed partition writer)")
    for action in actions:
        log.warning("listings store: %s", action)
    return actions


def replace_partition(store: Path, batch_id: str, build) -> Path:
    """Writes a batch's partition folder whole: ``build(tmp_dir)`` then a rename into place.

    ``build`` fills a hidden temporary folder next to the partition; only when it returns is
    the folder renamed to ``batches/<batch_id>`` (an older partition of the same batch is moved
    aside first and deleted after). A failure in ``build`` leaves the previous partition as it
    was and removes the temporary folder; what a killed earlier writer of the batch left is
    recovered first (:func:`recover_partitions`).

    Args:
        store: the ``data/listings`` folder.
        batch_id: the batch.
        build: ``Callable[[Path], None]``: writes ``listings.parquet`` and ``images/`` into the
            folder it is given.

    Returns:
        The partition folder.
    """
    final = partition_dir(store, batch_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_partitions(store, batch_id)
    token = uuid.uuid4().hex
    tmp = final.with_name(f".{batch_id}.{token}.tmp")
    old = final.with_name(f".{batch_id}.{token}.old")
    try:
        tmp.mkdir()
        build(tmp)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partition(store: Path, batch_id: str) -> bool:
    """Removes a batch's partition folder (a batch now quarantined); True if there was one."""
    recover_partitions(store, batch_id)
    final = partition_dir(store, batch_id)
    if not final.exists():
        return False
    # .del, not .old: a half-deleted folder must never be taken for a partition to put back
    gone = final.with_name(f".{batch_id}.{uuid.uuid4().hex}.del")
    os.replace(final, gone)  # readers see the partition or nothing, never half of it
    shutil.rmtree(gone)
    return True


def write_partition(store: Path, batch_id: str, rows: pd.DataFrame,
                    images: Sequence[tuple[Path, str, str]]) -> Path:
    """Writes a batch's accepted listings and their images as its partition folder, whole.

    Each image is copied to ``images/<sha256><ext>`` (one file for an image two rows share),
    each row's ``image_sha256`` and ``image_key`` (:func:`image_key`) are set from it, and the
    rows are written to ``listings.parquet`` with :data:`STORE_SCHEMA`. The folder replaces any
    earlier partition of the batch atomically (:func:`replace_partition`).

    Args:
        store: the ``data/listings`` folder.
        batch_id: the batch; names the partition.
        rows: the accepted listings, N rows with at least ``CANONICAL_COLUMNS``; their
            ``image_key`` and ``image_sha256`` are overwritten, other columns dropped.
        images: per row of ``rows``, in order: ``(source file, hex SHA-256 of its bytes,
            extension with its dot)``, e.g. ``(Path("raw/b1/images/7.jpg"), "9f86…", ".jpg")``.

    Returns:
        The partition folder, ``<store>/batches/<batch_id>``.

    Raises:
        ValueError: when ``images`` does not have one entry per row.
        OSError: when an image cannot be read or the store written (the earlier partition, if
            any, is left as it was).
    """
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} image(s) for {len(rows)} row(s) of batch {batch_id}")
    rows = rows.assign(image_sha256=[sha for _, sha, _ in images],
                       image_key=[image_key(batch_id, sha, ext) for _, sha, ext in images])
    table = pa.Table.from_pandas(rows[list(CANONICAL_COLUMNS)].reset_index(drop=True),
                                 schema=STORE_SCHEMA, preserve_index=False)

    def build(folder: Path) -> None:
        (folder / IMAGES).mkdir()
        for source, sha, ext in images:
            target = folder / IMAGES / f"{sha}{ext}"
            if not target.exists():  # the same image under one listing id twice: one file
                shutil.copyfile(source, target)
        pq.write_table(table, folder / LISTINGS_FILE)

    return replace_partition(store, batch_id, build)
