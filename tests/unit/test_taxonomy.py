"""Taxonomy changes (validation.taxonomy): parsing, the change log, the effective taxonomy, the CLI;
the retired-category file prepare reads; the champion's embeddings and their grouping
(training.inference.embed_paths, monitoring.candidates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.catalog import load_catalog
from common.state import State
from validation.taxonomy import (
    RETIRED_FILE,
    TaxonomyChangeError,
    add_category,
    apply_changes,
    changes_file,
    effective_taxonomy,
    main,
    parse_path,
    read_changes,
    retire_category,
    write_retired,
)

ROOT = Path(__file__).resolve().parents[2]
FASHION = load_catalog("catalogs/fashion.yaml")
FLIPKART = load_catalog("catalogs/flipkart.yaml")
DECLARED = ["Apparel > Topwear > Tshirts", "Apparel > Bottomwear > Jeans", "Footwear > Shoes > Casual Shoes"]


@pytest.fixture
def state(tmp_path) -> State:
    """A state whose staging holds the feed's taxonomy as ingest copies it."""
    state = State(tmp_path / "state").ensure()
    (state.staging / "_taxonomy.json").write_text(json.dumps(DECLARED), encoding="utf-8")
    return state


def test_parse_path_normalises_levels_as_the_taxonomy_file_does():
    assert parse_path("  Apparel>Topwear  >\u200bCapes ", 3) == "Apparel > Topwear > Capes"
    assert parse_path("Cafe\u0301 > A > B", 3) == "Caf\u00e9 > A > B"  # NFC, like listings


@pytest.mark.parametrize("text, message", [
    ("Apparel > > Capes", "empty level"),
    ("", "empty level"),
    ("Apparel > Capes", "has 2 level"),
    ("A > B > C > D", "has 4 level"),
    ("A > B\n> C", "one line"),
])
def test_parse_path_refuses_malformed_paths(text, message):
    with pytest.raises(TaxonomyChangeError, match=message):
        parse_path(text, 3)


def test_parse_path_depth_of_a_tree_catalog_is_a_maximum():
    assert FLIPKART.category is not None
    assert parse_path("Clothing > Women's Clothing", FLIPKART.depth, exact_depth=False) == "Clothing > Women's Clothing"
    with pytest.raises(TaxonomyChangeError, match="at most"):
        parse_path("A > B > C > D > E", FLIPKART.depth, exact_depth=False)


def test_apply_changes_last_change_of_a_path_wins():
    declared = frozenset(DECLARED)
    changes = [{"action": "add", "path": "Apparel > Topwear > Capes"},
               {"action": "retire", "path": "Apparel > Topwear > Tshirts"},
               {"action": "retire", "path": "Apparel > Topwear > Capes"},
               {"action": "add", "path": "Apparel > Topwear > Capes"}]  # reinstated
    tax = apply_changes(declared, changes)
    assert tax.paths == declared | {"Apparel > Topwear > Capes"}
    assert tax.added == {"Apparel > Topwear > Capes"}
    assert tax.retired == {"Apparel > Topwear > Tshirts"}
    assert tax.declared == declared


def test_a_path_the_feed_declares_later_is_the_same_as_an_addition(state):
    added = add_category(state, FASHION, "Apparel > Topwear > Capes")
    assert added.changed
    via_cli = effective_taxonomy(state, FASHION).paths
    (state.staging / "_taxonomy.json").write_text(json.dumps([*DECLARED, "Apparel > Topwear > Capes"]))
    both = effective_taxonomy(state, FASHION)
    assert both.paths == via_cli  # the feed's own addition changes nothing more
    other = State(state.root.parent / "other").ensure()  # the feed alone, no change recorded
    (other.staging / "_taxonomy.json").write_text(json.dumps([*DECLARED, "Apparel > Topwear > Capes"]))
    assert effective_taxonomy(other, FASHION).paths == via_cli


