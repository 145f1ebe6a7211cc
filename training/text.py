"""Text and structured-field features: hashed n-grams for ``nn.EmbeddingBag``.

Text: title word uni/bigrams and character n-grams of each word (lengths ``train.char_ngrams``,
2 to 5 by default), plus the first words of the description (words and bigrams, prefixed so they
stay apart from title words) when the catalog has one.
Structured fields: one token per categorical value (``"brand=nike"``, ``"currency=INR"``,
``"gender=men"``), and a numeric block ``[log1p(price) / 10, price missing]``.

The hash is CRC-32 (``zlib.crc32``), stable across processes and Python versions, unlike the
salted built-in ``hash()``; a model trained in one process therefore reads titles the same way in
serving. Bucket 0 is reserved for empty titles so that every bag has at least one id.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import pandas as pd

    from common.params import TrainParams

_TOKEN = re.compile(r"[a-z0-9]+")


def title_features(title: str, char_ngrams: Sequence[int] = (3,)) -> list[str]:
    """The n-gram strings of one title (lower-cased): words, word bigrams, and the character
    n-grams of each word padded with ``<`` ``>`` (fastText's subwords, Bojanowski et al. 2017;
    scikit-learn's ``char_wb``), for each n in ``char_ngrams``.

    Example:
        >>> title_features("Red Shirt")[:3]
        ['w:red', 'w:shirt', 'b:red shirt']
    """
    words = _TOKEN.findall((title or "").lower())
    feats = [f"w:{w}" for w in words]
    feats += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
    for w in words:
        padded = f"<{w}>"
        for n in char_ngrams:
            prefix = "c:" if n == 3 else f"c{n}:"
            feats += [f"{prefix}{padded[i:i + n]}" for i in range(len(padded) - n + 1)]
    return feats


def hash_feature(feature: str, buckets: int) -> int:
    """Stable bucket id in ``[1, buckets)`` of one feature string (CRC-32)."""
    return 1 + zlib.crc32(feature.encode("utf-8")) % (buckets - 1)


def description_features(description: str | None, max_words: int = 64) -> list[str]:
    """The n-gram strings of a description: its first ``max_words`` words and their bigrams.

    Example:
        >>> description_features("Soft cotton tee", 2)
        ['d:soft', 'd:cotton', 'db:soft cotton']
    """
    if not isinstance(description, str) or max_words <= 0:
        return []
    words = _TOKEN.findall(description.lower())[:max_words]
    return [f"d:{w}" for w in words] + [f"db:{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def _bags(features: Iterable[list[str]], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids: list[int] = []
    offsets: list[int] = []
    for feats in features:
        offsets.append(len(ids))
        if feats:
            ids.extend(hash_feature(f, buckets) for f in feats)
        else:
            ids.append(0)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def encode_texts(titles: Sequence[str | None], descriptions: Sequence[str | None] | None,
                 buckets: int, max_description_words: int = 64,
                 char_ngrams: Sequence[int] = (3,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Encodes title (+ description) bags for ``nn.EmbeddingBag(buckets, dim)``.

    Args:
        titles: N titles (None or empty allowed).
        descriptions: N descriptions, or None when the catalog has none.
        buckets: number of hash buckets.
        max_description_words: words of each description read (0: titles only).
        char_ngrams: character n-gram lengths of the title words.

    Returns:
        ``(ids, offsets)``: int64 tensor of all bucket ids concatenated, and int64 tensor of shape
        ``(N,)`` with the start of each listing's ids. A listing without any feature (an empty
        title, no description) gets the single id 0.
    """
    descriptions = descriptions if descriptions is not None else [None] * len(titles)
    if len(descriptions) != len(titles):
        raise ValueError(f"{len(titles)} titles but {len(descriptions)} descriptions")
    return _bags((title_features(t if isinstance(t, str) else "", char_ngrams)
                  + description_features(d, max_description_words)
                  for t, d in zip(titles, descriptions, strict=True)), buckets)


def field_tokens(row: Mapping[str, object], fields: Sequence[str]) -> list[str]:
    """Tokens of a listing's categorical fields: ``"<field>=<value lower-cased>"``.

    ``fields`` names canonical columns (``brand``, ``currency``) or keys of the listing's
    ``attributes`` (a JSON object of catalog-declared fields, e.g. ``gender``, ``usage``).
    Missing, empty or NaN values give no token.
    """
    attributes = row.get("attributes")
    if isinstance(attributes, str) and attributes:
        try:
            attributes = json.loads(attributes)
        except ValueError:
            attributes = {}
    attributes = attributes if isinstance(attributes, Mapping) else {}
    tokens = []
    for field in fields:
        value = row.get(field, attributes.get(field))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value).strip().lower()
        if text:
            tokens.append(f"{field}={text}")
    return tokens


def price_features(prices: Sequence[object]) -> torch.Tensor:
    """Numeric block of the structured branch.

    Args:
        prices: N prices in the listing's currency (None/NaN/negative: missing).

    Returns:
        float32 ``(N, 2)``: ``log1p(price) / 10`` (0 when missing) and a missing flag (1.0/0.0).
        Dividing by 10 keeps prices up to ~2e4 in ``[0, 1]`` without fitted statistics.
    """
    out = torch.zeros((len(prices), 2), dtype=torch.float32)
    for i, price in enumerate(prices):
        try:
            value = float(price)
        except (TypeError, ValueError):
            value = math.nan
        if math.isnan(value) or value < 0:
            out[i, 1] = 1.0
        else:
            out[i, 0] = math.log1p(value) / 10.0
    return out


def encode_fields(rows: Sequence[Mapping[str, object]], fields: Sequence[str], buckets: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encodes the structured branch's inputs of N listings.

    Args:
        rows: N listings as mappings (canonical columns, optionally ``attributes``).
        fields: categorical fields read (see :func:`field_tokens`).
        buckets: hash buckets of the field embedding.

    Returns:
        ``(ids, offsets, numeric)``: int64 bag ids and ``(N,)`` offsets, float32 ``(N, 2)``
        from :func:`price_features`.
    """
    ids, offsets = _bags((field_tokens(r, fields) for r in rows), buckets)
    return ids, offsets, price_features([r.get("price") for r in rows])


def encode_listings(frame: pd.DataFrame, cfg: TrainParams
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text and structured inputs of listings, as the model reads them in training and serving.

    Args:
        frame: N listings with ``title`` and optionally ``description``, ``price`` and the
            categorical fields ``cfg.fields`` (columns or keys of an ``attributes`` JSON column).
        cfg: the ``train`` params group (``text_buckets``, ``description_words``,
            ``char_ngrams``, ``fields``, ``field_buckets``).

    Returns:
        ``(ids, offsets, field_ids, field_offsets, numeric)``: int64 text bags of
        :func:`encode_texts`, then int64 field bags and float32 ``(N, 2)`` of :func:`encode_fields`.
    """
    descriptions = frame["description"].tolist() if "description" in frame.columns else None
    ids, offsets = encode_texts(frame["title"].tolist(), descriptions, cfg.text_buckets,
                                cfg.description_words, cfg.char_ngrams)
    field_ids, field_offsets, numeric = encode_fields(frame.to_dict("records"), cfg.fields,
                                                      cfg.field_buckets)
    return ids, offsets, field_ids, field_offsets, numeric


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
