"""Embedding a week's new images in shards, so that several workers share it.

With ``train.image_encoder: frozen`` each store image is embedded once by the pretrained encoder
(:mod:`training.embeddings`); that is most of what a week with many new images costs, one image
after the other on one machine inside ``dvc repro``. The DAG fans it out with Airflow's dynamic
task mapping: :func:`plan_embed_shards` lists the images of the week's stored batches that the
workspace's embedding cache does not hold yet (the monitor has already cached those it scored),
cuts them into shards of ``train.embed_shard_size`` images, and ``embed_images.expand(shard=...)``
runs :func:`embed_shard` on each (on whichever Celery worker is free). Each shard writes its
embeddings as a file of the cache, ``data/embeddings/<encoder id>/<batch_id>+s<start>-<digest>.npz``
(the digest of its images' sha256s), so
the embed stage of ``dvc repro`` finds them cached and embeds nothing it did not have to: the
reduce step is the stage itself, which versions the folder with DVC.

A batch's plan (the images' sha256 and store keys, in order) is
``<state>/embed_plans/<encoder id>/<batch_id>.json``; a shard embeds its slice of it. A retried
shard whose file exists does nothing; an image cached meanwhile is skipped. Nothing here is
needed for correctness: a shard that failed or never ran leaves its images to the embed stage.

CLI (one shard by hand)::

    python -m training.embed_shards --batch <batch_id> --start 0 --stop 2000
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from common.cli import run_command, step_parser
from common.files import atomic_write, write_json
from common.params import Params, load_params
from common.results import StepResult
from common.state import State
from training.embeddings import EMBEDDINGS, EmbeddingCache, uses_encoder

log = logging.getLogger(__name__)

PLANS = "embed_plans"
"""In the state root: one folder per encoder id, one plan file per batch."""


class EmbedShard(StepResult):
    """A slice of a batch's images not yet embedded, which one mapped task embeds.

    Attributes:
        batch_id: the stored batch (store partition).
        encoder_id: :attr:`training.encoders.Encoder.id` of the plan.
        start, stop: positions ``[start, stop)`` in the batch's plan.
    """

    batch_id: str
    encoder_id: str
    start: int
    stop: int


class EmbedShardResult(StepResult):
    """``embed_images``'s result (one mapped task instance).

    Attributes:
        batch_id, encoder_id, start, stop: the shard.
        embedded: images embedded now.
        reused: images of the shard cached meanwhile (not embedded again).
        file: the cache file written, None when nothing was (see ``skipped``).
        skipped: why nothing was embedded, else None.
    """

    batch_id: str
    encoder_id: str
    start: int
    stop: int
    embedded: int = 0
    reused: int = 0
    file: str | None = None
    skipped: str | None = None


def _plan_file(state: State, encoder_id: str, batch_id: str) -> Path:
    return state.root / PLANS / encoder_id / f"{batch_id}.json"


def _shard_file(state: State, shard: EmbedShard, shas: list[str]) -> Path:
    """The shard's cache file, named by its slice's content: a plan made again (a retried plan
    task) gives other slices, and a file is never taken for another slice's."""
    import hashlib

    digest = hashlib.sha256("\n".join(shas).encode()).hexdigest()[:12]
    return state.workspace / EMBEDDINGS / shard.encoder_id / f"{shard.batch_id}+s{shard.start}-{digest}.npz"


def plan_embed_shards(state: State, params: Params, batch_ids: list[str] | tuple[str, ...]) -> list[EmbedShard]:
    """Cuts the images of ``batch_ids``' store partitions that the embedding cache lacks into
    shards of ``train.embed_shard_size``.

    Args:
        state: the state folder.
        params: the run's params (``train.image_encoder``, ``train.encoder``,
            ``train.branches``, ``train.embed_shard_size``).
        batch_ids: the week's stored batches (``validate``'s ``stored_batches``).

    Returns:
        The shards, batch by batch; an empty list when the run embeds nothing (no frozen
        encoder, nothing stored, every image cached).

    Raises:
        FileNotFoundError, ValueError: when the encoder's weights cannot be loaded
            (:func:`training.encoders.load_encoder`).
    """
    import pandas as pd

    from common.store import batch_file
    from training.encoders import load_encoder

    if not uses_encoder(params.train) or not batch_ids:
        return []
    encoder_id = load_encoder(params.train.encoder).id
    # before the cache is read: a shard then reads only the files written since (what another
    # task cached meanwhile), not the whole cache again
    planned_at = time.time()
    cached = EmbeddingCache(state.workspace / EMBEDDINGS, encoder_id).sha256s()
    size, shards, planned = params.train.embed_shard_size, [], set()
    for batch_id in sorted(set(batch_ids)):
        table = batch_file(state.listings_store, batch_id)
        if not table.is_file():
            continue
        rows = pd.read_parquet(table, columns=["image_sha256", "image_key"]).drop_duplicates("image_sha256")
        rows = rows[[s not in cached and s not in planned for s in rows["image_sha256"]]]
        planned.update(rows["image_sha256"])
        write_json(_plan_file(state, encoder_id, batch_id),
                   {"image_sha256": rows["image_sha256"].tolist(), "image_key": rows["image_key"].tolist(),
                    "planned_at": planned_at})
        shards += [EmbedShard(batch_id=batch_id, encoder_id=encoder_id, start=i, stop=min(i + size, len(rows)))
                   for i in range(0, len(rows), size)]
    log.info("[embed_images] %d shard(s) of at most %d images over %d batch(es), %d images cached before",
             len(shards), size, len(set(batch_ids)), len(cached))
    return shards


