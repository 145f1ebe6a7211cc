"""Embed stage: each image of the listings store embedded once by the frozen pretrained encoder.

``train.image_encoder: frozen`` trains the classifier's heads on image embeddings computed by a
pretrained encoder (``train.encoder``, :func:`training.encoders.load_encoder`) instead of pixels.
An image is embedded once per (content, encoder): the cache key is the store's ``image_sha256``
(the SHA-256 of the image file) and :attr:`training.encoders.Encoder.id` (architecture, weights
sha256, preprocessing). Layout, in the DVC workspace::

    data/embeddings/<encoder id>/<batch_id>.npz     image_sha256 (str (n,)), embeddings (float32 (n, dim))

One file per store partition (``common.store``), holding the images of that batch that no earlier
file held: a week embeds only its new images, and the files of earlier weeks are never rewritten
(a partition replaced later with new images gets a second file, ``<batch_id>+1.npz``). The
monitor, which scores a frozen-encoder champion on a new batch before this stage runs, writes the
embeddings it computed as that batch's file (``training.inference.LoadedClassifier.keep_embeddings_as``),
and this stage then embeds only the batch's images the monitor did not score. The folder
is the ``embed`` stage's output with ``persist: true`` (DVC keeps it between runs instead of
deleting it before the stage runs), so DVC versions the embeddings with the data and its cache
stores each file once. ``reports/embed_log.json`` says how many images were embedded now and how
many were reused; the train stage copies it into its train log. With ``image_encoder: scratch`` or
``finetune`` (both read pixels), or a text model, the stage does nothing but write that log.

:func:`read_image` is the one way an image is read for the encoder, here, in evaluation and in
serving (``training.inference``); :class:`EmbeddingCache` is the lookup they share.

CLI::

    python -m training.embeddings --params params.yaml [--workspace .]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from common.cli import configure_logging
from common.files import atomic_write
from common.params import Params, TrainParams, load_params

if TYPE_CHECKING:  # torch stays unimported until an encoder is used (scratch runs are quick)
    from PIL import Image

    from training.encoders import Preprocessing

log = logging.getLogger(__name__)

EMBEDDINGS = Path("data") / "embeddings"
"""In the workspace: the embedding cache, one folder per encoder id."""
EMBED_LOG = Path("reports") / "embed_log.json"
"""In the workspace: the embed stage's counts (read by the train stage)."""
_FILE = re.compile(r"^(?P<batch>[^.][^/]*?)(?:\+(?P<part>\d+))?\.npz$")


def uses_encoder(cfg: TrainParams) -> bool:
    """Whether the run embeds images with the frozen pretrained encoder (frozen mode, an image
    branch). A fine-tuned encoder (``finetune``) reads pixels: nothing to embed ahead."""
    return cfg.image_encoder == "frozen" and cfg.branches != "text"


def read_image(source: str | Path | BinaryIO, preprocessing: Preprocessing) -> Image.Image:
    """An image as the encoder reads it: :func:`common.images.open_rgb` (the loader validation
    checked it with), a JPEG decoded by libjpeg at the smallest scale that keeps both sides at
    least ``preprocessing.resize`` pixels (the preprocessing then resizes and crops it).

    Args:
        source: an image file path or a binary file object.
        preprocessing: the encoder's :class:`training.encoders.Preprocessing`.

    Raises:
        common.images.ImageReadError: (a ValueError) unusable content; OSError: unreadable file.
    """
    from common.images import open_rgb

    return open_rgb(source, draft_size=preprocessing.resize)


