"""The text and structured branches of the listing classifier (``training.model``).

Both read hashed bags of tokens (``training.text``): :class:`BagEncoder` the title and description
n-grams, :class:`FieldEncoder` the categorical field tokens plus the numeric block.
"""

from __future__ import annotations

import torch
from torch import nn


class BagEncoder(nn.Module):
    """Mean of hashed n-gram embeddings, then a small MLP (the text branch).

    Args:
        buckets: number of hash buckets.
        dim: embedding and output dimension.
    """

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU())
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids, offsets))


class FieldEncoder(nn.Module):
    """The structured branch: categorical field tokens (summed embeddings) + the numeric block.

    Args:
        buckets: hash buckets of the field tokens (see ``training.text.encode_fields``).
        dim: output dimension.
        numeric: width of the numeric block (2: log-price, price-missing flag).
    """

    def __init__(self, buckets: int, dim: int, numeric: int = 2) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="sum")
        self.numeric = nn.Linear(numeric, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.out_dim = dim

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids, offsets) + self.numeric(numeric))
