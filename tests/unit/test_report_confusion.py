"""The confusion matrix a reviewer opens in MLflow stays legible on a large taxonomy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from promotion.gate import per_listing
from promotion.report import CONFUSION_MAX_LEAVES, confusion_png


def test_a_large_taxonomy_draws_its_most_confused_leaves_and_keeps_the_full_matrix(tmp_path):
    leaves = [f"Top > Sub{i // 10} > Leaf {i:03d}" for i in range(120)]
    rng = np.random.default_rng(0)
    true = [leaves[i] for i in rng.integers(0, len(leaves), 3000)]
    pred = [t if rng.random() < 0.8 else leaves[rng.integers(len(leaves))] for t in true]
    listings = per_listing([str(i) for i in range(len(true))], true, pred, np.ones(len(true)), np.ones(len(true)))
    png = confusion_png(listings, tmp_path / "confusion_challenger.png", "challenger v2")
    full = pd.read_csv(tmp_path / "confusion_challenger.csv", index_col=0)
    assert full.shape == (120, 120) and int(full.to_numpy().sum()) == 3000
    assert full.loc[true[0], pred[0]] >= 1
    with Image.open(png) as img:  # about 0.3 inch a row for 40 leaves, not 0.25 inch for 120
        assert max(img.size) <= (0.3 * CONFUSION_MAX_LEAVES + 3) * 110 + 1