def test_add_records_once_and_is_a_no_op_for_a_present_path(state):
    first = add_category(state, FASHION, "Apparel > Topwear > Capes", by="ana", reason="new in store")
    again = add_category(state, FASHION, "Apparel>Topwear>Capes")
    declared = add_category(state, FASHION, "Apparel > Topwear > Tshirts")
    assert first.changed and "added" in first.message
    assert not again.changed and "an earlier addition" in again.message
    assert not declared.changed and "feed's taxonomy file" in declared.message
    changes = read_changes(state.root)
    assert [(c["action"], c["path"], c["by"], c["reason"]) for c in changes] == [
        ("add", "Apparel > Topwear > Capes", "ana", "new in store")]
    assert effective_taxonomy(state, FASHION).paths == frozenset(DECLARED) | {"Apparel > Topwear > Capes"}


def test_malformed_add_records_nothing(state):
    with pytest.raises(TaxonomyChangeError):
        add_category(state, FASHION, "Apparel > Capes")
    assert not changes_file(state.root).exists()


def test_retire_keeps_the_path_valid_and_add_reinstates_it(state):
    path = "Apparel > Topwear > Tshirts"
    assert retire_category(state, FASHION, path).changed
    assert not retire_category(state, FASHION, path).changed  # already retired
    tax = effective_taxonomy(state, FASHION)
    assert path in tax.paths and tax.retired == {path}
    reinstated = add_category(state, FASHION, path)
    assert reinstated.changed and "reinstated" in reinstated.message
    assert effective_taxonomy(state, FASHION).retired == frozenset()


def test_retiring_an_unknown_path_is_refused(state):
    with pytest.raises(TaxonomyChangeError, match="not in the taxonomy"):
        retire_category(state, FASHION, "Apparel > Topwear > Capes")
    assert read_changes(state.root) == []


def test_a_corrupt_change_log_is_an_error_not_an_empty_log(state):
    changes_file(state.root).parent.mkdir(parents=True)
    changes_file(state.root).write_text('{"changes": [{"action": "rename", "path": "A"}]}')
    with pytest.raises(ValueError, match="not valid"):
        effective_taxonomy(state, FASHION)


