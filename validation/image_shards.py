"""Image checks of staged batches in shards, so that several workers share them.

Checking a batch's images (:func:`validation.images.check_image`: header, container walk, one
full decode, SHA-256) is most of what validating it costs, and it is one listing at a time. The
DAG fans it out with Airflow's dynamic task mapping: :func:`plan_image_shards` cuts every staged
batch into shards of ``validate.image_shard_size`` rows, ``check_images.expand(shard=...)`` runs
:func:`check_image_shard` on each (on whichever Celery worker is free), and the ``validate``
task is the reduce step: it reads the shards' results (:func:`load_image_checks`) and does what
crosses shards and batches, one batch after the other: duplicate images (within the batch and
against the store), the GX checkpoint, routing and the store partition.

A shard's result is ``<state>/image_checks/<batch_id>/<start>-<stop>.json``, outside the batch's
staging folder (a feed cannot plant one); the batch's image keys, parsed once when the shards are
planned, are ``keys.json`` there. ``validate`` uses a result only when it was made from
the same listings file (SHA-256), with the same image checks' params and for the same image
keys; any row without one (a shard that failed, was never run, or is stale) is checked there
as before. A shard never fails its task for a bad image (that is the row's reason); a shard
whose batch was not planned (an unreadable listings file) logs why and leaves no result.

CLI (one shard by hand)::

    python -m validation.image_shards --batch <batch_id> --start 0 --stop 2000
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from common.catalog import load_catalog
from common.cli import run_command, step_parser
from common.files import write_json
from common.params import Params, ValidateParams, load_params
from common.results import StepResult
from common.state import State

logger = logging.getLogger(__name__)

CHECK_PARAMS = ("max_image_pixels", "min_image_side", "min_image_stddev", "max_image_trailing_bytes",
                "max_image_fill_fraction")
"""``validate`` params an image check reads: a result made with other values is not used."""


class ImageShard(StepResult):
    """A slice of a staged batch's rows whose images one mapped task checks.

    Attributes:
        batch_id: the staged batch.
        start, stop: row positions ``[start, stop)`` in the batch's listings file.
    """

    batch_id: str
    start: int
    stop: int


class ImageShardResult(StepResult):
    """``check_images``'s result (one mapped task instance).

    Attributes:
        batch_id, start, stop: the shard.
        checked: images checked (rows of the shard), 0 when nothing could be checked.
        bad: rows whose image failed a check.
        result_file: the shard's result, None when nothing was written (see ``skipped``).
        skipped: why nothing was checked, else None.
    """

    batch_id: str
    start: int
    stop: int
    checked: int = 0
    bad: int = 0
    result_file: str | None = None
    skipped: str | None = None


def checks_dir(state: State, batch_id: str) -> Path:
    """``<state>/image_checks/<batch_id>/``: the shard results of one batch."""
    return state.root / "image_checks" / batch_id


def check_params_digest(params: ValidateParams) -> str:
    """SHA-256 of the :data:`CHECK_PARAMS` values (JSON, sorted keys)."""
    values = {k: getattr(params, k) for k in CHECK_PARAMS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (``hashlib.file_digest``)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _staged_keys(state: State, params: Params, batch_id: str) -> tuple[Path, list]:
    """The batch's listings file and its rows' image keys, read as validation reads them."""
    from ingestion.manifest import read_entry
    from validation.validate import image_keys

    entry = read_entry(state.manifest, batch_id)
    if entry is None:
        raise KeyError(f"batch {batch_id} is not in the manifest")
    return image_keys(state.staging / batch_id, load_catalog(params.catalog), batch_id, entry["ingested_at"])


KEYS_FILE = "keys.json"
"""In :func:`checks_dir`: the batch's image keys and its listings file's SHA-256, written once by
:func:`plan_image_shards` so that no shard parses the whole listings file again."""


def plan_image_shards(state: State, params: Params, batch_ids: list[str] | tuple[str, ...]) -> list[ImageShard]:
    """Cuts each staged batch into shards of ``validate.image_shard_size`` rows.

    The batch is parsed once here; its image keys go to :data:`KEYS_FILE`, from which each shard
    takes its slice. A batch whose listings file cannot be read gets no shard (``validate``
    quarantines it with the reason); stale results of earlier attempts are removed first.

    Args:
        state: the state folder.
        params: the run's params (``catalog``, ``validate.image_shard_size``).
        batch_ids: ingest's staged batch ids.

    Returns:
        The shards, batch by batch, in row order (an empty list when nothing was staged).
    """
    size = params.validate_.image_shard_size
    shards: list[ImageShard] = []
    for batch_id in sorted(set(batch_ids)):
        shutil.rmtree(checks_dir(state, batch_id), ignore_errors=True)
        try:
            listings_file, keys = _staged_keys(state, params, batch_id)
        except Exception as exc:  # noqa: BLE001 -- validate reports the batch's own reason
            logger.warning("[check_images] %s: no image shards (%s: %s); validate checks it whole",
                           batch_id, type(exc).__name__, str(exc)[:300])
            continue
        checks_dir(state, batch_id).mkdir(parents=True, exist_ok=True)
        write_json(checks_dir(state, batch_id) / KEYS_FILE,
                   {"listings_sha256": file_sha256(listings_file), "keys": keys})
        shards += [ImageShard(batch_id=batch_id, start=i, stop=min(i + size, len(keys)))
                   for i in range(0, len(keys), size)]
    logger.info("[check_images] %d shard(s) of at most %d rows over %d batch(es)", len(shards), size,
                len(set(batch_ids)))
    return shards


def check_image_shard(state: State, params: Params, shard: ImageShard) -> ImageShardResult:
    """Checks the images of one shard and writes its result file.

    Returns:
        The :class:`ImageShardResult` (``skipped`` says why when nothing was checked).

    Raises:
        OSError: when the state's disk is full (the task fails; ``validate`` checks the rows).
    """
    from common.store import is_disk_full
    from validation.validate import check_images

    try:
        planned = json.loads((checks_dir(state, shard.batch_id) / KEYS_FILE).read_text(encoding="utf-8"))
        listings_sha256, part = planned["listings_sha256"], planned["keys"][shard.start:shard.stop]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # not planned: validate checks the rows
        logger.warning("[check_images] %s [%d:%d]: not checked (%s: %s)", shard.batch_id, shard.start,
                       shard.stop, type(exc).__name__, str(exc)[:300])
        return ImageShardResult(**shard.to_dict(), skipped=f"{type(exc).__name__}: {str(exc)[:300]}")
    checks = check_images(state.staging / shard.batch_id, part, params.validate_)
    path = checks_dir(state, shard.batch_id) / f"{shard.start}-{shard.stop}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"listings_sha256": listings_sha256,
                          "params": check_params_digest(params.validate_), "start": shard.start,
                          "stop": shard.stop, "keys": part, "checks": [list(c) for c in checks]})
    except OSError as exc:
        if is_disk_full(exc):
            raise
        logger.warning("[check_images] %s [%d:%d]: result not written (%s)", shard.batch_id, shard.start,
                       shard.stop, exc)
        return ImageShardResult(**shard.to_dict(), checked=len(part), skipped=f"not written: {exc}")
    bad = sum(1 for c in checks if c[0])
    logger.info("[check_images] %s [%d:%d]: %d images checked, %d refused (host %s, pid %d)", shard.batch_id,
                shard.start, shard.stop, len(part), bad, os.uname().nodename, os.getpid())
    return ImageShardResult(**shard.to_dict(), checked=len(part), bad=bad, result_file=str(path))


def load_image_checks(folder: Path | None, listings_file: Path, keys: list, params: ValidateParams) -> dict[int, tuple]:
    """The image checks the batch's shards left, by row position.

    Args:
        folder: :func:`checks_dir` of the batch (None or missing: nothing).
        listings_file: the batch's listings file (its SHA-256 must be the one checked).
        keys: every row's image key, as validation parsed them.
        params: the ``validate`` params (the image checks' must be the ones used).

    Returns:
        ``{row: (error or None, sha256 or None, ext)}`` for the rows of every usable shard
        result; a result of another file, other params or other keys is ignored (logged).
    """
    if folder is None or not Path(folder).is_dir():
        return {}
    sha, digest, out = None, check_params_digest(params), {}
    for path in sorted(Path(folder).glob("*-*.json")):  # the shards' results, not KEYS_FILE
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            start, stop = int(result["start"]), int(result["stop"])
            sha = sha or file_sha256(listings_file)
            usable = (result["listings_sha256"] == sha and result["params"] == digest
                      and result["keys"] == list(keys[start:stop]) and len(result["checks"]) == stop - start)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("image checks %s unreadable (%s): its rows are checked again", path, exc)
            continue
        if not usable:
            logger.warning("image checks %s were made from another listings file, params or keys: its rows "
                           "are checked again", path)
            continue
        out.update({start + i: tuple(c) for i, c in enumerate(result["checks"])})
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.image_shards --batch ID --start N --stop M``: checks one shard,
    prints its result as JSON."""
    parser = step_parser("validation.image_shards", __doc__)
    parser.add_argument("--batch", required=True, help="the staged batch id")
    parser.add_argument("--start", type=int, required=True, help="first row of the shard")
    parser.add_argument("--stop", type=int, required=True, help="row after the shard's last")
    args = parser.parse_args(argv)
    shard = ImageShard(batch_id=args.batch, start=args.start, stop=args.stop)
    return run_command(lambda: check_image_shard(State.from_env(), load_params(args.params), shard).to_dict())


if __name__ == "__main__":
    sys.exit(main())
