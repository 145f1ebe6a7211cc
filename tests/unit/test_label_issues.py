"""monitoring.label_issues: confident learning (cleanlab) over a model's class probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.label_issues import ISSUE_COLUMNS, find_label_issues

CLASSES = ["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Footwear > Shoes > Casual Shoes",
           "Accessories > Watches > Watches"]


def _probs(true: np.ndarray, rng: np.random.Generator, sharp: float = 0.9) -> np.ndarray:
    """Probabilities of a good model: ``sharp`` on the true class, the rest spread at random."""
    n, c = len(true), len(CLASSES)
    rest = rng.dirichlet(np.ones(c - 1), size=n) * (1 - sharp)
    probs = np.zeros((n, c))
    for i, t in enumerate(true):
        probs[i, [j for j in range(c) if j != t]] = rest[i]
        probs[i, t] = sharp
    return probs


def test_flipped_labels_are_flagged_and_the_rest_are_not():
    rng = np.random.default_rng(0)
    true = rng.integers(0, len(CLASSES), size=400)
    given = true.copy()
    flipped = rng.choice(400, size=20, replace=False)
    given[flipped] = (true[flipped] + 1) % len(CLASSES)  # a sibling or neighbour category
    ids = [f"L{i}" for i in range(400)]
    found = find_label_issues(ids, [f"title {i}" for i in range(400)], [CLASSES[g] for g in given],
                              _probs(true, rng), CLASSES)
    assert list(found.issues.columns) == list(ISSUE_COLUMNS)
    assert set(found.issues["listing_id"]) == {ids[i] for i in flipped}
    # least confident first; the suggestion is the model's class, the confidence the given label's
    assert found.issues["self_confidence"].is_monotonic_increasing
    row = found.issues.iloc[0]
    i = int(row["listing_id"][1:])
    assert row["suggested_label"] == CLASSES[true[i]] and row["given_label"] == CLASSES[given[i]]
    assert found.to_dict() == {"flagged": 20, "checked": 400, "unknown_label": 0, "flagged_share": 0.05}


def test_a_label_the_model_does_not_know_is_counted_not_flagged():
    rng = np.random.default_rng(1)
    true = rng.integers(0, len(CLASSES), size=100)
    labels = [CLASSES[t] for t in true]
    labels[:5] = ["Home > Decor > Candles"] * 5  # a category newer than the model
    found = find_label_issues([str(i) for i in range(100)], ["t"] * 100, labels, _probs(true, rng), CLASSES)
    assert found.checked == 95 and found.unknown_label == 5
    assert not set(found.issues["listing_id"]) & {str(i) for i in range(5)}


def test_shapes_that_disagree_are_refused():
    with pytest.raises(ValueError, match="do not agree"):
        find_label_issues(["a", "b"], ["x", "y"], [CLASSES[0], CLASSES[1]], np.ones((3, 4)) / 4, CLASSES)


# --- The exclusion rule of the prepare stage (validate.label_issues) --------------------------

A, B, C = CLASSES[0], CLASSES[1], CLASSES[2]


def _flags_file(folder, batch_id: str, rows: list[tuple[str, str, str]]):
    """A monitor CSV (:data:`ISSUE_COLUMNS`) of ``(listing_id, given_label, suggested_label)``."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame([{"listing_id": i, "title": f"title {i}", "given_label": g, "suggested_label": s,
                           "self_confidence": 0.01} for i, g, s in rows], columns=list(ISSUE_COLUMNS))
    frame.to_csv(folder / f"{batch_id}.csv", index=False)