def test_cli_add_retire_list_and_exit_codes(state, monkeypatch, capsys):
    monkeypatch.setenv("LCP_STATE_DIR", str(state.root))
    assert main(["add", "Apparel > Topwear > Capes", "--by", "ana"]) == 0
    assert "added" in capsys.readouterr().out
    assert main(["add", "Apparel > Topwear > Capes"]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert main(["add", "Apparel >  > Capes"]) == 2
    assert "empty level" in capsys.readouterr().err
    assert main(["retire", "Footwear > Shoes > Casual Shoes"]) == 0
    assert main(["retire", "No > Such > Path"]) == 2
    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["added"] == ["Apparel > Topwear > Capes"]
    assert listed["retired"] == ["Footwear > Shoes > Casual Shoes"]
    assert listed["valid"] == len(DECLARED) + 1 and listed["declared"] == len(DECLARED)
    assert [c["action"] for c in listed["changes"]] == ["add", "retire"]


def test_cli_runs_as_a_module(state):
    env = {**os.environ, "LCP_STATE_DIR": str(state.root)}
    proc = subprocess.run([sys.executable, "-m", "validation.taxonomy", "add", "Apparel > Topwear > Capes"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_changes(state.root)[0]["path"] == "Apparel > Topwear > Capes"


def test_retired_file_round_trips_to_prepare(tmp_path):
    from training.prepare import RETIRED_FILE as PREPARE_FILE
    from training.prepare import retired_categories

    assert PREPARE_FILE == RETIRED_FILE  # prepare runs in the workspace without validation/
    assert not write_retired(tmp_path, frozenset())  # nothing ever retired: no file
    assert not (tmp_path / RETIRED_FILE).exists() and retired_categories(tmp_path) == frozenset()
    assert write_retired(tmp_path, frozenset({"A > B > C"}))
    assert not write_retired(tmp_path, frozenset({"A > B > C"}))  # unchanged: not rewritten
    assert retired_categories(tmp_path) == {"A > B > C"}
    assert write_retired(tmp_path, frozenset())  # reinstated: the file says so
    assert retired_categories(tmp_path) == frozenset()


# --- candidate groups: embeddings and grouping -----------------------------------------------

def _text_model():
    import torch

    from common.params import TrainParams
    from training.inference import LoadedClassifier
    from training.model import build_model

    torch.manual_seed(0)
    params = TrainParams(branches="text", text_buckets=1024, text_dim=16, weights="none")
    labels = ["A > B > C", "A > B > D", "E > F > G"]
    model, _ = build_model(labels, params)
    return LoadedClassifier(model.eval(), labels, 32, params, torch.device("cpu"))


def test_embed_paths_are_what_the_heads_read():
    import torch

    from training.inference import embed_paths, predict_paths

    loaded = _text_model()
    titles = pd.DataFrame({"title": ["red cotton shirt", "blue denim jeans", "leather boots", "x"]})
    feats = embed_paths(loaded, titles, None, batch_size=3)  # two batches
    assert feats.shape == (4, 16) and feats.dtype == np.float32
    _, probs = predict_paths(loaded, titles, None)
    with torch.no_grad():
        heads = [head(torch.from_numpy(feats)) for head in loaded.model.heads]
        again = loaded.model.leaf_log_probs(heads).exp().numpy()
    np.testing.assert_allclose(again, probs, rtol=1e-5, atol=1e-6)
    assert not loaded.model.heads[0]._forward_pre_hooks  # the hook is gone
    assert embed_paths(loaded, titles.iloc[:0], None).shape == (0, 16)


def test_group_labels_finds_dense_groups_and_leaves_noise():
    from monitoring.candidates import group_labels, summarize_groups

    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.02, (8, 4)) + [1, 0, 0, 0]
    b = rng.normal(0, 0.02, (6, 4)) + [0, 1, 0, 0]
    odd = np.array([[0, 0, 1, 0], [0, 0, 0, 1.0]])
    labels = group_labels(np.vstack([a, b, odd]), 3)
    assert len(set(labels[:8])) == 1 and len(set(labels[8:14])) == 1 and labels[0] != labels[8]
    assert -1 not in labels[:14]
    rows = pd.DataFrame({"listing_id": [str(i) for i in range(16)],
                         "title": [f"t{i}" for i in range(16)],
                         "category_path": ["X > Y > Z"] * 7 + ["Q > R > S"] * 7 + ["X > Y > Z"] * 2,
                         "batch_id": ["b1"] * 16})
    groups = summarize_groups(rows, labels)
    assert [g["size"] for g in groups] == [8, 6]
    assert groups[0]["given_category"] == "X > Y > Z" and groups[0]["given_share"] == 0.875
    assert groups[0]["given_categories"] == {"X > Y > Z": 7, "Q > R > S": 1}
    assert groups[1]["given_category"] == "Q > R > S" and groups[1]["given_share"] == 1.0
    assert groups[0]["examples"] == ["t0", "t1", "t2", "t3", "t4"]
    assert (group_labels(np.ones((2, 4)), 3) == -1).all()  # fewer rows than a group


def test_repro_writes_the_empty_retired_file_prepare_depends_on(tmp_path):
    """prepare's DVC dependency always exists: repro writes the empty list in write_retired's own
    format (so un-retiring everything later changes nothing), and a retirement changes its bytes."""
    from training.pipeline import RETIRED, ensure_retired_file
    from training.prepare import retired_categories
    from validation.taxonomy import RETIRED_FILE, write_retired

    assert RETIRED == RETIRED_FILE
    assert ensure_retired_file(tmp_path) and retired_categories(tmp_path) == frozenset()
    empty = (tmp_path / RETIRED).read_bytes()
    assert not ensure_retired_file(tmp_path) and not write_retired(tmp_path, frozenset())
    assert write_retired(tmp_path, frozenset({"A > B > C"})) and (tmp_path / RETIRED).read_bytes() != empty
    assert write_retired(tmp_path, frozenset()) and (tmp_path / RETIRED).read_bytes() == empty
    assert not ensure_retired_file(tmp_path)  # an existing file is never overwritten
