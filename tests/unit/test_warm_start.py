"""Warm start (``train.init: champion``): a new model copies an earlier one's weights where they
fit, its heads row by label. Real (small) models of ``training.model``, no stand-ins."""

from __future__ import annotations

import json

import pytest
import torch

from common.params import TrainParams
from training.hierarchy import LabelTree
from training.model import build_model
from training.warm_start import architecture_difference, head_row_labels, warm_start

OLD = ["Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts", "Footwear > Shoes > Casual Shoes",
       "Accessories > Watches > Watches"]
NEW = ["Apparel > Bottomwear > Jeans", "Apparel > Topwear > Shirts", "Apparel > Topwear > Tshirts",
       "Footwear > Shoes > Casual Shoes", "Footwear > Shoes > Sports Shoes"]
"""The new catalog adds a level-2 category (Bottomwear) and two leaves, and loses Accessories."""


def cfg(**kw) -> TrainParams:
    base = {"branches": "text", "text_buckets": 2048, "text_dim": 16, "weights": "none",
            "branch_loss_weight": 0.0}
    return TrainParams(**{**base, **kw})


def built(labels, seed: int, **kw):
    torch.manual_seed(seed)
    model, _ = build_model(sorted(labels), cfg(**kw))
    return model


def rows_by_label(model, labels) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per head: label -> (weight row, bias) of that model."""
    names = head_row_labels(model.ancestors, sorted(labels))
    return [{label: (head.weight[r].detach().clone(), head.bias[r].detach().clone())
             for r, label in enumerate(names[k])} for k, head in enumerate(model.heads)]


def test_head_row_labels_are_the_taxonomy_levels():
    tree = LabelTree(sorted(NEW))
    model = built(NEW, 0)
    assert head_row_labels(model.ancestors, sorted(NEW)) == tree.level_labels
    flat = built(NEW, 0, hierarchical=False)
    assert head_row_labels(flat.ancestors, sorted(NEW)) == [sorted(NEW)]


def test_known_rows_are_copied_by_label_new_rows_stay_fresh_and_vanished_ones_go():
    old, new = built(OLD, 0), built(NEW, 1)
    before_old, before_new = rows_by_label(old, OLD), rows_by_label(new, NEW)
    fresh_encoder = new.text_encoder.embedding.weight.detach().clone()

    report = warm_start(new, sorted(NEW), old.state_dict(), sorted(OLD))

    after = rows_by_label(new, NEW)
    tree = LabelTree(sorted(NEW))
    assert [h.out_features for h in new.heads] == tree.sizes == [2, 3, 5]
    assert torch.equal(new.ancestors, tree.ancestors)  # this run's taxonomy, not the checkpoint's
    for k in range(3):
        for label, (w, b) in after[k].items():
            if label in before_old[k]:  # known: the earlier model's row, exactly
                assert torch.equal(w, before_old[k][label][0]) and torch.equal(b, before_old[k][label][1]), label
            else:  # new: this model's fresh initialisation, unlike any earlier row
                assert torch.equal(w, before_new[k][label][0]), label
                assert all(not torch.equal(w, ow) for ow, _ in before_old[k].values()), label
    leaf = report["heads"]["heads.2"]
    assert (leaf["rows"], leaf["copied"]) == (5, 3)
    assert leaf["new"] == ["Apparel > Bottomwear > Jeans", "Footwear > Shoes > Sports Shoes"]
    assert leaf["dropped"] == ["Accessories > Watches > Watches"]
    assert report["heads"]["heads.0"] == {"rows": 2, "copied": 2, "new": [], "dropped": ["Accessories"]}
    assert report["heads"]["heads.1"]["new"] == ["Apparel > Bottomwear"]
    # everything else of the same name and shape is the earlier model's
    assert torch.equal(new.text_encoder.embedding.weight, old.text_encoder.embedding.weight)
    assert not torch.equal(new.text_encoder.embedding.weight, fresh_encoder)
    for name, tensor in old.text_encoder.state_dict().items():
        assert torch.equal(new.text_encoder.state_dict()[name], tensor), name
    assert "text_encoder.embedding.weight" in report["copied"] and not report["not_copied"]


def test_the_warm_model_predicts_a_known_listing_as_the_earlier_one_did():
    """Behaviour, not only tensors: on the leaves both know, the warm model ranks like the earlier."""
    from training.text import encode_texts

    old, new = built(OLD, 0), built(NEW, 1)
    warm_start(new, sorted(NEW), old.state_dict(), sorted(OLD))
    old.eval(), new.eval()
    ids, offsets = encode_texts(["blue denim shirt", "running shoes"], None, 2048)
    with torch.inference_mode():
        o = old.heads[-1](old.text_encoder(ids, offsets))
        n = new.heads[-1](new.text_encoder(ids, offsets))
    shared = [label for label in sorted(NEW) if label in OLD]
    assert torch.allclose(o[:, [sorted(OLD).index(x) for x in shared]], n[:, [sorted(NEW).index(x) for x in shared]])


def test_embeddings_of_other_bucket_counts_are_not_copied():
    old, new = built(OLD, 0), built(NEW, 1, text_buckets=4096)
    fresh = new.text_encoder.embedding.weight.detach().clone()
    report = warm_start(new, sorted(NEW), old.state_dict(), sorted(OLD))
    assert report["not_copied"] == {"text_encoder.embedding.weight": "(2048, 16) -> (4096, 16)"}
    assert torch.equal(new.text_encoder.embedding.weight, fresh)
    assert torch.equal(new.text_encoder.mlp[0].weight, old.text_encoder.mlp[0].weight)


def test_a_deeper_taxonomy_and_a_flat_checkpoint_take_rows_from_the_leaf_head():
    flat = built(OLD, 0, hierarchical=False)
    new = built(NEW, 1)
    report = warm_start(new, sorted(NEW), flat.state_dict(), sorted(OLD))
    assert report["heads"]["heads.2"]["copied"] == 3  # leaves by path
    assert report["heads"]["heads.0"]["copied"] == 0  # a flat model has no level-1 rows
    shallow = ["Apparel > Topwear", "Footwear > Shoes"]
    two = built(shallow, 0)
    deeper = ["Apparel > Topwear", "Apparel > Topwear > Shirts", "Footwear > Shoes"]
    three = built(deeper, 1)
    report = warm_start(three, sorted(deeper), two.state_dict(), sorted(shallow))
    # level 2 of the new tree is new: its labels are found in the earlier leaf head
    assert report["heads"]["heads.1"] == {"rows": 2, "copied": 2, "new": [], "dropped": []}
    assert report["heads"]["heads.2"]["new"] == ["Apparel > Topwear > Shirts"]
    row = head_row_labels(three.ancestors, sorted(deeper))[2].index("Footwear > Shoes")
    assert torch.equal(three.heads[2].weight[row], two.heads[1].weight[1])


def test_fused_model_copies_backbone_and_branch_heads():
    kw = {"branches": "fused", "backbone": "resnet18", "structured": True, "field_buckets": 64,
          "field_dim": 8, "branch_loss_weight": 0.5}
    old, new = built(OLD, 0, **kw), built(NEW, 1, **kw)
    report = warm_start(new, sorted(NEW), old.state_dict(), sorted(OLD))
    assert torch.equal(new.image_encoder.conv1.weight, old.image_encoder.conv1.weight)
    assert torch.equal(new.image_encoder.bn1.running_var, old.image_encoder.bn1.running_var)
    assert torch.equal(new.field_encoder.embedding.weight, old.field_encoder.embedding.weight)
    assert set(report["heads"]) == {"heads.0", "heads.1", "heads.2", "branch_heads.0", "branch_heads.1",
                                    "branch_heads.2"}
    j_old, j_new = sorted(OLD).index("Apparel > Topwear > Shirts"), sorted(NEW).index("Apparel > Topwear > Shirts")
    assert torch.equal(new.branch_heads[1].weight[j_new], old.branch_heads[1].weight[j_old])
    assert report["heads"]["branch_heads.0"]["new"] == [
        "Apparel > Bottomwear > Jeans", "Footwear > Shoes > Sports Shoes"]


def test_architecture_difference_names_what_differs():
    base = cfg(branches="fused", backbone="resnet18").model_dump(mode="json")
    assert architecture_difference(base, cfg(branches="fused", backbone="resnet18")) is None
    assert architecture_difference(base, cfg(branches="fused", backbone="resnet34")) == \
        "backbone 'resnet18' -> 'resnet34'"
    assert "branches 'fused' -> 'image'" in architecture_difference(base, cfg(branches="image"))
    text = cfg().model_dump(mode="json")
    assert architecture_difference(text, cfg(backbone="resnet50", structured=False)) is None  # unused
    assert architecture_difference(text, cfg(text_dim=32)) == "text_dim 16 -> 32"
    # bucket counts are not architecture: the embeddings are simply not copied
    assert architecture_difference(text, cfg(text_buckets=4096)) is None


def _workspace(tmp_path, old_model, old_labels, old_cfg: TrainParams, version="3") -> None:
    init = tmp_path / "models" / "init"
    init.mkdir(parents=True)
    (init / "init.json").write_text(json.dumps({"init": "champion", "version": version}))
    torch.save({"model": old_model.state_dict(), "labels": list(old_labels),
                "params": {"train": old_cfg.model_dump(mode="json")}}, init / "model.pt")


def test_init_model_starts_from_the_champion_or_says_why_not(tmp_path):
    from training.warm_start import init_model

    old = built(OLD, 0)
    _workspace(tmp_path, old, sorted(OLD), cfg())
    new = built(NEW, 1)
    out = init_model(tmp_path, new, sorted(NEW), cfg(init="champion"))
    assert out["init"] == "champion:v3" and "3/5 rows copied, 2 new leaves, 1 dropped" in out["init_reason"]
    assert torch.equal(new.text_encoder.embedding.weight, old.text_encoder.embedding.weight)

    other = built(NEW, 1, text_dim=32)
    fresh = other.state_dict()["text_encoder.embedding.weight"].clone()
    out = init_model(tmp_path, other, sorted(NEW), cfg(init="champion", text_dim=32))
    assert out == {"init": "scratch", "init_reason": "champion v3 has another architecture (text_dim 16 -> 32)",
                   "init_report": None}
    assert torch.equal(other.text_encoder.embedding.weight, fresh)

    assert init_model(tmp_path, built(NEW, 1), sorted(NEW), cfg())["init_reason"] == "train.init is scratch"
    (tmp_path / "models" / "init" / "init.json").write_text(json.dumps({"init": "scratch", "reason": "no champion yet"}))
    assert init_model(tmp_path, built(NEW, 1), sorted(NEW), cfg(init="champion"))["init_reason"] == "no champion yet"
    (tmp_path / "models" / "init" / "init.json").write_text(json.dumps({"init": "champion", "version": "4"}))
    (tmp_path / "models" / "init" / "model.pt").write_bytes(b"truncated")
    out = init_model(tmp_path, built(NEW, 1), sorted(NEW), cfg(init="champion"))
    assert out["init"] == "scratch" and out["init_reason"].startswith("champion v4: checkpoint unreadable")


@pytest.mark.parametrize("ckpt_init, run_init, resumes", [
    ("scratch", "scratch", True), (None, "scratch", True), ("champion:v1", "champion:v2", False),
    ("scratch", "champion:v1", False)])
def test_a_checkpoint_resumes_only_a_run_with_the_same_start(ckpt_init, run_init, resumes):
    from training.utils import resumable

    meta = {"params": {"train": {"epochs": 2}}, "labels": ["a"], "data_fingerprint": "f", "image_size": 32,
            "init": run_init}
    ckpt = {**meta, "train_state": {}}
    ckpt.pop("init") if ckpt_init is None else ckpt.update(init=ckpt_init)
    assert resumable(ckpt, meta) is resumes


def test_fetch_init_from_scratch_writes_a_stable_spec_and_keeps_checkpoints_out_of_git(tmp_path):
    from common.params import Params
    from common.state import State
    from training.pipeline import fetch_init

    state = State(tmp_path / "state").ensure()
    stale = state.workspace / "models" / "init" / "model.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier champion")
    (state.workspace / "models" / ".gitignore").write_text("/model.pt\n")
    spec = fetch_init(state, Params())
    first = (state.workspace / "models" / "init" / "init.json").read_bytes()
    assert spec == {"init": "scratch", "reason": "train.init is scratch"} and not stale.exists()
    fetch_init(state, Params())  # the same choice: the same bytes, so DVC sees no change
    assert (state.workspace / "models" / "init" / "init.json").read_bytes() == first
    assert (state.workspace / "models" / ".gitignore").read_text().splitlines() == ["/model.pt", "/init"]
