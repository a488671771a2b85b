"""DETR model pieces: the sine encoding, padding masks, the shared ResNet backbone."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import FrozenBatchNorm, ResNet, ResNetConfig, sine_position_encoding_2d
from common.recipe import apply_overrides
from tests.tolerances import F32, F32_LOOSE, assert_close
from vision.detr import (
    DETR,
    BackboneConfig,
    DETRConfig,
    downsample_mask,
    postprocess,
)


def test_sine_encoding_matches_formula_on_padded_mask():
    """DETR's PositionEmbeddingSine, written out per pixel (y features, then x)."""
    F, H, W, h_real, w_real = 8, 4, 5, 3, 4
    mask = np.zeros((1, H, W), bool)
    mask[0, :h_real, :w_real] = True
    got = np.asarray(sine_position_encoding_2d(jnp.asarray(mask), F))
    expected = np.zeros((H, W, 2 * F))
    eps, scale = 1e-6, 2 * math.pi
    for i in range(H):
        for j in range(W):
            y = mask[0, : i + 1, j].sum() / (mask[0, :, j].sum() + eps) * scale
            x = mask[0, i, : j + 1].sum() / (mask[0, i, :].sum() + eps) * scale
            for k in range(F):
                tau = 10000.0 ** (2 * (k // 2) / F)
                trig = math.sin if k % 2 == 0 else math.cos
                expected[i, j, k] = trig(y / tau)
                expected[i, j, F + k] = trig(x / tau)
    assert_close(got[0], expected, F32)


def test_downsample_mask_is_nearest():
    mask = np.zeros((1, 16, 16), bool)
    mask[0, :9, :5] = True
    out = np.asarray(downsample_mask(jnp.asarray(mask), 4, (4, 4)))
    np.testing.assert_array_equal(out[0], mask[0, ::4, ::4])


def _small_config(norm="frozen_bn", dropout=0.0):
    """The architecture of the training smoke test, so its parameter shapes compile once."""
    return DETRConfig(num_classes=4, num_queries=6, d_model=32, num_heads=4,
                      num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64,
                      dropout_rate=dropout,
                      backbone=BackboneConfig(stem_channels=8, channels=(16, 32), blocks=(1, 1),
                                              strides=(2, 2), norm=norm))


def test_padding_mask_and_frozen_bn():
    """One model, one compilation:

    * pixels of the padded region that only padded feature tokens see cannot change
      the predictions when the mask is given (encoder and decoder mask those
      tokens); without the mask they do (frozen BN: no statistics over padding);
    * frozen batch-norm statistics are not parameters.
    """
    model = DETR(_small_config(norm="frozen_bn"), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    canvas = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    mask = jnp.zeros((1, 64, 64), bool).at[:, :24, :16].set(True)
    # Far from the real 24x16 region: beyond the receptive field of its tokens.
    changed = canvas.at[:, 48:, :].set(5.0).at[:, :, 48:].set(-5.0)

    @jax.jit
    def outputs(state):
        m = nnx.merge(graphdef, state)
        images = jnp.concatenate([canvas, changed, canvas, changed])
        masks = jnp.concatenate([mask, mask, jnp.ones_like(mask), jnp.ones_like(mask)])
        return m(images, masks)

    out = outputs(state)
    assert out["logits"].shape == (1, 4, 6, 5) and out["boxes"].shape == (1, 4, 6, 4)
    assert np.all((np.asarray(out["boxes"]) > 0) & (np.asarray(out["boxes"]) < 1))
    assert_close(out["logits"][:, 1], out["logits"][:, 0], F32_LOOSE)
    assert_close(out["boxes"][:, 1], out["boxes"][:, 0], F32_LOOSE)
    assert not np.allclose(out["logits"][:, 3], out["logits"][:, 2], atol=1e-4)
    names = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))]
    assert not any("mean" in n or "var" in n for n in names)
    assert isinstance(model.backbone.stem_norm, FrozenBatchNorm)


def test_default_backbone_and_norm_override():
    """DETR's default backbone keeps its architecture (stride 8, 128 channels); the
    recipe key ``model.backbone.norm`` selects the norm."""
    out = jax.eval_shape(lambda x: ResNet(BackboneConfig(), rngs=nnx.Rngs(0))(x),
                         jnp.zeros((1, 64, 64, 3)))
    shapes = [f.shape for f in out]
    assert shapes == [(1, 32, 32, 32), (1, 16, 16, 64), (1, 8, 8, 128)]
    assert BackboneConfig().stride == 8 and BackboneConfig().norm == "groupnorm"
    cfg = apply_overrides(DETRConfig(), {"backbone.norm": "frozen_bn"})
    assert cfg.backbone.norm == "frozen_bn" and isinstance(cfg.backbone, BackboneConfig)
    model = nnx.eval_shape(lambda: DETR(dataclasses.replace(
        _small_config(), backbone=ResNetConfig(stem_channels=8, channels=(16,), blocks=(1,),
                                               strides=(1,), norm="batchnorm")),
        rngs=nnx.Rngs(0)))
    assert model.backbone.config.stride == 4


def test_postprocess_formula():
    logits = jnp.array([[[2.0, 0.0, 1.0], [0.0, 0.0, 5.0]]])
    boxes = jnp.array([[[0.5, 0.5, 0.5, 0.25], [0.25, 0.75, 0.1, 0.1]]])
    scores, labels, xyxy = postprocess(logits, boxes, jnp.array([[40, 20]]))
    p = np.exp([2.0, 0.0, 1.0]) / np.exp([2.0, 0.0, 1.0]).sum()
    assert_close(scores[0, 0], p[0])
    assert labels.tolist() == [[0, 0]]
    assert_close(xyxy[0, 0], [5.0, 15.0, 15.0, 25.0])


def test_bad_inputs_raise_clear_errors():
    model = DETR(_small_config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"images must have shape \[B, H, W, 3\]"):
        model(jnp.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match=r"mask must be boolean with shape \[B, H, W\]"):
        model(jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 32, 32)))
    with pytest.raises(ValueError, match="norm must be one of"):
        _small_config(norm="batch")
    with pytest.raises(ValueError, match=r"image_sizes must have shape \[B, 2\]"):
        postprocess(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)), jnp.zeros((2,)))
