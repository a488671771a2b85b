"""Pose heads: every registered head trains (finite loss and gradients) and decodes.

Parametrised over ``HEADS.names()``: a registered head gets these tests."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn.resnet import ResNetConfig
from tests.tolerances import assert_close
from vision.pose.flows import FlowConfig
from vision.pose.heads import (
    HEADS,
    PoseConfig,
    PoseModel,
    pose_loss,
    predict,
    to_normalized,
    to_pixels,
)
from vision.pose.rle import gaussian_heatmaps

TINY = PoseConfig(input_size=16, num_keypoints=3, head_channels=4,
                  flow=FlowConfig(hidden=4, num_pairs=1),
                  backbone=ResNetConfig(stem_channels=4, stem_kernel=3, stem_stride=4,
                                        stem_pool=False, channels=(4,), blocks=(1,),
                                        strides=(1,), norm="groupnorm", norm_groups=4,
                                        conv_impl="xla"),
                  heatmap_stride=2)
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
TARGET = jax.random.uniform(jax.random.key(1), (2, 3, 2), minval=-0.4, maxval=0.4)
WEIGHT = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])


@pytest.mark.parametrize("head", HEADS.names())
def test_head_loss_gradients_and_decoding(head):
    model = PoseModel(dataclasses.replace(TINY, head=head), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return pose_loss(nnx.merge(graphdef, p, rest), IMAGES, TARGET, WEIGHT)[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    coords, scores, _ = predict(model, IMAGES)
    assert coords.shape == (2, 3, 2) and scores.shape == (2, 3)
    assert np.all(np.isfinite(np.asarray(coords)))


def test_heatmap_head_decodes_its_own_targets_to_a_quarter_pixel():
    model = PoseModel(dataclasses.replace(TINY, head="heatmap"), rngs=nnx.Rngs(0))
    size = model.head.size                                            # 8×8 maps at stride 2
    maps = gaussian_heatmaps(to_pixels(TARGET, size), size, size, 1.0)
    coords, _ = model.head.decode({"heatmaps": maps})
    err = np.abs(np.asarray(to_pixels(coords, size) - to_pixels(TARGET, size)))
    assert np.all(err <= 0.5 + 1e-6)                                  # argmax ± quarter pixel


def test_coordinate_conversions_are_inverse():
    xy = jnp.array([[0.0, 15.0], [7.5, -0.5]])
    assert_close(to_pixels(to_normalized(xy, 16), 16), xy)
    assert to_normalized(jnp.array([-0.5, 15.5]), 16).tolist() == [-0.5, 0.5]


def test_bad_input_names_the_argument():
    with pytest.raises(KeyError, match="unknown pose head 'dsnt'"):
        PoseModel(dataclasses.replace(TINY, head="dsnt"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="input_size"):
        dataclasses.replace(TINY, input_size=18).validate()
    with pytest.raises(ValueError, match="heatmap_stride"):
        dataclasses.replace(TINY, heatmap_stride=3).validate()
    model = PoseModel(dataclasses.replace(TINY, head="l1"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"images must have shape \[B, 16, 16, 3\]"):
        model(jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"target must have shape \[B, K, 2\] = \(2, 3, 2\)"):
        pose_loss(model, IMAGES, jnp.zeros((2, 4, 2)), WEIGHT)
