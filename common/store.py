"""The listings store: accepted canonical listings, one self-contained partition folder per batch.

Layout::

    data/listings/batches/<batch_id>/listings.parquet          accepted listings of the batch
                                                                (CANONICAL_COLUMNS)
    data/listings/batches/<batch_id>/images/<sha256><ext>      their images, named by SHA-256

``image_key`` (a canonical column) is the image's path relative to ``data/listings``
(``batches/<batch_id>/images/<sha256>.jpg``); :func:`image_path` resolves it.

Why a folder per batch: each partition folder is a DVC output of its own
(``batches/<batch_id>.dvc`` beside it, :mod:`ingestion.versioning`), so ``dvc add`` of a week's
folder hashes, caches and pushes only that folder and writes only its pointer. A batch therefore
costs the same whatever the size of the store. Images are content-addressed twice:
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

The store's index: validation's cross-store checks (duplicate images, label and price drift),
the golden set's growth and the listing count need only :data:`INDEX_COLUMNS`. They read the
index (:func:`read_index`; :func:`read_store` too when asked only for those columns): one Parquet
file beside the store (``<store>/../.listings-index/versions.parquet``, outside the DVC-tracked
folder and git-ignored by its own ``.gitignore``) holding those columns for every version of every
partition, already in version order, and per partition the ``(inode, size, mtime_ns)`` stamp and
MD5 of its ``listings.parquet`` (the file's schema metadata). A partition writer updates it after
its rename (:func:`refresh_index` reads only the partitions whose stamp changed: the new batch),
and every reader checks the stamps first (one ``stat`` per partition), so an index that a killed
writer left behind, or none at all, is brought up to date from the partitions themselves before
it is used: the partitions stay the truth, the index is a cache of them. The MD5s let versioning
find the partitions that changed without hashing the store again (:func:`partition_md5s`).
"""

from __future__ import annotations

import errno
import hashlib
import json
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.batches import date_key, version_order
from common.catalog import CANONICAL_COLUMNS
from common.files import atomic_write

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

INDEX_DIR_SUFFIX = "-index"
"""The index folder is ``<store>/../.<store name>-index`` (:func:`index_path`)."""
INDEX_FILE = "versions.parquet"
"""The index table, in its folder."""
_INDEX_META = b"lcp.partitions"
"""Schema metadata key of the index: JSON ``{batch_id: {"stamp": [inode, size, mtime_ns],
"md5": hex, "rows": n}}``."""
_DATE = "_date"
"""Index column: :func:`common.batches.date_key` of the row's batch, the first version key."""

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


def index_path(store: Path) -> Path:
    """The store index's table: ``<store>/../.<store name>-index/versions.parquet``.

    Beside the store, not in it: DVC tracks the store folder, and the index is derived data that
    every reader can rebuild. Its folder holds a ``.gitignore`` of ``*``, so the workspace's
    ``git add -A`` never commits it.
    """
    store = Path(store)
    return store.parent / f".{store.name}{INDEX_DIR_SUFFIX}" / INDEX_FILE


def _index_schema() -> pa.Schema:
    return pa.schema([*(STORE_SCHEMA.field(c) for c in INDEX_COLUMNS), pa.field(_DATE, pa.string())])


def _partition_stamps(store: Path) -> dict[str, tuple[int, int, int]]:
    """``{batch_id: (inode, size, mtime_ns)}`` of each partition's table: one ``stat`` each."""
    stamps = {}
    for batch in batch_ids(store):
        try:
            st = os.stat(batch_file(store, batch))
        except FileNotFoundError:  # removed since it was listed
            continue
        stamps[batch] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stamps


def _load_index(path: Path) -> tuple[pa.Table, dict[str, dict]] | None:
    """The index table and its per-partition records, or None when missing or unreadable."""
    try:
        table = pq.read_table(path)
        records = json.loads((table.schema.metadata or {})[_INDEX_META])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None
    if not isinstance(records, dict) or table.schema.names != _index_schema().names:
        return None
    return table, records


