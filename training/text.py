"""Title features: hashed word uni/bigrams and character 3-grams for ``nn.EmbeddingBag``.

The hash is CRC-32 (``zlib.crc32``), stable across processes and Python versions, unlike the
salted built-in ``hash()``; a model trained in one process therefore reads titles the same way in
serving. Bucket 0 is reserved for empty titles so that every bag has at least one id.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence

import torch

_TOKEN = re.compile(r"[a-z0-9]+")


def title_features(title: str) -> list[str]:
    """The n-gram strings of one title (lower-cased): words, word bigrams, char 3-grams of words.

    Example:
        >>> title_features("Red Shirt")[:3]
        ['w:red', 'w:shirt', 'b:red shirt']
    """
    words = _TOKEN.findall((title or "").lower())
    feats = [f"w:{w}" for w in words]
    feats += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    for w in words:
        padded = f"<{w}>"
        feats += [f"c:{padded[i:i + 3]}" for i in range(len(padded) - 2)]
    return feats


def hash_feature(feature: str, buckets: int) -> int:
    """Stable bucket id in ``[1, buckets)`` of one feature string (CRC-32)."""
    return 1 + zlib.crc32(feature.encode("utf-8")) % (buckets - 1)


def encode_titles(titles: Iterable[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodes titles for ``nn.EmbeddingBag(buckets, dim, mode="mean")``.

    Args:
        titles: N title strings (None or empty allowed).
        buckets: number of hash buckets (the EmbeddingBag's ``num_embeddings``).

    Returns:
        ``(ids, offsets)``: int64 tensor of all bucket ids concatenated, and int64 tensor of shape
        ``(N,)`` with the start of each title's ids. An empty title gets the single id 0.
    """
    ids: list[int] = []
    offsets: list[int] = []
    for title in titles:
        offsets.append(len(ids))
        feats = title_features(title if isinstance(title, str) else "")
        if feats:
            ids.extend(hash_feature(f, buckets) for f in feats)
        else:
            ids.append(0)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def select_bags(ids: torch.Tensor, offsets: torch.Tensor, index: Sequence[int] | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sub-batch of pre-encoded titles: the bags at ``index``, as new ``(ids, offsets)``."""
    index = torch.as_tensor(index, dtype=torch.long)
    ends = torch.cat([offsets[1:], torch.tensor([ids.numel()])])
    starts, stops = offsets[index], ends[index]
    lengths = stops - starts
    new_offsets = torch.zeros_like(lengths)
    if lengths.numel() > 1:
        new_offsets[1:] = torch.cumsum(lengths, 0)[:-1]
    gather = torch.repeat_interleave(starts - new_offsets, lengths) + torch.arange(int(lengths.sum()))
    return ids[gather], new_offsets
