"""Fine-tuning the last backbone blocks: owned copies only, honest out-of-fold scores, seeded,
persisted by save/load and carried by the ONNX export."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from linesight.vision.components.backbone import load_backbone
from linesight.vision.components.features import extract, to_onnx
from linesight.vision.components.finetune import (
    FinetuneSettings,
    balanced_order,
    final_means,
    finetune_tail,
    trainable_copy,
)
from linesight.vision.components.heads import cross_val_logits, fit_linear_head
from linesight.vision.components.scoring import preprocess
from linesight.vision.export import ExportedModel
from linesight.vision.export.writer import export_model
from linesight.vision.model import InputError, InspectionModel
from linesight.vision.model import fit as model_mod
from linesight.vision.model.network import resize
from tests.unit.vision.engine_helpers import as_format_1, synthetic_set

OPTS = {
    "input_size": (64, 64),
    "min_examples": 6,
    "augment_copies": 1,
    "cv_folds": 3,
    "finetune_epochs": 3.0,
    "finetune_lr": 3e-3,  # large, so a few steps on a tiny set visibly move the weights
    "runtime": "torch",
}


def _data() -> tuple[list[np.ndarray], list[str]]:
    return synthetic_set({"good": 16, "spot": 8, "scratch": 8}, seed=5)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@functools.lru_cache(maxsize=1)
def _tuned() -> InspectionModel:
    imgs, labels = _data()
    model = InspectionModel.create(seed=0, finetune_blocks=2, **OPTS)
    model.fit(imgs, labels)
    return model


def _batch(model: InspectionModel, imgs: list[np.ndarray]) -> np.ndarray:
    spec = model.net.backbone.spec
    return preprocess(resize(imgs, model.config.input_size), model.config.input_size, spec.mean, spec.std)


def test_finetuning_moves_only_an_owned_copy_of_the_last_blocks() -> None:
    shared = load_backbone()
    before = _state(shared)
    model = _tuned()
    assert model.net.finetuned_blocks == 2 and model.net.tail_token
    tuned = model.net.trainable_blocks()
    pretrained = list(shared.tail)[-2:]
    assert all(a is not b for a, b in zip(tuned, pretrained, strict=True))
    moved = [
        float((p - q).abs().max())
        for p, q in zip(tuned.parameters(), torch.nn.Sequential(*pretrained).parameters(), strict=True)
    ]
    assert max(moved) > 1e-4  # the copies really trained
    for k, v in _state(shared).items():  # the cached backbone every other model uses did not
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert not any(p.requires_grad for p in model.net.parameters())
    # PatchCore's patches are trunk features: identical to a frozen model's; the descriptor's
    # final-map part differs, its frozen patch statistics do not
    imgs, _ = _data()
    frozen = InspectionModel.create(seed=0, finetune_blocks=0, **OPTS)
    batch = _batch(model, imgs[:6])
    p_ft, pooled_ft, _ = extract(model.net, batch)
    p_fr, pooled_fr, _ = extract(frozen.net, batch)
    np.testing.assert_array_equal(p_ft, p_fr)
    cf = shared.channels_final
    np.testing.assert_array_equal(pooled_ft[:, cf:], pooled_fr[:, cf:])
    assert float(np.abs(pooled_ft[:, :cf] - pooled_fr[:, :cf]).max()) > 1e-4


def test_finetuned_model_still_separates_the_classes() -> None:
    model = _tuned()
    test_imgs, test_labels = synthetic_set({"good": 6, "spot": 4, "scratch": 4}, seed=77)
    preds = model.predict(test_imgs)
    top = [max(p.class_probs, key=p.class_probs.__getitem__) for p in preds]
    assert np.mean([t == lab for t, lab in zip(top, test_labels, strict=True)]) >= 0.9
    assert model.metrics["cv_type_accuracy"] >= 0.9


def test_finetuning_is_seeded_reproducible_and_refits_from_the_pretrained_tail() -> None:
    imgs, labels = _data()
    again = InspectionModel.create(seed=0, finetune_blocks=2, **OPTS)
    again.fit(imgs, labels)
    model = _tuned()
    assert again.net.tail_token == model.net.tail_token  # bit-identical weights
    assert again.thresholds == model.thresholds
    np.testing.assert_array_equal(again.replay.oof, model.replay.oof)
    again.fit(imgs, labels)  # a re-fit starts again from the pretrained tail, not from the last one
    assert again.net.tail_token == model.net.tail_token
    other = InspectionModel.create(seed=1, finetune_blocks=2, **OPTS)
    other.fit(imgs, labels)
    assert other.net.tail_token != model.net.tail_token


def test_out_of_fold_logits_come_from_tails_that_never_saw_the_held_out_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = model_mod.finetune_tail

    def spy(*args: object, **kwargs: object) -> torch.nn.Sequential:
        calls.append(len(args[2]))  # type: ignore[arg-type]  # rows the copy is trained on
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(model_mod, "finetune_tail", spy)
    imgs, labels = _data()
    model = InspectionModel.create(seed=0, finetune_blocks=1, **OPTS)
    model.fit(imgs, labels)
    n_rows = len(model.replay)
    assert len(calls) == OPTS["cv_folds"] + 1  # one per fold, then the final one on every row
    assert all(n < n_rows for n in calls[:-1]) and calls[-1] == n_rows
    assert sum(n_rows - n for n in calls[:-1]) == n_rows  # held-out parts partition the rows


def test_cross_val_refeaturize_gets_only_the_fold_training_rows() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = (rng.normal(0, 1, (40, 4)) + y[:, None] * 3).astype(np.float32)
    groups = np.arange(40) // 2
    seen: list[np.ndarray] = []

    def refeaturize(rows: np.ndarray, fold: int) -> np.ndarray:
        assert fold == len(seen)
        seen.append(rows)
        return x

    oof = cross_val_logits(x, y, groups, ["good", "a"], folds=4, refeaturize=refeaturize)
    plain = cross_val_logits(x, y, groups, ["good", "a"], folds=4)
    np.testing.assert_allclose(oof, plain)  # same folds as without the hook
    held_out = [np.setdiff1d(np.arange(40), rows) for rows in seen]
    assert len(seen) == 4 and sorted(np.concatenate(held_out).tolist()) == list(range(40))
    for rows, te in zip(seen, held_out, strict=True):
        assert not set(groups[rows]) & set(groups[te])  # groups never straddle


def test_save_load_round_trip_reproduces_the_finetuned_network(tmp_path: Path) -> None:
    model = _tuned()
    model.save(tmp_path / "m")
    loaded = InspectionModel.load(tmp_path / "m")
    assert loaded.net.finetuned_blocks == 2 and loaded.net.tail_token == model.net.tail_token
    assert loaded.version == model.version
    imgs, _ = _data()
    batch = _batch(model, imgs[:8])
    for a, b in zip(extract(model.net, batch), extract(loaded.net, batch), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    pa, pb = model.predict(imgs[:8]), loaded.predict(imgs[:8])
    for x, z in zip(pa, pb, strict=True):
        assert x.class_probs == pytest.approx(z.class_probs, abs=1e-6)
    # the same model in the format-1 layout (fine-tuned tail included) is the same model
    shutil.copytree(tmp_path / "m", tmp_path / "m1")
    v1 = InspectionModel.load(as_format_1(tmp_path / "m1"))
    assert v1.net.tail_token == loaded.net.tail_token and v1.version == loaded.version
    for x, z in zip(pb, v1.predict(imgs[:8]), strict=True):
        assert x.class_probs == z.class_probs and x.defect_probability == z.defect_probability
    # a frozen model saved the same way stays frozen
    frozen = InspectionModel.create(seed=0, finetune_blocks=0, **OPTS)
    frozen.fit(*_data())
    frozen.save(tmp_path / "f")
    assert InspectionModel.load(tmp_path / "f").net.finetuned_blocks == 0
    # a model saved before fine-tuning existed (format 1, no finetune_* config) loads as the
    # frozen model it is
    as_format_1(tmp_path / "f")
    meta = json.loads((tmp_path / "f" / "model.json").read_text())
    for key in ("finetune_blocks", "finetune_epochs", "finetune_lr"):
        del meta["config"][key]
    del meta["finetuned_blocks"]
    (tmp_path / "f" / "model.json").write_text(json.dumps(meta))
    legacy = InspectionModel.load(tmp_path / "f")
    assert legacy.config.finetune_blocks == 0 and legacy.net.finetuned_blocks == 0
    for x, z in zip(frozen.predict(imgs[:4]), legacy.predict(imgs[:4]), strict=True):
        assert x.class_probs == pytest.approx(z.class_probs, abs=1e-6)


def test_onnx_export_carries_the_finetuned_tail(tmp_path: Path) -> None:
    model = _tuned()
    imgs, _ = _data()
    batch = _batch(model, imgs[:8])
    session = ort.InferenceSession(
        to_onnx(model.net, model.config.input_size), providers=["CPUExecutionProvider"]
    )
    onnx_out = session.run(None, {"image": batch})
    for a, b in zip(extract(model.net, batch), onnx_out, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    exported = ExportedModel.load(export_model(model, tmp_path / "v1"))
    for pa, pb in zip(model.predict(imgs[:8]), exported.predict(imgs[:8], batch_size=3), strict=True):
        assert abs(pa.defect_probability - pb.defect_probability) < 1e-4
        assert pa.class_probs == pytest.approx(pb.class_probs, abs=1e-4)


def test_training_extraction_through_onnxruntime_matches_eager_torch() -> None:
    """Fits describe their images through onnxruntime (``network.features``): the outputs, the
    fine-tuning inputs included, are eager torch's; a changed head rebuilds the graph."""
    from linesight.vision.model import network

    model = _tuned()
    imgs, _ = _data()
    small = resize(imgs[:8], model.config.input_size)
    batch = _batch(model, imgs[:8])
    fast = network.features(model.net, small, model.config.input_size, tail_input_blocks=2)
    eager = extract(model.net, batch, tail_input_blocks=2)
    assert len(fast) == len(eager) == 4
    for a, b in zip(eager, fast, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    key, session = network.runtime_for(model.net)._cached or (None, None)
    assert session is not None  # the graph was built, not the torch fallback
    # exporting leaves the network as it found it: BatchNorm on its running statistics
    assert not any(m.training for m in model.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = model.net.head.bias.detach().clone()
    with torch.no_grad():
        model.net.head.bias += 1.0
    try:
        logits = network.features(model.net, small, model.config.input_size)[2]
        np.testing.assert_allclose(logits, extract(model.net, batch)[2], rtol=1e-4, atol=1e-4)
        assert (network.runtime_for(model.net)._cached or (key,))[0] != key
    finally:
        with torch.no_grad():
            model.net.head.bias.copy_(before)


def test_add_class_keeps_the_finetuned_tail_and_old_rows(tmp_path: Path) -> None:
    model = _tuned()
    model.save(tmp_path / "m")
    m = InspectionModel.load(tmp_path / "m")
    old_weight = m.head.weight.copy() if m.head is not None else None
    token = m.net.tail_token
    rng = np.random.default_rng(3)
    new = []
    for img in synthetic_set({"good": 12}, seed=9)[0]:
        x0, y0 = int(rng.integers(5, 60)), int(rng.integers(5, 40))
        img = img.copy()
        img[y0 : y0 + 40, x0 : x0 + 40] = 235  # a bright patch: a new defect type
        new.append(img)
    m.add_class(new, "bright")
    assert m.net.tail_token == token  # incremental learning never re-tunes the backbone
    assert m.head is not None and old_weight is not None
    keep = [m.classes.index(c) for c in ("good", "scratch", "spot")]
    np.testing.assert_array_equal(m.head.weight[keep], old_weight)
    assert "bright" in m.classes


def test_balanced_order_draws_classes_equally_and_is_seeded() -> None:
    y = np.array([0] * 90 + [1] * 9 + [2] * 3)
    order = balanced_order(y, steps=200, batch_size=30, seed=4)
    assert order.shape == (200, 30)
    share = np.bincount(y[order.numpy().ravel()], minlength=3) / order.numel()
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)  # not 88 % / 9 % / 3 %
    assert torch.equal(order, balanced_order(y, steps=200, batch_size=30, seed=4))
    assert not torch.equal(order, balanced_order(y, steps=200, batch_size=30, seed=5))


def test_finetune_tail_lowers_training_loss_and_leaves_its_input_alone() -> None:
    tail = load_backbone().tail
    before = _state(tail)
    rng = np.random.default_rng(0)
    tail_in = rng.normal(0, 1, (48, 320, 2, 2)).astype(np.float32)
    y = np.repeat([0, 1, 2], 16)
    tail_in[y == 1, :40] += 1.5  # a weak signal the pretrained head conv mixes away
    tail_in[y == 2, 40:80] += 1.5
    rest = rng.normal(0, 1, (48, 5)).astype(np.float32)
    frozen = np.concatenate([final_means(trainable_copy(tail, 1), tail_in), rest], axis=1)
    lp = fit_linear_head(frozen, y, ["good", "a", "b"], c=0.01)
    settings = FinetuneSettings(blocks=1, epochs=20, lr=1e-3, head_c=0.01)
    blocks = finetune_tail(tail, tail_in, rest, y, lp, settings, seed=0)
    tuned = np.concatenate([final_means(blocks, tail_in), rest], axis=1)

    def loss(x: np.ndarray) -> float:
        head = fit_linear_head(x, y, ["good", "a", "b"], c=0.01)
        z = head.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        return float(-np.mean(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))))

    assert loss(tuned) < loss(frozen)
    for k, v in _state(tail).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_invalid_finetune_blocks_fail_clearly() -> None:
    with pytest.raises(InputError, match="finetune_blocks"):
        InspectionModel.create(seed=0, finetune_blocks=99)
    with pytest.raises(InputError, match="finetune_blocks"):
        InspectionModel.create(seed=0, finetune_blocks=-1)