def embed_shard(state: State, params: Params, shard: EmbedShard) -> EmbedShardResult:
    """Embeds one shard's images and writes them as a file of the embedding cache.

    Returns:
        The :class:`EmbedShardResult` (``skipped`` says why when nothing was embedded).

    Raises:
        common.images.ImageReadError, OSError: an image cannot be read (the embed stage would
            meet it too; validation should have refused it).
        ValueError: the run's encoder is not the plan's.
    """
    from training.embeddings import embed_images
    from training.encoders import load_encoder

    base = shard.to_dict()
    try:
        plan = json.loads(_plan_file(state, shard.encoder_id, shard.batch_id).read_text(encoding="utf-8"))
        shas = [str(s) for s in plan["image_sha256"][shard.start:shard.stop]]
        keys = [str(k) for k in plan["image_key"][shard.start:shard.stop]]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # not planned: the embed stage embeds them
        log.warning("[embed_images] %s [%d:%d]: not embedded (%s: %s)", shard.batch_id, shard.start, shard.stop,
                    type(exc).__name__, str(exc)[:300])
        return EmbedShardResult(**base, skipped=f"{type(exc).__name__}: {str(exc)[:300]}")
    target = _shard_file(state, shard, shas)
    if target.is_file():
        return EmbedShardResult(**base, reused=len(shas), file=str(target), skipped="already embedded (a retry)")
    encoder = load_encoder(params.train.encoder)
    if encoder.id != shard.encoder_id:
        raise ValueError(f"the run's encoder is {encoder.id}, the shard was planned for {shard.encoder_id}")
    # what was cached since the plan read the cache (one second of slack for coarse file
    # times): O(the week's files), not O(the store) in every shard; a plan without the time
    # (written by an earlier version) reads the whole cache
    since = plan.get("planned_at")
    cached = EmbeddingCache(state.workspace / EMBEDDINGS, shard.encoder_id).sha256s(
        since=float(since) - 1.0 if isinstance(since, int | float) else None)
    todo = [(s, k) for s, k in zip(shas, keys, strict=True) if s not in cached]
    if not todo:
        return EmbedShardResult(**base, reused=len(shas), skipped="every image already cached")
    from common.store import image_path

    vectors = embed_images(encoder, [image_path(state.listings_store, k) for _, k in todo])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, image_sha256=np.asarray([s for s, _ in todo], dtype="U64"),
                     embeddings=np.asarray(vectors, dtype=np.float32))

    atomic_write(target, write)
    log.info("[embed_images] %s [%d:%d]: %d images embedded, %d cached meanwhile (host %s, pid %d)",
             shard.batch_id, shard.start, shard.stop, len(todo), len(shas) - len(todo), os.uname().nodename,
             os.getpid())
    return EmbedShardResult(**base, embedded=len(todo), reused=len(shas) - len(todo), file=str(target))


def main(argv: list[str] | None = None) -> int:
    """``python -m training.embed_shards --batch ID --start N --stop M``: plans the batch and
    embeds one shard of it, prints the result as JSON."""
    parser = step_parser("training.embed_shards", __doc__)
    parser.add_argument("--batch", required=True, help="the stored batch id")
    parser.add_argument("--start", type=int, required=True, help="first image of the shard in the plan")
    parser.add_argument("--stop", type=int, required=True, help="image after the shard's last")
    args = parser.parse_args(argv)

    def run() -> dict:
        state, params = State.from_env(), load_params(args.params)
        planned = plan_embed_shards(state, params, [args.batch])
        if not planned:
            return {"skipped": "nothing to embed (no frozen encoder, no such partition, or every image cached)"}
        shard = EmbedShard(batch_id=args.batch, encoder_id=planned[0].encoder_id, start=args.start, stop=args.stop)
        return embed_shard(state, params, shard).to_dict()

    return run_command(run)


if __name__ == "__main__":
    sys.exit(main())
