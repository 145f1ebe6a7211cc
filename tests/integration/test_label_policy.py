"""Label issues end to end: the policy ``validate.label_issues`` and the golden suspects, with the
real registry (SQLite store), real DVC, real GX and real models.

The session's tiny trained workspace is copied with a registry of its own; its model becomes the
champion. A new weekly batch of real fashion listings is published, and some of its listings of
the champion's categories are given another of them (as a seller's or a tagger's mistake
would), then ingested and validated. The flow, one step after the other:

1. ``monitor`` (:func:`monitoring.fresh_batch.score_champion_on_fresh`): the champion flags the
   fresh listings whose label is likely wrong; the CSV lands on the monitoring run, in the DVC
   workspace (``data/label_issues/<batch>.csv``) and in the batch's manifest entry.
2. ``version_data`` with ``exclude_from_training`` versions the flags with DVC (a retry adds
   nothing); ``dvc repro`` leaves the flagged listings out of train/val (still in the store), and
   ``prepare``'s ``excluded.json`` and the registered run's metrics carry the count.
3. The gate lists the golden listings whose label is likely wrong
   (``label_issues/golden-<golden_rev>.csv`` on the challenger's run) and drops none.
4. ``version_data`` with ``flag``: DVC re-runs ``prepare`` for the param alone, and the flagged
   listings are trained on.

Several minutes on the shared 2-core box (two ``dvc repro`` of the tiny model, the gate's
serving check); ``-s`` prints each step's time.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from common.catalog import load_catalog
from ingestion.feed import publish
from tests.integration.test_promotion_champion import copy_state, gate_params, timed
from tests.integration.test_promotion_registry import NAME, client_for

pytestmark = pytest.mark.integration

MISLABELLED = 16
"""Fresh listings of the champion's categories given another of its categories in the feed."""


def _mislabel(feed: Path, batch_id: str, known: list[str], n: int) -> list[str]:
    """Gives ``n`` listings of the batch's CSV whose category the model knows another known
    category (the next one in ``known``, a different master category where there is one).

    Returns:
        The listing ids changed.
    """
    path = feed / batch_id / "styles.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    paths = frame["masterCategory"] + " > " + frame["subCategory"] + " > " + frame["articleType"]
    rows = [i for i in frame.index if paths[i] in known][:n]
    for k, i in enumerate(rows):
        others = [c for c in known if c.split(" > ")[0] != paths[i].split(" > ")[0]] or \
            [c for c in known if c != paths[i]]
        frame.loc[i, ["masterCategory", "subCategory", "articleType"]] = others[k % len(others)].split(" > ")
    frame.to_csv(path, index=False)
    return frame.loc[rows, "id"].tolist()