def _index_rows(store: Path, batch_id: str) -> tuple[pa.Table, dict]:
    """One partition's index rows (``INDEX_COLUMNS`` and the date key) and its record, from one
    read of its table; the stamp is taken from the open file, so it names what was read."""
    with open(batch_file(store, batch_id), "rb") as fh:
        st = os.fstat(fh.fileno())
        data = fh.read()
    source = pq.ParquetFile(pa.BufferReader(data))
    table = source.read(columns=[c for c in INDEX_COLUMNS if c in source.schema_arrow.names])
    columns = []
    for name in INDEX_COLUMNS:  # a partition written before a column was added lacks it
        field = STORE_SCHEMA.field(name)
        columns.append(table.column(name).cast(field.type) if name in table.schema.names
                       else pa.nulls(table.num_rows, field.type))
    batches = table.column("batch_id").to_pylist()
    dates = {b: date_key(b) for b in set(batches)}
    columns.append(pa.array([dates[b] for b in batches], pa.string()))
    record = {"stamp": [st.st_ino, st.st_size, st.st_mtime_ns], "md5": hashlib.md5(data).hexdigest(),
              "rows": table.num_rows}
    return pa.Table.from_arrays(columns, schema=_index_schema()), record


def refresh_index(store: Path) -> tuple[pa.Table, dict[str, dict]]:
    """Brings the store's index up to date with the partitions and returns it.

    Reads only the partitions whose table's ``(inode, size, mtime_ns)`` differs from the index's
    record (new or rewritten since), drops the rows of partitions that are gone, and writes the
    index back atomically when anything changed: a week costs its new partition, plus one
    ``stat`` per partition. A missing or unreadable index is rebuilt from every partition.
    Writing is best effort (a read-only store still reads correctly).

    Args:
        store: the ``data/listings`` folder.

    Returns:
        ``(table, records)``: the index rows, :data:`INDEX_COLUMNS` plus the version date key,
        every version of every partition in version order (:func:`common.batches.version_order`,
        oldest first); and ``{batch_id: {"stamp", "md5", "rows"}}`` per partition, ``md5`` being
        the MD5 of its ``listings.parquet`` (as DVC hashes files).
    """
    path = index_path(store)
    loaded = _load_index(path)
    table, records = loaded if loaded else (_index_schema().empty_table(), {})
    stamps = _partition_stamps(store)
    stale = sorted(b for b, stamp in stamps.items() if records.get(b, {}).get("stamp") != list(stamp))
    gone = set(records) - set(stamps)
    if not stale and not gone:
        return table, records
    drop = gone | set(stale)
    if drop:
        keep = pc.invert(pc.is_in(table.column("batch_id"), pa.array(sorted(drop), pa.string())))
        table = table.filter(keep)
    records = {b: r for b, r in records.items() if b not in drop}
    parts = [table]
    for batch in stale:
        try:
            rows, records[batch] = _index_rows(store, batch)
        except FileNotFoundError:  # removed while we read: the next reader sees it gone
            continue
        parts.append(rows)
    table = pa.concat_tables(parts)
    # the version order of common.batches.version_order, on the stored date key: a stable sort,
    # so the rows of one partition keep their order
    order = pc.sort_indices(table, sort_keys=[(_DATE, "ascending", "at_end"),
                                              ("ingested_at", "ascending", "at_end"),
                                              ("batch_id", "ascending", "at_end")])
    table = table.take(order).replace_schema_metadata({_INDEX_META: json.dumps(records).encode()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ignore = path.parent / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# the listings store's index: derived, rebuilt from the store\n*\n")
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    except OSError as exc:
        log.warning("listings store: index %s not written (%s); rebuilt from the partitions next time",
                    path, exc)
    log.debug("listings store: index refreshed (%d partition(s) read, %d gone)", len(stale), len(gone))
    return table, records


def read_index(store: Path, columns: Sequence[str] = INDEX_COLUMNS,
               exclude_batches: Iterable[str] = ()) -> pd.DataFrame:
    """The latest version of each listing id, :data:`INDEX_COLUMNS` only, from the store's index.

    The same rows and order as :func:`read_store` with these columns, read from one file instead
    of every partition (:func:`refresh_index` first reads the partitions written since the index
    was).

    Args:
        store: the ``data/listings`` folder.
        columns: a subset of :data:`INDEX_COLUMNS`.
        exclude_batches: batch ids whose versions are ignored (the latest remaining version of
            their listings is returned instead).

    Returns:
        One row per listing id, sorted by ``listing_id``; ``price`` float64, the rest ``str`` or
        ``None``; an empty frame with ``columns`` when the store is empty.

    Raises:
        ValueError: when a column is not in :data:`INDEX_COLUMNS`.
    """
    columns = list(columns)
    unknown = sorted(set(columns) - set(INDEX_COLUMNS))
    if unknown:
        raise ValueError(f"the store index holds {list(INDEX_COLUMNS)}, not {unknown}: use read_store")
    table, _ = refresh_index(store)
    skip = sorted(set(exclude_batches))
    if skip:
        table = table.filter(pc.invert(pc.is_in(table.column("batch_id"),
                                                                pa.array(skip, pa.string()))))
    needed = list(dict.fromkeys([*columns, "listing_id"]))
    frame = table.select(needed).to_pandas()
    frame = frame.drop_duplicates("listing_id", keep="last")  # rows are in version order
    return frame.sort_values("listing_id", kind="stable").reset_index(drop=True)[columns]


def count_listings(store: Path) -> int:
    """The number of listing ids in the store (latest versions), from its index."""
    table, _ = refresh_index(store)
    return pc.count_distinct(table.column("listing_id")).as_py()


def partition_md5s(store: Path) -> dict[str, str]:
    """``{batch_id: MD5 of its listings.parquet}`` for every partition, from the store's index:
    the hash DVC records for the file, without reading any table the index already knows."""
    _, records = refresh_index(store)
    return {b: r["md5"] for b, r in records.items()}


def read_batches(store: Path, batches: Iterable[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every row of the given partitions (every version, none hidden), in version order.

    Args:
        store: the ``data/listings`` folder.
        batches: batch ids; one without a partition is skipped.
        columns: default ``CANONICAL_COLUMNS``; one a partition lacks is ``None`` there.

    Returns:
        The rows with ``columns``, oldest version first (:func:`common.batches.version_order`).
    """
    columns = list(columns or CANONICAL_COLUMNS)
    needed = list(dict.fromkeys([*columns, "batch_id", "ingested_at"]))
    parts = [_read_partition(batch_file(store, b), needed) for b in sorted(set(batches))
             if batch_file(store, b).is_file()]
    if not parts:
        return _empty(columns)
    return version_order(pd.concat(parts, ignore_index=True)).reset_index(drop=True)[columns]


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c == "price" else "object") for c in columns})


def _read_partition(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """One partition's table with ``columns``; one it lacks (written before the column was
    added) is ``None`` there."""
    present = set(pq.read_schema(path).names)
    part = pq.read_table(path, columns=[c for c in columns if c in present]).to_pandas()
    for column in columns:
        if column not in present:
            part[column] = pd.Series([None] * len(part), dtype="float64" if column == "price" else object)
    return part


def read_store(store: Path, columns: Sequence[str] | None = None,
               exclude_batches: Iterable[str] = (), only_batches: Iterable[str] | None = None) -> pd.DataFrame:
    """Reads the accepted listings, the latest version of each listing id.

    Args:
        store: the ``data/listings`` folder.
        columns: the columns to return (default ``CANONICAL_COLUMNS``); only these and the
            ones that decide the latest version (``listing_id, ingested_at, batch_id``) are read
            from the partitions (Parquet column projection).
        exclude_batches: batch ids whose partitions are ignored (e.g. the batch being
            re-validated, so it is not compared with itself).
        only_batches: when given, only these batches' partitions are read (the latest version
            among them: what a week's new batches hold, in O(their rows), not O(store)); an id
            without a partition is skipped.

    The latest version of a listing is the row of its latest batch date (ties: ``ingested_at``,
    then batch id; :func:`common.batches.version_order`).

    Returns:
        One row per listing id with ``columns``, sorted by ``listing_id``; an empty frame with
        those columns when the store is empty. ``price`` is float64, the rest ``str``/``None``;
        a column that older partitions lack (written before it was added) is ``None`` there.
    """
    columns = list(columns or CANONICAL_COLUMNS)
    if only_batches is None and set(columns) <= set(INDEX_COLUMNS):  # the index holds them: one file
        return read_index(store, columns, exclude_batches)
    skip = set(exclude_batches)
    batches = [b for b in batch_ids(store) if b not in skip]
    if only_batches is not None:
        wanted = set(only_batches)
        batches = [b for b in batches if b in wanted]
    if not batches:
        return _empty(columns)
    needed = list(dict.fromkeys([*columns, "listing_id", "ingested_at", "batch_id"]))
    frame = pd.concat([_read_partition(batch_file(store, b), needed) for b in batches], ignore_index=True)
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
    refresh_index(store)  # reads this partition only; a kill before it is caught by the stamps
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
    refresh_index(store)
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
