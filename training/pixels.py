"""Decoded-pixel cache of the prepare stage: each store image decoded once per image size.

The prepare stage writes each split's pixels (``data/prepared/<split>_images.npy``) every week;
decoding every golden, training and validation image again made its cost follow the store (the
golden set grows with it). Instead a store partition's images are decoded once, the first time
one of its listings is needed at a size, into one file per partition::

    data/pixels/<S>px-v<DECODER_VERSION>/<batch_id>.npy            uint8 (n, S, S, 3)
    data/pixels/<S>px-v<DECODER_VERSION>/<batch_id>.sha256.json    the n image_sha256, row order

and each week's splits are gathered from those files: a week decodes its new partition (and any
partition a replay sample reaches for the first time), not the store. The arrays are exactly
:func:`training.prepare.decode_images`'s (``training.presets.load_image``); a decoder change bumps
:data:`DECODER_VERSION`, so an old file is never read for new pixels. A partition whose file
lacks an image the split needs (a partition replaced later) is decoded again, whole; the folders
of other sizes are removed (:meth:`PixelCache.drop_others`). The folder is the prepare stage's
output with ``persist: true`` (DVC keeps it between runs and caches each file once), like
``data/embeddings``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.store import image_path, read_store

log = logging.getLogger(__name__)

PIXELS = Path("data") / "pixels"
"""In the workspace: the pixel cache, one folder per image size."""
DECODER_VERSION = 1
"""Bumped whenever ``training.presets.load_image`` decodes or resizes differently."""
_FOLDER = re.compile(r"^\d+px-v\d+$")


@dataclass
class GatherStats:
    """What a :meth:`PixelCache.gather` did.

    Attributes:
        rows: rows written.
        decoded: images decoded now (whole partitions).
        partitions_decoded: partitions decoded now.
        reused: rows copied from partitions decoded before.
    """

    rows: int = 0
    decoded: int = 0
    partitions_decoded: int = 0
    reused: int = 0


class PixelCache:
    """The per-partition pixel files of one image size under ``root`` (the workspace's
    :data:`PIXELS`).

    Args:
        root: the cache folder (``<workspace>/data/pixels``).
        size: the image side S, pixels.
        store: the listings store (``data/listings``) whose partitions are decoded.
        workers: decoding processes.
    """

    def __init__(self, root: str | Path, size: int, store: str | Path, workers: int = 2) -> None:
        self.folder = Path(root) / f"{int(size)}px-v{DECODER_VERSION}"
        self.size, self.store, self.workers = int(size), Path(store), workers
        self._index: dict[str, dict[str, int]] = {}

    def drop_others(self) -> list[str]:
        """Removes the pixel folders of other image sizes or decoder versions (a changed
        ``prepare.image_size`` would otherwise leave a whole store's pixels behind in the
        workspace, and in every later DVC commit); returns their names."""
        import shutil

        root, gone = self.folder.parent, []
        for other in sorted(root.iterdir()) if root.is_dir() else []:
            if other != self.folder and other.is_dir() and not other.is_symlink() and _FOLDER.match(other.name):
                shutil.rmtree(other)
                gone.append(other.name)
        if gone:
            log.info("pixel cache: removed %s (not image size %d, decoder v%d)", gone, self.size, DECODER_VERSION)
        return gone

    def _files(self, batch_id: str) -> tuple[Path, Path]:
        return self.folder / f"{batch_id}.npy", self.folder / f"{batch_id}.sha256.json"

    def index(self, batch_id: str) -> dict[str, int] | None:
        """A decoded partition's image_sha256 -> row; None when it has not been decoded."""
        if batch_id not in self._index:
            pixels, shas = self._files(batch_id)
            if not (pixels.is_file() and shas.is_file()):
                return None
            try:
                listed = json.loads(shas.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("pixel cache %s unreadable (%s): decoded again", shas, exc)
                return None
            self._index[batch_id] = {str(s): i for i, s in reversed(list(enumerate(listed)))}
        return self._index[batch_id]

    def decode_partition(self, batch_id: str, extra: pd.DataFrame | None = None) -> int:
        """Decodes every image of a store partition (and ``extra`` rows, ``image_key`` and
        ``image_sha256``, filed under it) into its file; returns the images decoded.

        The pixels go to a temporary file renamed into place, the sha list last: a decode cut
        short leaves no partition file that a later run would trust.

        Raises:
            OSError: when an image cannot be read or decoded (named).
        """
        from training.prepare import decode_images

        rows = read_store(self.store, columns=["image_key", "image_sha256"], only_batches=[batch_id])
        if extra is not None and len(extra):
            rows = pd.concat([rows[["image_key", "image_sha256"]], extra[["image_key", "image_sha256"]]])
        rows = rows.drop_duplicates("image_sha256")
        pixels, shas = self._files(batch_id)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = pixels.with_name(f".{pixels.name}.tmp")
        decode_images([str(image_path(self.store, k)) for k in rows["image_key"]], self.size, tmp,
                      workers=self.workers)
        shas.unlink(missing_ok=True)  # the old list must not describe the new pixels
        os.replace(tmp, pixels)
        tmp_shas = shas.with_name(f".{shas.name}.tmp")
        tmp_shas.write_text(json.dumps([str(s) for s in rows["image_sha256"]]), encoding="utf-8")
        os.replace(tmp_shas, shas)
        self._index.pop(batch_id, None)
        return len(rows)

    def gather(self, frame: pd.DataFrame, out_file: Path) -> GatherStats:
        """Writes ``frame``'s images, in row order, to ``out_file`` (``.npy``, uint8
        ``(len(frame), S, S, 3)``, through a memmap: memory stays bounded by one partition's
        selected rows), decoding first the partitions that hold none of them yet.

        Args:
            frame: listings with ``batch_id``, ``image_key`` and ``image_sha256``.
            out_file: the array to write.

        Raises:
            OSError: when an image cannot be read or decoded (named).
        """
        stats = GatherStats(rows=len(frame))
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.uint8,
                                        shape=(len(frame), self.size, self.size, 3))
        shas = frame["image_sha256"].astype(str).to_numpy()
        for batch_id, positions in frame.groupby(frame["batch_id"].astype(str), sort=True).indices.items():
            index = self.index(batch_id)
            if index is None or any(s not in index for s in shas[positions]):
                stats.decoded += self.decode_partition(batch_id, frame.iloc[positions])
                stats.partitions_decoded += 1
                index = self.index(batch_id)
            else:
                stats.reused += len(positions)
            rows = np.array([index[s] for s in shas[positions]], dtype=np.int64)
            order = np.argsort(rows, kind="stable")  # read the memmap in file order
            source = np.load(self._files(batch_id)[0], mmap_mode="r")
            out[positions[order]] = source[rows[order]]
            del source
        out.flush()
        del out
        return stats
