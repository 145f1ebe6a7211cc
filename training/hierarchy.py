"""The taxonomy as the model sees it: one label set per level, and each leaf's ancestors.

The classifier predicts every level of the taxonomy with its own head (as Criteo's catalogue
team does, heads weighted by depth) and combines them into one distribution over *leaves*, so a
prediction is always a leaf of the tree together with its own ancestors: the returned path can
never pair a level-1 guess with an unrelated leaf.

Leaves are the full category paths seen in training (``"Apparel > Topwear > Tshirts"``). Level
``k`` (0-based) labels are the path prefixes of ``k + 1`` levels; a path shorter than the
deepest one is its own prefix at the deeper levels (``"A > B"`` at level 2 is ``"A > B"``).

Example:
    >>> tree = LabelTree(["A > x", "A > y", "B > z"])
    >>> tree.level_labels
    [['A', 'B'], ['A > x', 'A > y', 'B > z']]
    >>> tree.ancestors.tolist()
    [[0, 0, 1], [0, 1, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from common.catalog import PATH_SEP, split_path


class LabelTree:
    """Per-level label sets of a list of leaf category paths.

    Args:
        leaves: the leaf category paths (class order of the leaf head), unique.

    Attributes:
        leaves: the leaf paths, as given.
        depth: number of levels of the deepest path.
        level_labels: ``depth`` sorted lists of level labels; the last one equals ``leaves``
            when all paths have the same depth.
        ancestors: int64 tensor ``(depth, n_leaves)``: index in ``level_labels[k]`` of leaf
            ``j``'s level-``k`` ancestor.

    Raises:
        ValueError: when ``leaves`` is empty or has duplicates.
    """

    def __init__(self, leaves: Sequence[str]) -> None:
        leaves = [str(p) for p in leaves]
        if not leaves:
            raise ValueError("no leaf category")
        if len(set(leaves)) != len(leaves):
            raise ValueError("leaf categories must be unique")
        self.leaves = leaves
        levels = [split_path(p) for p in leaves]
        self.depth = max(len(p) for p in levels)
        prefixes = [[PATH_SEP.join(p[:k + 1]) for p in levels] for k in range(self.depth)]
        self.level_labels = [sorted(set(level)) for level in prefixes]
        index = [{label: i for i, label in enumerate(labels)} for labels in self.level_labels]
        self.ancestors = torch.tensor(
            [[index[k][label] for label in prefixes[k]] for k in range(self.depth)], dtype=torch.long)

    @property
    def sizes(self) -> list[int]:
        """Number of labels at each level (the width of each head)."""
        return [len(labels) for labels in self.level_labels]

    def level_targets(self, leaf_targets: torch.Tensor) -> list[torch.Tensor]:
        """Targets of every level from leaf targets.

        Args:
            leaf_targets: int64 ``(N,)`` leaf indices; ``-1`` (unknown category) stays ``-1``.

        Returns:
            ``depth`` int64 tensors ``(N,)``.
        """
        known = leaf_targets >= 0
        safe = leaf_targets.clamp(min=0)
        return [torch.where(known, self.ancestors[k].to(safe.device)[safe], -1)
                for k in range(self.depth)]


def level_weights(weights: Sequence[float], depth: int) -> list[float]:
    """Loss weights of a taxonomy's levels from the ``train.level_weights`` param.

    The param lists weights from the top level down; a deeper taxonomy gets 1.0 for the levels
    the list does not cover, a shallower one uses the last ``depth`` entries (the leaf keeps the
    last weight).

    Raises:
        ValueError: when the leaf level gets weight 0 (the leaf head would not learn).
    """
    weights = [float(w) for w in weights] or [1.0]
    if len(weights) >= depth:
        out = weights[len(weights) - depth:]
    else:
        out = weights + [1.0] * (depth - len(weights))
    if out[-1] <= 0:
        raise ValueError(f"train.level_weights: the leaf level needs a weight > 0, got {out}")
    return out
