"""``train.image_encoder: finetune``: the encoder's learning rate, the head warm-up, the params check,
the warm start and the typed run records, on the real EfficientNet-Lite0 weights."""

from __future__ import annotations

import pydantic
import pytest
import torch

from common.params import EncoderSpec, Params, TrainParams

LABELS = ["A > B > C", "A > B > D", "E > F > G"]


def _cfg(**kw) -> TrainParams:
    return TrainParams(**{"image_encoder": "finetune", "encoder": EncoderSpec(image_size=64),
                          "branches": "image", "structured": False, **kw})


@pytest.fixture(scope="module")
def model():
    from training.encoders import load_encoder
    from training.model import build_model

    cfg = _cfg()
    return build_model(LABELS, cfg, None, load_encoder(cfg.encoder))[0]


def test_the_encoder_trains_at_a_fraction_of_the_heads_rate_through_the_schedule(model):
    from training.optim import make_lr_scheduler, make_optimizer

    cfg = _cfg(lr=0.01, encoder_lr_scale=0.1)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    encoder = {id(p) for p in model.image_encoder.parameters()}
    assert len(encoder) == sum(1 for _ in model.image_encoder.parameters()) and all(
        p.requires_grad for p in model.image_encoder.parameters())
    for group in optimizer.param_groups:
        inside = {id(p) in encoder for p in group["params"]}
        assert len(inside) == 1  # a group is all encoder or all heads
        assert group["lr_scale"] == (0.1 if inside == {True} else 1.0)
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    for schedule in ("onecycle", "cosine"):
        scheduler = make_lr_scheduler(optimizer, cfg.lr, 20, schedule)
        peaks: dict[float, float] = {}
        for _ in range(20):
            for g in optimizer.param_groups:
                peaks[g["lr_scale"]] = max(peaks.get(g["lr_scale"], 0.0), g["lr"])
            optimizer.step()
            scheduler.step()
        assert peaks[1.0] == pytest.approx(0.01) and peaks[0.1] == pytest.approx(0.001)


def test_head_warm_up_freezes_the_encoder_weights_and_batchnorm_statistics(model):
    from training.optim import make_optimizer

    x = torch.randn(4, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 0])
    optimizer = make_optimizer(model, _cfg(), torch.device("cpu"))
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    heads = model.heads[-1].weight.detach().clone()
    model.set_encoder_trainable(False)
    model.train()
    assert not model.image_encoder.training and model.heads[0].training
    loss = torch.nn.functional.cross_entropy(model(x, None, None)[-1], targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = model.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running statistics
    assert not torch.equal(heads, model.heads[-1].weight)
    model.set_encoder_trainable(True)
    assert model.image_encoder.training
    loss = torch.nn.functional.cross_entropy(model(x, None, None)[-1], targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before["model.conv_stem.weight"], model.image_encoder.state_dict()["model.conv_stem.weight"])


def test_finetune_needs_the_prepared_images_at_the_encoder_size():
    assert Params().prepare.image_size == 64  # the default
    with pytest.raises(pydantic.ValidationError,
                       match=r"prepare.image_size \(64\) must equal train.encoder.image_size \(96\)"):
        Params().with_overrides({"train": {"image_encoder": "finetune", "encoder": {"image_size": 96}}})
    ok = Params().with_overrides({"prepare": {"image_size": 96},
                                  "train": {"image_encoder": "finetune", "encoder": {"image_size": 96}}})
    assert ok.train.image_encoder == "finetune"


def test_a_finetuned_champion_warm_starts_a_finetuned_run_and_nothing_else():
    from training.warm_start import architecture_difference

    old = _cfg().model_dump(mode="json")
    assert architecture_difference(old, _cfg(lr=0.001)) is None
    assert architecture_difference(old, _cfg(encoder=EncoderSpec(image_size=96))) is not None
    assert "image_encoder 'finetune' -> 'frozen'" in architecture_difference(
        old, _cfg().model_copy(update={"image_encoder": "frozen"}))
    assert "image_encoder 'scratch' -> 'finetune'" in architecture_difference(
        {**old, "image_encoder": "scratch"}, _cfg())


def test_run_records_keep_the_checkpoint_keys():
    from training.train import RunRecord
    from training.warm_start import WarmStart

    record = RunRecord({"train": {}}, ["a"], False, 32, "f", 1, "scratch")
    assert set(record.to_dict()) == {"params", "labels", "pretrained", "image_size", "data_fingerprint",
                                     "world_size", "init"}
    chosen = RunRecord({"train": {}}, ["a"], True, 64, "f", 1, "scratch", "finetune", {"id": "e"},
                       "float32", None, None).to_dict()
    assert chosen["image_encoder"] == "finetune" and chosen["precision"] == "float32"
    assert WarmStart("scratch", "why").to_dict() == {"init": "scratch", "init_reason": "why", "init_report": None}
    warm = WarmStart("champion:v2", "copied", {"heads": {}}, None, True)
    assert warm.warm and warm.to_dict()["probe_record"] is None