def test_a_flag_holds_while_the_flagged_label_is_current_and_a_relabel_clears_it(tmp_path):
    import pandas as pd

    from training.prepare import label_issue_exclusions

    flags = tmp_path / "label_issues"
    _flags_file(flags, "b-2026-11-09", [("1", A, B), ("2", A, B), ("3", B, A), ("9", C, A)])
    _flags_file(flags, "b-2026-11-16", [])  # a week with nothing flagged: a header only
    # the store's current rows: 1 unchanged, 2 relabelled to what was suggested, 3 updated with
    # the same (flagged) label, 9 gone (golden or removed), 4 never flagged
    current = pd.DataFrame({"listing_id": ["1", "2", "3", "4"], "category_path": [A, B, B, C]})
    found = label_issue_exclusions(current, flags)
    assert found["listing_id"].tolist() == ["1", "2", "3"]
    assert found.set_index("listing_id")["active"].to_dict() == {"1": True, "2": False, "3": True}
    assert found.set_index("listing_id")["current_label"].to_dict() == {"1": A, "2": B, "3": B}
    assert set(found["flagged_in"]) == {"b-2026-11-09"}


def test_no_flag_folder_means_no_flag_and_a_malformed_file_is_refused(tmp_path):
    import pandas as pd

    from training.prepare import label_issue_exclusions

    current = pd.DataFrame({"listing_id": ["1"], "category_path": [A]})
    found = label_issue_exclusions(current, tmp_path / "absent")
    assert found.empty and list(found.columns) == ["listing_id", "given_label", "flagged_in",
                                                    "current_label", "active"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "b1.csv").write_text("listing_id,label\n1,x\n")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['given_label'\]"):
        label_issue_exclusions(current, tmp_path / "bad")


