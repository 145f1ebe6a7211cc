"""The week's new images embedded in shards (``training.embed_shards``, the DAG's mapped
``embed_images``) with the real EfficientNet-Lite0 weights on a store of real fashion listings:
the shards' files are the embedding cache's, the embed stage embeds only what no shard did, a
retried shard does nothing, and a re-plan leaves out what is cached."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.state import State
from tests.integration.test_frozen_encoder import frozen_params
from tests.integration.test_training_stages import build_workspace

pytestmark = pytest.mark.integration

SHARD = 60


def test_shards_embed_a_batch_and_the_embed_stage_does_only_the_rest(fashion_dir, tmp_path):
    from common.store import batch_file, image_path
    from training.embed_shards import embed_shard, plan_embed_shards
    from training.embeddings import EMBEDDINGS, EmbeddingCache, embed_images, embed_store
    from training.encoders import load_encoder

    state = State(tmp_path / "state").ensure()
    build_workspace(fashion_dir, state.workspace)
    params = frozen_params().with_overrides({"train": {"embed_shard_size": SHARD}})
    batch = "2025-01-06"
    rows = pd.read_parquet(batch_file(state.listings_store, batch)).drop_duplicates("image_sha256")

    assert plan_embed_shards(state, frozen_params().with_overrides({"train": {"image_encoder": "scratch"}}),
                             [batch]) == []
    shards = plan_embed_shards(state, params, [batch, "no-such-batch"])
    assert [(s.batch_id, s.start, s.stop) for s in shards] == [
        (batch, i, min(i + SHARD, len(rows))) for i in range(0, len(rows), SHARD)]
    assert len(shards) == 3

    # two of three shards run (a worker each); one of them is retried
    done = [embed_shard(state, params, shards[0]), embed_shard(state, params, shards[2])]
    assert [r.embedded for r in done] == [SHARD, len(rows) - 2 * SHARD] and all(r.file for r in done)
    retried = embed_shard(state, params, shards[0])
    assert retried.embedded == 0 and retried.skipped == "already embedded (a retry)"

    encoder = load_encoder(params.train.encoder)
    cache = EmbeddingCache(state.workspace / EMBEDDINGS, encoder.id)
    assert len(cache.files()) == 2 and len(cache.sha256s()) == len(rows) - SHARD
    some = rows.iloc[:3]  # shard 0's first images: what the shard wrote is what the encoder gives
    direct = embed_images(encoder, [image_path(state.listings_store, k) for k in some["image_key"]])
    np.testing.assert_allclose(cache.lookup(some["image_sha256"].tolist()), direct, atol=1e-5)

    # the embed stage (dvc repro's reduce step) embeds the missing shard and the other batch only
    record = embed_store(state.workspace, params)
    other = pd.read_parquet(batch_file(state.listings_store, "2025-01-13"))["image_sha256"]
    missing_other = len(set(other) - set(rows["image_sha256"]))
    assert record["embedded"] == SHARD + missing_other
    assert record["reused"] == len(rows) - SHARD + (other.nunique() - missing_other)
    # planned again, nothing is left to embed
    assert plan_embed_shards(state, params, [batch, "2025-01-13"]) == []


def test_a_shard_skips_what_was_cached_since_its_plan_and_reads_no_older_file(fashion_dir, tmp_path):
    """A shard re-checks the cache only for files written since the plan read it (what the
    monitor or another shard cached meanwhile): those images are skipped; a file from before the
    plan is not read again (the plan has read it), so each shard's cost follows the week."""
    import json
    import os

    from common.store import batch_file, image_path
    from training.embed_shards import _plan_file, embed_shard, plan_embed_shards
    from training.embeddings import EMBEDDINGS, EmbeddingCache, embed_images
    from training.encoders import load_encoder

    state = State(tmp_path / "state").ensure()
    build_workspace(fashion_dir, state.workspace)
    params = frozen_params().with_overrides({"train": {"embed_shard_size": SHARD}})
    batch = "2025-01-06"
    shards = plan_embed_shards(state, params, [batch])
    assert len(shards) >= 2
    plan = json.loads(_plan_file(state, shards[0].encoder_id, batch).read_text())
    encoder = load_encoder(params.train.encoder)
    cache = EmbeddingCache(state.workspace / EMBEDDINGS, encoder.id)

    def cache_now(shard, count: int):
        shas = plan["image_sha256"][shard.start:shard.start + count]
        keys = plan["image_key"][shard.start:shard.start + count]
        return cache.add(batch, shas, embed_images(encoder, [image_path(state.listings_store, k) for k in keys]))

    cache_now(shards[0], 5)  # cached meanwhile: after the plan
    old = cache_now(shards[1], 4)
    os.utime(old, (plan["planned_at"] - 3600, plan["planned_at"] - 3600))  # as if before the plan

    first = embed_shard(state, params, shards[0])
    assert (first.embedded, first.reused) == (SHARD - 5, 5)
    second = embed_shard(state, params, shards[1])
    assert second.embedded == shards[1].stop - shards[1].start and second.reused == 0
    rows = pd.read_parquet(batch_file(state.listings_store, batch))
    assert set(cache.sha256s()) <= set(rows["image_sha256"])