class EmbeddingCache:
    """The embeddings of one encoder: ``<root>/<encoder id>/*.npz``, looked up by image sha256.

    Args:
        root: the cache root (``<workspace>/data/embeddings``); need not exist.
        encoder_id: :attr:`training.encoders.Encoder.id`.
    """

    def __init__(self, root: str | Path, encoder_id: str) -> None:
        self.folder = Path(root) / encoder_id
        self.encoder_id = encoder_id
        self._rows: dict[str, int] | None = None
        self._vectors: np.ndarray | None = None

    def files(self) -> list[Path]:
        """The cache's files, sorted (hidden temporary files excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _FILE.match(p.name))

    def sha256s(self, since: float | None = None) -> set[str]:
        """The image sha256s the cache holds, reading only each file's ``image_sha256`` array
        (an ``.npz`` loads its members one by one: no embedding is read).

        Args:
            since: only the files written at or after this time (seconds since the epoch, as
                ``time.time()``; a file's modification time): what was cached meanwhile, read
                without reading the whole cache. None: every file.
        """
        out: set[str] = set()
        for path in self.files():
            if since is not None and path.stat().st_mtime < since:
                continue
            with np.load(path) as data:
                out.update(str(s) for s in data["image_sha256"])
        return out

    def _load(self) -> None:
        if self._rows is not None:
            return
        shas, blocks = [], []
        for path in self.files():
            with np.load(path) as data:
                shas.extend(str(s) for s in data["image_sha256"])
                blocks.append(np.asarray(data["embeddings"], dtype=np.float32))
        self._vectors = np.concatenate(blocks) if blocks else None
        self._rows = {s: i for i, s in enumerate(shas)}

    def __contains__(self, sha256: str) -> bool:
        self._load()
        return sha256 in self._rows

    def __len__(self) -> int:
        self._load()
        return len(self._rows)

    @property
    def dim(self) -> int | None:
        """Embedding width; None for an empty cache."""
        self._load()
        return None if self._vectors is None else int(self._vectors.shape[1])

    def get(self, sha256s: Sequence[str]) -> tuple[np.ndarray | None, list[int]]:
        """``(vectors, missing)``: float32 ``(N, dim)`` with the cached rows filled (zeros
        elsewhere; None when the cache is empty) and the positions of ``sha256s`` not cached."""
        self._load()
        missing = [i for i, s in enumerate(sha256s) if s not in self._rows]
        if self._vectors is None:
            return None, missing
        out = np.zeros((len(sha256s), self._vectors.shape[1]), dtype=np.float32)
        found = [(i, self._rows[s]) for i, s in enumerate(sha256s) if s in self._rows]
        if found:
            at, rows = map(list, zip(*found, strict=True))
            out[at] = self._vectors[rows]
        return out, missing

    def lookup(self, sha256s: Sequence[str]) -> np.ndarray:
        """float32 ``(N, dim)`` embeddings of the images, in order.

        Raises:
            KeyError: when an image has no embedding (the embed stage has not run on its batch);
                names how many and the first.
        """
        vectors, missing = self.get(list(sha256s))
        if missing:
            raise KeyError(f"{len(missing)} of {len(sha256s)} images have no embedding by encoder "
                           f"{self.encoder_id} in {self.folder} (first: image_sha256 "
                           f"{sha256s[missing[0]]}); run the embed stage")
        if vectors is None:  # no image asked
            return np.zeros((0, 0), dtype=np.float32)
        return vectors

    def add(self, batch_id: str, sha256s: Sequence[str], vectors: np.ndarray) -> Path:
        """Writes a new file of embeddings for a batch (never overwriting one): ``<batch_id>.npz``,
        else ``<batch_id>+<k>.npz`` with the first free ``k``.

        Args:
            batch_id: the store partition the images come from.
            sha256s: N image sha256s (not yet cached).
            vectors: float32 ``(N, dim)``.
        """
        taken = {p.name for p in self.files()}
        name, k = f"{batch_id}.npz", 0
        while name in taken:
            k += 1
            name = f"{batch_id}+{k}.npz"
        array = np.asarray(list(sha256s), dtype="U64")
        vectors = np.asarray(vectors, dtype=np.float32)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, image_sha256=array, embeddings=vectors)

        path = atomic_write(self.folder / name, write)
        if self._rows is not None:  # keep a loaded cache current
            start = len(self._rows)
            self._rows.update({s: start + i for i, s in enumerate(array.tolist())})
            self._vectors = vectors if self._vectors is None else np.concatenate([self._vectors, vectors])
        return path


def embed_images(encoder, sources: Iterable, batch_size: int = 64, device=None) -> np.ndarray:
    """float32 ``(N, dim)`` embeddings of image files or file objects, read by :func:`read_image`.

    Raises:
        common.images.ImageReadError, OSError: as :func:`read_image`.
    """
    from training.encoders import embed

    images = (read_image(s, encoder.preprocessing) for s in sources)
    return embed(encoder, images, batch_size=batch_size, device=device)


def embed_store(workspace: Path, params: Params, batch_size: int = 64) -> dict:
    """Runs the embed stage: embeds the store's images that the cache does not hold yet.

    Args:
        workspace: folder holding ``data/listings``; the cache is ``data/embeddings``.
        params: project params (``train.image_encoder``, ``train.encoder``, ``train.branches``).
        batch_size: images per forward pass.

    Returns:
        The log written to ``reports/embed_log.json``: ``image_encoder``, ``encoder_id`` (None
        in scratch mode), ``embedded`` (images embedded now), ``reused`` (distinct images of the
        store already cached), ``files_written``, ``images_per_s``, ``seconds``.

    Raises:
        common.images.ImageReadError, OSError: an image of the store cannot be read (named).
    """
    import pandas as pd

    from common.store import batch_file, batch_ids, image_path

    t0 = time.perf_counter()
    workspace, cfg = Path(workspace), params.train
    root = workspace / EMBEDDINGS
    root.mkdir(parents=True, exist_ok=True)
    record = {"image_encoder": cfg.image_encoder, "encoder_id": None, "embedded": 0, "reused": 0,
              "files_written": [], "images_per_s": None}
    if uses_encoder(cfg):
        from training.encoders import load_encoder

        store = workspace / "data" / "listings"
        encoder = load_encoder(cfg.encoder)
        cache = EmbeddingCache(root, encoder.id)
        record["encoder_id"] = encoder.id
        embed_seconds = 0.0
        for batch_id in batch_ids(store):
            rows = pd.read_parquet(batch_file(store, batch_id), columns=["image_sha256", "image_key"])
            rows = rows.drop_duplicates("image_sha256")
            new = rows[[s not in cache for s in rows["image_sha256"]]]
            record["reused"] += len(rows) - len(new)
            if new.empty:
                continue
            t1 = time.perf_counter()
            vectors = embed_images(encoder, [image_path(store, k) for k in new["image_key"]], batch_size)
            embed_seconds += time.perf_counter() - t1
            path = cache.add(batch_id, new["image_sha256"].tolist(), vectors)
            record["embedded"] += len(new)
            record["files_written"].append(path.name)
            log.info("embedded %d new images of batch %s (%s)", len(new), batch_id, path.name)
        if record["embedded"]:
            record["images_per_s"] = round(record["embedded"] / embed_seconds, 2)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    out = workspace / EMBED_LOG
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def read_embed_log(workspace: Path) -> dict | None:
    """The embed stage's log (:data:`EMBED_LOG`), None when absent."""
    path = Path(workspace) / EMBED_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--workspace", default=".", help="workspace folder (default: .)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    args = parser.parse_args(argv)
    configure_logging()
    record = embed_store(Path(args.workspace), load_params(args.params), args.batch_size)
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