def _tiny_workspace(root, fashion_dir, n: int = 36):
    """A workspace with a store of ``n`` real fashion listings in 3 leaves (one partition, written
    by the store's own writer) and a golden set of 3 of them."""
    import hashlib

    import pandas as pd

    from common.catalog import CANONICAL_COLUMNS, PATH_SEP
    from common.store import read_store, write_partition

    styles = pd.read_csv(fashion_dir / "styles.csv", dtype=str, keep_default_na=False)
    styles = styles[[(fashion_dir / "images" / f"{i}.jpg").is_file() for i in styles["id"]]]
    styles = styles[styles["articleType"].isin(["Tshirts", "Shirts", "Casual Shoes"])]
    styles = styles.groupby("articleType").head(n // 3)
    records, images = [], []
    for r in styles.itertuples():
        source = fashion_dir / "images" / f"{r.id}.jpg"
        images.append((source, hashlib.sha256(source.read_bytes()).hexdigest(), ".jpg"))
        records.append({"listing_id": r.id, "title": r.productDisplayName, "description": None, "brand": None,
                        "price": None, "currency": "INR", "attributes": None,
                        "category_path": PATH_SEP.join([r.masterCategory, r.subCategory, r.articleType]),
                        "image_key": None, "image_sha256": None, "catalog": "fashion",
                        "batch_id": "b-2026-11-02", "ingested_at": "2026-11-02T00:00:00+00:00"})
    store = root / "data" / "listings"
    write_partition(store, "b-2026-11-02", pd.DataFrame(records)[list(CANONICAL_COLUMNS)], images)
    listings = read_store(store)
    golden = listings.groupby("category_path").head(1)
    (root / "data" / "golden").mkdir(parents=True)
    golden.to_parquet(root / "data" / "golden" / "golden.parquet", index=False)
    return listings, set(golden["listing_id"])


@pytest.mark.parametrize("policy", ["flag", "exclude_from_training"])
def test_prepare_leaves_flagged_listings_out_of_training_only_when_told(tmp_path, fashion_dir, policy):
    import json

    import pandas as pd

    from common.params import Params
    from common.store import read_store
    from training.prepare import EXCLUDED_FILE, LABEL_ISSUES_DIR, prepare

    listings, golden_ids = _tiny_workspace(tmp_path, fashion_dir)
    pool = listings[~listings["listing_id"].isin(golden_ids)]
    flagged = pool.groupby("category_path").nth(1)  # one per leaf, flagged with its current label
    relabelled = pool.groupby("category_path").nth(2)  # flagged with a label it no longer has
    golden_flag = listings[listings["listing_id"].isin(golden_ids)].iloc[0]
    rows = [(r.listing_id, r.category_path, A) for r in flagged.itertuples()]
    rows += [(r.listing_id, "Apparel > Topwear > Kurtas", r.category_path) for r in relabelled.itertuples()]
    rows += [(golden_flag["listing_id"], golden_flag["category_path"], A)]
    _flags_file(tmp_path / LABEL_ISSUES_DIR, "b-2026-11-02", rows)

    params = Params().with_overrides({"validate": {"label_issues": policy}, "prepare": {"val_fraction": 0.2}})
    summary = prepare(tmp_path, params, workers=1)
    out = tmp_path / "data" / "prepared"
    trained = set(pd.read_parquet(out / "train.parquet")["listing_id"]) | set(
        pd.read_parquet(out / "val.parquet")["listing_id"])
    record = json.loads((out / EXCLUDED_FILE).read_text())
    expected = sorted(flagged["listing_id"])
    assert record["policy"] == policy and record["flagged"] == len(expected) == 3
    assert record["cleared_by_relabel"] == len(relabelled) == 3
    if policy == "exclude_from_training":
        assert record["excluded_ids"] == expected and record["excluded"] == summary["excluded_label_issues"] == 3
        assert not trained & set(expected)
        assert trained == set(pool["listing_id"]) - set(expected)
    else:
        assert record["excluded_ids"] == [] and summary["excluded_label_issues"] == 0
        assert trained == set(pool["listing_id"])  # flagged listings are trained on
    assert set(relabelled["listing_id"]) <= trained  # a relabel cleared their flag
    # the store and the golden set are untouched; a flagged golden listing stays golden
    assert read_store(tmp_path / "data" / "listings").equals(listings)
    assert golden_flag["listing_id"] in set(pd.read_parquet(out / "golden.parquet")["listing_id"])
    assert np.load(out / "train_images.npy").shape[0] == summary["train"]


def test_versioning_and_prepare_name_the_same_flags_folder():
    from ingestion.versioning import LABEL_ISSUES
    from training.prepare import LABEL_ISSUES_DIR

    assert LABEL_ISSUES == LABEL_ISSUES_DIR.as_posix()


def test_the_gate_report_counts_the_golden_suspects():
    import pandas as pd

    from promotion.report import markdown_report

    result = {"decision": "rejected", "reason": "r", "version": "2", "candidate_score": 0.5,
              "golden_rev": "abc.dir", "n_golden": 40,
              "golden_label_issues": {"flagged": 4, "checked": 40, "scored_by": "1",
                                      "artifact": "label_issues/golden-abc.dir.csv"}}
    text = markdown_report(result, pd.DataFrame(columns=["category_path", "support", "value", "recall_candidate",
                                                         "recall_champion", "delta"]), {}, 5)
    assert ("**Golden listings to relabel:** 4 flagged by confident learning on v1's out-of-sample "
            "probabilities (`label_issues/golden-abc.dir.csv`") in text
    assert "relabel" not in markdown_report({**result, "golden_label_issues": None}, pd.DataFrame(
        columns=["category_path", "support", "value", "recall_candidate", "recall_champion", "delta"]), {}, 5)


def test_categories_too_rare_to_judge_are_named_in_one_line_not_warned_by_number(caplog, recwarn):
    """cleanlab warns once per class it cannot prune, naming it by column index ("class: 3");
    the platform logs one line naming the categories, and no such warning reaches the task log."""
    import logging

    rng = np.random.default_rng(1)
    true = np.concatenate([rng.integers(0, 3, size=120), [3]])  # one watch: too few to judge
    with caplog.at_level(logging.INFO, logger="common.label_issues"):
        find_label_issues([f"L{i}" for i in range(len(true))], ["t"] * len(true),
                          [CLASSES[t] for t in true], _probs(true, rng), CLASSES)
    assert not [w for w in recwarn if "May not flag all label issues" in str(w.message)]
    lines = [r.getMessage() for r in caplog.records if "too few listings" in r.getMessage()]
    assert len(lines) == 1 and "Accessories > Watches > Watches" in lines[0], lines
    assert caplog.records[0].levelno < logging.WARNING