def _to_store_schema(store: Path) -> None:
    """Rewrites the tiny fixture's partitions in the store's schema.

    ``tests.integration.test_training_stages.build_workspace`` writes its partitions directly,
    with ``ingested_at`` a timestamp; validation writes it as a string
    (:data:`common.store.STORE_SCHEMA`), and one table of both (the prepared splits) cannot be
    written. The copied state's partitions are put in the schema validation writes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from common.store import STORE_SCHEMA

    for path in store.glob("batches/*/listings.parquet"):
        frame = pd.read_parquet(path)
        frame["ingested_at"] = [pd.Timestamp(v).isoformat() for v in frame["ingested_at"]]
        pq.write_table(pa.Table.from_pandas(frame[STORE_SCHEMA.names], schema=STORE_SCHEMA,
                                            preserve_index=False), path)


def _prepared(state) -> dict:
    out = state.workspace / "data" / "prepared"
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "val", "golden")}
    return {"frames": frames, "excluded": json.loads((out / "excluded.json").read_text()),
            "trained_ids": set(frames["train"]["listing_id"]) | set(frames["val"]["listing_id"]),
            "lock": yaml.safe_load((state.workspace / "dvc.lock").read_text())["stages"]["prepare"]}


@pytest.fixture(scope="module")
def flow(tiny_trained, fashion_dir, tmp_path_factory):
    import mlflow

    from common.store import read_store
    from ingestion.ingest import ingest_new_batches
    from ingestion.versioning import version_data
    from monitoring.fresh_batch import score_champion_on_fresh
    from promotion.promote import gate_challenger, promote
    from promotion.register import register_challenger
    from training.pipeline import run_pipeline
    from validation.staged import validate_staged_batches

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LCP_FEED_URL", None)
    out = {"seconds": {}}
    t = out["seconds"]
    state = copy_state(tiny_trained["state"], tmp_path_factory.mktemp("label-policy") / "state")
    _to_store_schema(state.listings_store)
    # frozen: the fixture's golden table keeps its timestamps (a grown one would mix both)
    flag = gate_params(tiny_trained["params"]).with_overrides({"prepare": {"golden_policy": "frozen"}})
    exclude = flag.with_overrides({"validate": {"label_issues": "exclude_from_training"}})
    assert flag.validate_.label_issues == "flag"
    client = client_for(state)
    out.update(state=state, client=client)

    with timed(t, "champion: register, gate, promote"):
        data, trained = tiny_trained["data"], tiny_trained["trained"]
        v1 = register_challenger(state, flag, data, trained.workspace_commit, "test_dag", "run-1")
        promote(state, flag, gate_challenger(state, flag, v1.version, data.golden_rev))
    known = sorted(read_store(state.listings_store)["category_path"].unique())
    (batch,) = publish(fashion_dir, Path(state.feed_url), weeks=1, catalog=load_catalog("catalogs/fashion.yaml"),
                       start=date(2026, 11, 2), limit=200)
    out["mislabelled"] = _mislabel(Path(state.feed_url), batch, known, MISLABELLED)
    with timed(t, "ingest, validate"):
        ingested = ingest_new_batches(state, flag, datetime(2026, 11, 9, tzinfo=UTC))
        batches = list(validate_staged_batches(state, flag, ingested.staged).stored_batches)
    assert batches == [batch]

    # 1. monitor: the champion flags the fresh listings
    with timed(t, "monitor"):
        out["monitor"] = score_champion_on_fresh(state, exclude, batches)
    out["flags"] = pd.read_csv(state.workspace / out["monitor"].label_issue_files[0], dtype=str,
                               keep_default_na=False)
    out["flags_artifact"] = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{out['monitor'].monitoring_run_id}/label_issues/{batch}.csv")), dtype=str, keep_default_na=False)
    out["batch"] = batch

    # 2. exclude_from_training: versioned, retried, trained, registered
    with timed(t, "version_data (exclude) and its retry"):
        out["data_x"] = version_data(state, exclude, note="exclude")
        out["again"] = version_data(state, exclude, note="retry")
    out["store"] = read_store(state.listings_store)
    out["golden_before_gate"] = pd.read_parquet(state.golden_dir / "golden.parquet")
    with timed(t, "dvc repro (exclude)"):
        trained_x = run_pipeline(state, note="exclude")
    out["x"] = _prepared(state)
    with timed(t, "challenger: register, gate"):
        v2 = register_challenger(state, exclude, out["data_x"], trained_x.workspace_commit, "test_dag", "run-2")
        out["gate"] = gate_challenger(state, exclude, v2.version, out["data_x"].golden_rev)
    out["run"] = client.get_run(v2.run_id)
    out["v2"] = client.get_model_version(NAME, v2.version)
    out["golden_after_gate"] = pd.read_parquet(state.golden_dir / "golden.parquet")
    suspects = out["gate"].golden_label_issues or {}
    out["suspects"] = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{v2.run_id}/label_issues/golden-{out['data_x'].golden_rev}.csv")), dtype=str,
        keep_default_na=False) if "artifact" in suspects else None

    # 4. flag: the param alone re-runs prepare
    with timed(t, "version_data, dvc repro (flag)"):
        out["data_f"] = version_data(state, flag, note="flag")
        run_pipeline(state, note="flag")
    out["f"] = _prepared(state)
    return out


def _expected_exclusions(flow) -> set[str]:
    """Flagged listings outside the golden set whose current label is still the flagged one."""
    store = flow["store"].set_index("listing_id")["category_path"]
    golden = set(flow["x"]["frames"]["golden"]["listing_id"])
    return {r.listing_id for r in flow["flags"].itertuples()
            if r.listing_id not in golden and store.get(r.listing_id) == r.given_label}


def test_the_monitor_writes_the_flags_to_the_workspace_and_the_manifest(flow):
    from ingestion.manifest import read_manifest
    from monitoring.label_issues import ISSUE_COLUMNS

    monitor, flags, batch = flow["monitor"], flow["flags"], flow["batch"]
    assert monitor.skipped is None and monitor.label_issues == len(flags) > 0
    assert monitor.label_issue_files == (f"data/label_issues/{batch}.csv",)
    assert list(flags.columns) == list(ISSUE_COLUMNS)
    assert flags.equals(flow["flags_artifact"]), "the workspace CSV is the monitoring run's artifact"
    entry = read_manifest(flow["state"].manifest)[batch]["label_issues"]
    assert entry == {"flagged": len(flags), "csv": f"data/label_issues/{batch}.csv",
                     "artifact": f"runs:/{monitor.monitoring_run_id}/label_issues/{batch}.csv",
                     "champion_version": monitor.champion_version}
    # the listings mislabelled in the feed are among those the champion judged
    print(f"[label policy] {len(flags)} flagged of {monitor.listings} fresh listings; "
          f"{len(set(flow['mislabelled']) & set(flags['listing_id']))} of {MISLABELLED} mislabelled ones")


def test_the_flags_are_versioned_once_with_dvc(flow):
    from ingestion.workspace import run_git

    ws = flow["state"].workspace
    assert "data/label_issues" in flow["data_x"].added and "data/label_issues" in flow["data_x"].pushed
    # (the tiny fixture's store keeps images outside partition folders, so data/listings is
    # re-added whole, to the same hash: the commit does not move)
    assert "data/label_issues" not in flow["again"].added, "a retried version adds the flags again"
    assert flow["again"].data_rev == flow["data_x"].data_rev
    pointer = yaml.safe_load(run_git(ws, "show", f"{flow['data_x'].data_rev}:data/label_issues.dvc"))
    assert pointer["outs"][0]["nfiles"] == 1
    # the flags are a dependency of prepare, pinned by dvc.lock with the policy
    deps = {d["path"]: d for d in flow["x"]["lock"]["deps"]}
    assert deps["data/label_issues"]["md5"] == pointer["outs"][0]["md5"]
    assert flow["x"]["lock"]["params"]["params.yaml"]["validate.label_issues"] == "exclude_from_training"


def test_exclude_from_training_keeps_flagged_listings_out_of_train_and_val(flow):
    expected = _expected_exclusions(flow)
    assert expected, "no flagged listing outside the golden set: nothing to exclude"
    x = flow["x"]
    assert not expected & x["trained_ids"]
    assert expected <= set(flow["store"]["listing_id"]), "excluded listings stay in the store"
    assert x["excluded"]["policy"] == "exclude_from_training"
    assert set(x["excluded"]["excluded_ids"]) == expected and x["excluded"]["excluded"] == len(expected)
    # the listings neither golden nor flagged are all trained on
    everything = set(flow["store"]["listing_id"]) - set(x["frames"]["golden"]["listing_id"])
    assert x["trained_ids"] == everything - expected
    # the registered run shows the count
    run = flow["run"]
    assert run.data.metrics["label_issues_excluded"] == len(expected)
    assert run.data.metrics["label_issues_flagged"] == len(expected)
    assert run.data.tags["label_issues_policy"] == "exclude_from_training"


def test_flag_trains_on_the_flagged_listings(flow):
    expected, f = _expected_exclusions(flow), flow["f"]
    assert f["lock"]["params"]["params.yaml"]["validate.label_issues"] == "flag"
    assert f["excluded"] == {"policy": "flag", "flagged": len(expected), "excluded": 0,
                             "cleared_by_relabel": 0, "excluded_ids": []}
    assert expected <= f["trained_ids"]
    assert f["trained_ids"] == flow["x"]["trained_ids"] | expected
    assert "data/label_issues" not in flow["data_f"].added, "the policy is a param: the flags did not change"


def test_golden_suspects_are_listed_for_relabelling_and_none_is_dropped(flow):
    from monitoring.label_issues import ISSUE_COLUMNS

    gate, suspects = flow["gate"], flow["suspects"]
    info = gate.golden_label_issues
    assert info is not None and "error" not in info, info
    assert info["artifact"] == f"label_issues/golden-{flow['data_x'].golden_rev}.csv"
    assert info["scored_by"] == str(gate.champion_version), "the champion's out-of-sample probabilities"
    assert suspects is not None and list(suspects.columns) == list(ISSUE_COLUMNS)
    assert info["flagged"] == len(suspects) and info["checked"] + info["unknown_label"] == gate.n_golden
    golden = flow["golden_after_gate"]
    assert flow["golden_before_gate"].equals(golden), "the gate changed the golden set"
    assert set(suspects["listing_id"]) <= set(golden["listing_id"])
    assert set(suspects["listing_id"]) <= set(flow["x"]["frames"]["golden"]["listing_id"]), \
        "a suspect left the prepared golden set"
    truth = golden.set_index("listing_id")["category_path"]
    assert all(truth[r.listing_id] == r.given_label for r in suspects.itertuples())
    # the count is in the version's description (the gate's report) and decision.json
    assert f"**Golden listings to relabel:** {len(suspects)} flagged" in flow["v2"].description
    print(f"[label policy] golden suspects: {len(suspects)} of {gate.n_golden}; steps {flow['seconds']}")
