"""Patch merger and projector: pixel shuffle vs a numpy reshape/transpose reference, the
odd-grid rule, the packed-buffer gather and the projector's layout."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vision.vlm.projector import (
    Projector,
    ProjectorConfig,
    merge_gather_index,
    merge_patches,
    merged_grid,
)


def numpy_merge(x, kh, kw):
    """Kimi-VL's ``view(H/kh, kh, W/kw, kw, D).permute(0, 2, 1, 3, 4)`` in numpy, written
    as explicit window loops."""
    H, W, D = x.shape
    out = np.zeros((H // kh, W // kw, kh * kw * D), x.dtype)
    for i in range(H // kh):
        for j in range(W // kw):
            members = [x[kh * i + a, kw * j + b] for a in range(kh) for b in range(kw)]
            out[i, j] = np.concatenate(members)
    return out


@pytest.mark.parametrize("shape,kernel", [((4, 6, 3), (2, 2)), ((6, 4, 5), (3, 2)),
                                          ((2, 2, 1), (2, 2))])
def test_merge_patches_matches_numpy(shape, kernel):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    got = np.asarray(merge_patches(jnp.asarray(x), kernel))
    np.testing.assert_array_equal(got, numpy_merge(x, *kernel))
    # and the torch view/permute written with numpy's reshape/transpose
    H, W, D = shape
    kh, kw = kernel
    ref = x.reshape(H // kh, kh, W // kw, kw, D).transpose(0, 2, 1, 3, 4)
    np.testing.assert_array_equal(got, ref.reshape(H // kh, W // kw, -1))


def test_odd_grid_is_zero_padded_bottom_right():
    x = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2) + 1
    got = np.asarray(merge_patches(jnp.asarray(x)))
    assert got.shape == (2, 3, 8) and merged_grid((3, 5)) == (2, 3)
    padded = np.zeros((4, 6, 2), np.float32)
    padded[:3, :5] = x
    np.testing.assert_array_equal(got, numpy_merge(padded, 2, 2))


def test_gather_index_equals_merge_patches():
    rng = np.random.default_rng(1)
    grids = [(4, 2), (3, 5), (2, 6)]
    feats = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in grids]
    buffer = np.concatenate([f.reshape(-1, 3) for f in feats] + [np.zeros((1, 3), np.float32)])
    pad = buffer.shape[0] - 1
    offset = 0
    for f, (h, w) in zip(feats, grids, strict=True):
        idx = merge_gather_index((h, w), offset, pad_index=pad)
        np.testing.assert_array_equal(buffer[idx].reshape(idx.shape[0], -1),
                                      np.asarray(merge_patches(jnp.asarray(f))).reshape(
                                          idx.shape[0], -1))
        offset += h * w


def test_projector_is_norm_then_mlp():
    proj = Projector(ProjectorConfig(vision_dim=4, text_dim=6), rngs=nnx.Rngs(0))
    w = np.random.default_rng(2).normal(size=(3, 4, 4)).astype(np.float32)
    got = np.asarray(nnx.jit(lambda m, x: m(x))(proj, jnp.asarray(w)))
    mu, var = w.mean(-1, keepdims=True), w.var(-1, keepdims=True)
    n = ((w - mu) / np.sqrt(var + 1e-5)).reshape(3, 16)  # LayerNorm scale 1, bias 0 at init
    h = n @ np.asarray(proj.linear_1.kernel[...]) + np.asarray(proj.linear_1.bias[...])
    from scipy.special import erf
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    ref = h @ np.asarray(proj.linear_2.kernel[...]) + np.asarray(proj.linear_2.bias[...])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="x must have shape"):
        merge_patches(jnp.zeros((4, 4)))
    with pytest.raises(ValueError, match="kernel"):
        merge_patches(jnp.zeros((4, 4, 2)), (2,))
    with pytest.raises(ValueError, match="windows"):
        Projector(ProjectorConfig(4, 6), rngs=nnx.Rngs(0))(jnp.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="vision_dim"):
        ProjectorConfig(0, 6)
    with pytest.raises(ValueError, match="grid"):
        merge_gather_index((0, 2), 0)
