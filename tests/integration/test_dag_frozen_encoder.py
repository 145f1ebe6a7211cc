"""The retraining DAG end to end with ``train.image_encoder: frozen``: two weekly ``dag.test()``
runs (real Airflow, GX, DVC, torch, MLflow, the real EfficientNet-Lite0 weights at 96 px) on a
couple of hundred real listings. Week 1's mapped ``embed_images`` tasks embed the images of its
batch in shards of ``train.embed_shard_size``, the embed stage finds them cached, the run trains
on the embeddings, registers and promotes; in week 2 the monitor scores the champion on the new
batch through the shipped encoder and caches those images' embeddings, the shards embed only the
rest, and the gate scores from the workspace's cache: each image is embedded once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.catalog import load_catalog
from common.params import load_params, write_params
from common.state import State
from ingestion.feed import publish
from tests.integration.test_dag_end_to_end import WEEK1, WEEK2, _client, dag_test_env, run_dag
from tests.integration.test_frozen_encoder import ENCODER

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARD = 40
"""Images per mapped embed_images task: a week's ~120 new images make a few shards."""


@pytest.fixture(scope="module")
def frozen_pipeline(tmp_path_factory, fashion_dir, airflow_db):
    root = tmp_path_factory.mktemp("e2e-frozen")
    state = State(root / "state").ensure()
    params = load_params().with_overrides({
        "prepare": {"image_size": 32, "golden_fraction": 0.2, "golden_min_listings": 2},
        "train": {"epochs": 6, "batch_size": 32, "text_buckets": 16384, "text_dim": 64,
                  "image_encoder": "frozen", "encoder": ENCODER, "image_proj_dim": 64,
                  "embed_shard_size": SHARD},
        "gate": {"floor_score": 0.0, "floor_accuracy": 0.0, "min_improvement": 0.0},
    })
    write_params(params, root / "params.yaml")
    with dag_test_env(state, root / "params.yaml"):
        publish(fashion_dir, Path(state.feed_url), weeks=2, catalog=load_catalog("catalogs/fashion.yaml"),
                start=WEEK1.date(), limit=240)
        week1 = run_dag(WEEK1)
        embed1 = json.loads((state.workspace / "reports" / "embed_log.json").read_text())
        week2 = run_dag(WEEK2)
        embed2 = json.loads((state.workspace / "reports" / "embed_log.json").read_text())
        yield {"state": state, "runs": [week1, week2], "embed": [embed1, embed2]}


def _mapped_embeds(run) -> list[str]:
    """The states of a DAG run's mapped embed_images task instances, by map index."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id,
            TaskInstance.task_id == "embed_images", TaskInstance.map_index >= 0).order_by(TaskInstance.map_index)).all()
        return [(ti.map_index, str(ti.state)) for ti in tis]


def test_two_frozen_weeks_run_and_embed_each_image_once(frozen_pipeline):
    from common.store import read_store

    state = frozen_pipeline["state"]
    assert [str(r.state) for r in frozen_pipeline["runs"]] == ["success", "success"]
    embed1, embed2 = frozen_pipeline["embed"]
    store = read_store(state.listings_store, columns=["image_sha256", "batch_id"])
    first, second = store["batch_id"].min(), store["batch_id"].max()
    n1 = store[store["batch_id"] == first]["image_sha256"].nunique()
    total = store["image_sha256"].nunique()
    folder = state.workspace / "data" / "embeddings" / embed1["encoder_id"]

    def shard_rows(batch_id: str) -> list[int]:
        return [len(np.load(f)["image_sha256"]) for f in sorted(folder.glob(f"{batch_id}+s*.npz"))]

    # week 1: the mapped tasks embedded the batch's images, a shard each; the stage found them cached
    assert sum(shard_rows(first)) == n1 and len(shard_rows(first)) == -(-n1 // SHARD) >= 2
    assert _mapped_embeds(frozen_pipeline["runs"][0]) == [(i, "success") for i in range(-(-n1 // SHARD))]
    assert embed1["embedded"] == 0 and embed1["reused"] == n1
    # week 2: the monitor scored the champion on the new batch first and cached the embeddings of
    # its images under the batch's name; the shards embedded only what the monitor had not
    with np.load(folder / f"{second}.npz") as data:
        by_monitor = len(data["image_sha256"])
    assert by_monitor > 0 and sum(shard_rows(second)) == total - n1 - by_monitor
    assert len(_mapped_embeds(frozen_pipeline["runs"][1])) == len(shard_rows(second))
    assert embed2["embedded"] == 0 and embed2["reused"] == total
    cached = np.concatenate([np.load(f)["image_sha256"] for f in sorted(folder.glob("*.npz"))])
    assert len(cached) == len(set(cached.tolist())) == total  # each image once
    log = json.loads((state.workspace / "models" / "train_log.json").read_text())
    assert log["image_encoder"] == "frozen" and log["images_embedded"] == 0

    client = _client(state)
    champion = client.get_model_version_by_alias("listing-classifier", "champion")
    versions = client.search_model_versions("name = 'listing-classifier'")
    assert len(versions) == 2
    for v in versions:
        assert client.get_run(v.run_id).data.tags["image_encoder"] == "frozen"
        assert "| its weights' licence | `Apache-2.0` |" in v.description  # not a version tag (issue 29)
        assert v.tags["decision"] in {"promoted", "rejected"}
    assert champion.tags["decision"] == "promoted"
