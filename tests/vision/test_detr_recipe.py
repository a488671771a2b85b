"""A short DETR training run on the shapes set: the loss falls, evaluation runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.optim import OptimConfig
from common.recipe import apply_overrides
from vision.detr import DETR, BackboneConfig, DETRConfig
from vision.recipes.detr_shapes import DetrShapesConfig, make_batch_fn, train_detr_shapes
from vision.shapes import generate_shapes

TINY = DetrShapesConfig(
    num_train=64, num_val=16, image_size=32, min_image_size=24, max_objects=3, min_shape=6,
    max_shape=14, batch_size=8, steps=40, chunk_size=40, eval_every=40, checkpoint_every=40,
    model=DETRConfig(num_classes=4, num_queries=6, d_model=32, num_heads=4,
                     num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64, dropout_rate=0.0,
                     backbone=BackboneConfig(stem_channels=8, channels=(16, 32), blocks=(1, 1),
                                             strides=(2, 2))),
    optim=OptimConfig(name="adamw", learning_rate=2e-3, schedule="constant", clip_norm=1.0),
    eval_batch=16)


def test_training_loss_falls_and_ap_is_reported():
    history = []
    state, _, _, metrics, (scores, _, boxes) = train_detr_shapes(TINY, history=history)
    losses = np.array([m["loss"] for _, m in history if "loss" in m])
    assert len(losses) == TINY.steps and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.8 * losses[:10].mean()
    assert int(state.step) == TINY.steps
    assert {"ap", "ap50", "ap75"} <= set(metrics) and 0.0 <= metrics["ap"] <= 1.0
    assert scores.shape == (16, 6) and boxes.shape == (16, 6, 4)
    assert any("eval/ap" in m for _, m in history)


def test_hflip_mirrors_inside_the_real_width():
    data = generate_shapes(4, image_size=32, min_image_size=24, max_objects=3, min_shape=6,
                           max_shape=14, seed=1)
    arrays = {k: jnp.asarray(v) for k, v in data.as_arrays().items()}
    cfg = dataclasses.replace(TINY, batch_size=64)
    flipped = jax.jit(make_batch_fn(cfg))(arrays, jax.random.key(0))
    plain = jax.jit(make_batch_fn(dataclasses.replace(cfg, hflip=False)))(arrays,
                                                                         jax.random.key(0))
    np.testing.assert_array_equal(flipped["labels"], plain["labels"])
    same = np.all(np.asarray(flipped["boxes"]) == np.asarray(plain["boxes"]), axis=(1, 2))
    for b in np.flatnonzero(~same)[:5]:
        w = int(plain["mask"][b, 0].sum())
        np.testing.assert_allclose(flipped["images"][b, :, :w], plain["images"][b, :, ::-1][:, -w:])
        real = np.asarray(plain["box_mask"][b])
        np.testing.assert_allclose(flipped["boxes"][b, real, 0], 1 - plain["boxes"][b, real, 0],
                                   atol=1e-6)
    assert (~same).any() and same.any()


@pytest.mark.parametrize("norm", [
    pytest.param("frozen_bn", marks=pytest.mark.slow),  # also covered by test_detr_model
    pytest.param("batchnorm", marks=pytest.mark.slow)])  # heavy: runs under pytest -m slow
def test_backbone_norms_with_non_trainable_state_train_and_evaluate(norm):
    """Regression: a backbone reading non-Param variables in its forward pass (frozen or
    running batch-norm statistics) trains under ``fit``'s donation and evaluates after;
    batch norm's running averages move, frozen statistics do not."""
    cfg = apply_overrides(dataclasses.replace(TINY, steps=6, chunk_size=3, eval_every=6,
                                              checkpoint_every=6),
                          {"model.backbone.norm": norm})
    history = []
    state, _, _, metrics, _ = train_detr_shapes(cfg, history=history)
    assert int(state.step) == 6 and 0.0 <= metrics["ap"] <= 1.0
    assert all(np.isfinite(m["loss"]) for _, m in history if "loss" in m)
    stats = jax.tree.leaves(nnx.state(state.model().backbone, nnx.Not(nnx.Param)))
    initial = jax.tree.leaves(nnx.state(DETR(cfg.model, rngs=nnx.Rngs(0)).backbone,
                                        nnx.Not(nnx.Param)))
    floats = [(a, b) for a, b in zip(stats, initial, strict=True)
              if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats, "the backbone should carry statistics"
    moved = any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in floats)
    assert moved == (norm == "batchnorm")


@pytest.mark.slow  # heavy: runs under pytest -m slow
def test_intermediate_evaluations_use_the_subset_and_the_last_one_the_whole_split():
    """Every ``eval_every`` steps AP is measured on the first ``eval_subset`` validation
    images; the last step (and the returned metrics) on all of them, with the subset's
    AP recomputed from the same predictions."""
    cfg = dataclasses.replace(TINY, steps=6, chunk_size=3, eval_every=3, checkpoint_every=6,
                              eval_subset=5)
    history = []
    _, _, val, metrics, _ = train_detr_shapes(cfg, history=history)
    evals = {s: m for s, m in history if any(k.startswith("eval/") for k in m)}
    assert sorted(evals) == [3, 6]
    assert set(evals[3]) == {"eval/subset_ap", "eval/subset_ap50", "eval/subset_ap75",
                             "eval/seconds"}
    assert {"eval/ap", "eval/subset_ap"} <= set(evals[6])
    assert evals[6]["eval/ap"] == metrics["ap"] and len(val) == TINY.num_val
    with pytest.raises(ValueError, match="eval_subset"):
        dataclasses.replace(TINY, eval_subset=-1).validate()


@pytest.mark.slow
def test_intermediate_evaluations_never_touch_training():
    """The same losses and final AP with subset evaluations as with one whole one."""
    cfg = dataclasses.replace(TINY, steps=6, chunk_size=3, eval_every=3, checkpoint_every=6,
                              eval_subset=5)
    history = []
    _, _, _, metrics, _ = train_detr_shapes(cfg, history=history)
    once = []
    _, _, _, metrics_once, _ = train_detr_shapes(
        dataclasses.replace(cfg, eval_every=6, eval_subset=0), history=once)
    assert [m["loss"] for _, m in once if "loss" in m] == [
        m["loss"] for _, m in history if "loss" in m]
    assert metrics_once["ap"] == metrics["ap"]
    assert [s for s, m in once if "eval/ap" in m] == [6]


def test_display_nms_keeps_one_box_per_object_across_classes():
    from vision.recipes.detr_shapes import _display_nms

    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]],
                     np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.55], np.float32)
    np.testing.assert_array_equal(_display_nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(_display_nms(boxes, scores, 0.99), [1, 2, 0, 3])
    assert _display_nms(boxes[:0], scores[:0], 0.5).shape == (0,)
