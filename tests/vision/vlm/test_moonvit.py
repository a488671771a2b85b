"""MoonViT: PyTorch-bicubic position interpolation against a numpy port, the 2-D RoPE
relative-position property, packed forward = each image alone, padded-batch mode and
bad input."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.nn import apply_rope_2d
from vision.vlm.moonvit import (
    MoonViT,
    MoonViTConfig,
    first_fit,
    interpolate_pos_embed,
    pack_images,
    patchify,
    pos_embed_at,
)


def torch_bicubic_numpy(table, out_h, out_w, A=-0.75):
    """A numpy port of PyTorch's ``upsample_bicubic2d`` (``align_corners=False``), pixel
    by pixel: source index ``scale·(dst + ½) − ½`` (unclamped), ``floor`` and fraction,
    Keys' coefficients, the 4×4 taps read with clamped indices."""
    in_h, in_w, _ = table.shape

    def cc1(x):
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def cc2(x):
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    def coeffs(t):
        return [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)]

    out = np.zeros((out_h, out_w, table.shape[2]))
    sh, sw = in_h / out_h, in_w / out_w
    for y in range(out_h):
        ry = sh * (y + 0.5) - 0.5
        iy = math.floor(ry)
        cy = coeffs(ry - iy)
        for x in range(out_w):
            rx = sw * (x + 0.5) - 0.5
            ix = math.floor(rx)
            cx = coeffs(rx - ix)
            acc = 0.0
            for i in range(4):
                yy = min(max(iy - 1 + i, 0), in_h - 1)
                for j in range(4):
                    xx = min(max(ix - 1 + j, 0), in_w - 1)
                    acc = acc + cy[i] * cx[j] * table[yy, xx]
            out[y, x] = acc
    return out


@pytest.fixture(scope="module")
def table():
    return np.random.default_rng(0).normal(size=(6, 5, 3))


def test_interpolation_matches_pytorch_bicubic(table):
    interp = jax.jit(interpolate_pos_embed, static_argnums=1)
    for size in [(3, 2), (9, 12), (1, 7), (6, 11)]:
        got = np.asarray(interp(jnp.asarray(table, jnp.float32), size))
        np.testing.assert_allclose(got, torch_bicubic_numpy(table, *size), atol=2e-5)


def test_interpolation_identity_and_constant(table):
    t = jnp.asarray(table, jnp.float32)
    assert interpolate_pos_embed(t, (6, 5)) is t
    const = jax.jit(interpolate_pos_embed, static_argnums=1)(jnp.full((4, 4, 2), 3.0), (7, 2))
    np.testing.assert_allclose(np.asarray(const), 3.0, rtol=1e-6)  # weights sum to one


def test_per_token_positions_match_the_grid(table):
    t = jnp.asarray(table, jnp.float32)
    grid = torch_bicubic_numpy(table, 4, 7)
    r, c = jnp.array([0, 3, 2]), jnp.array([6, 0, 4])
    got = jax.jit(pos_embed_at)(t, r, c, jnp.full(3, 4), jnp.full(3, 7))
    np.testing.assert_allclose(np.asarray(got), grid[np.asarray(r), np.asarray(c)], atol=1e-6)


def test_rope_2d_score_depends_only_on_offset():
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(rq, cq, rk, ck):
        qr = apply_rope_2d(q, jnp.array([rq]), jnp.array([cq]))
        kr = apply_rope_2d(k, jnp.array([rk]), jnp.array([ck]))
        return float(jnp.sum(qr * kr))

    base = score(5, 2, 3, 7)
    for shift in [(1, 0), (0, 4), (-2, 3), (7, -1)]:
        assert score(5 + shift[0], 2 + shift[1], 3 + shift[0], 7 + shift[1]) == pytest.approx(
            base, rel=1e-4, abs=1e-4)
    # a different offset in either axis changes the score
    assert abs(score(5, 2, 3, 8) - base) > 1e-3 and abs(score(6, 2, 3, 7) - base) > 1e-3


CFG = MoonViTConfig(patch_size=4, d_model=16, num_layers=2, num_heads=2, mlp_dim=32,
                    pos_grid=(3, 3))


@pytest.fixture(scope="module")
def vit():
    return MoonViT(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(4)
    return [rng.uniform(size=s) for s in [(8, 16, 3), (12, 4, 3), (4, 4, 3), (8, 8, 3)]]


def test_packed_forward_equals_each_image_alone(vit, images):
    packed, info = pack_images(images, 4, max_tokens=12, num_rows=2)
    assert sum(info.used) == 16 and max(info.used) <= 12
    forward = nnx.jit(lambda m, p: m(p))
    out = np.asarray(forward(vit, packed)).reshape(-1, CFG.d_model)
    for i, im in enumerate(images):
        h, w = info.grids[i]
        alone, _ = pack_images([im], 4, max_tokens=12)  # alone in its row (rest padding)
        ref = np.asarray(forward(vit, alone))[0, :h * w]
        np.testing.assert_allclose(out[info.offsets[i]:info.offsets[i] + h * w], ref,
                                   rtol=2e-4, atol=2e-5)
    # padded-batch mode: one image per row, padded to the longest
    padded, pinfo = pack_images(images, 4, max_tokens=8, num_rows=4, one_per_row=True)
    pout = np.asarray(forward(vit, padded)).reshape(-1, CFG.d_model)
    for i in range(len(images)):
        n = info.grids[i][0] * info.grids[i][1]
        np.testing.assert_allclose(pout[pinfo.offsets[i]:pinfo.offsets[i] + n],
                                   out[info.offsets[i]:info.offsets[i] + n], rtol=2e-4, atol=2e-5)
    assert pinfo.efficiency < info.efficiency


def test_patchify_is_channel_first():
    im = np.random.default_rng(5).uniform(size=(8, 12, 3)).astype(np.float32)
    p = patchify(im, 4)
    assert p.shape == (2, 3, 48)
    np.testing.assert_array_equal(p[1, 2].reshape(3, 4, 4), im[4:8, 8:12].transpose(2, 0, 1))


def test_bad_input_names_the_argument(vit, images):
    with pytest.raises(ValueError, match=r"images\[1\] of 3×8 pixels is smaller than one"):
        pack_images([images[0], np.zeros((3, 8, 3))], 4, 16)
    with pytest.raises(ValueError, match="max_tokens=6"):
        pack_images(images, 4, max_tokens=6, num_rows=4)
    with pytest.raises(ValueError, match="num_rows=1"):
        pack_images(images, 4, max_tokens=12, num_rows=1)
    with pytest.raises(ValueError, match="size"):
        interpolate_pos_embed(jnp.zeros((3, 3, 2)), (0, 2))
    with pytest.raises(ValueError, match="table"):
        interpolate_pos_embed(jnp.zeros((3, 3)), (2, 2))
    packed, _ = pack_images(images[:1], 4, 8)
    with pytest.raises(ValueError, match="packed.patches"):
        vit(packed._replace(patches=jnp.zeros((1, 8, 5))))
    with pytest.raises(ValueError, match="num_heads"):
        MoonViTConfig(d_model=24, num_heads=4)
    with pytest.raises(ValueError, match="image must have shape"):
        patchify(np.zeros((8, 8)), 4)



def test_first_fit_rows_hold_their_sequences():
    rng = np.random.default_rng(6)
    sizes = rng.integers(1, 10, size=30).tolist()
    row_of, start, used = first_fit(sizes, 10)
    for r in range(len(used)):
        spans = sorted((start[i], start[i] + sizes[i]) for i in range(30) if row_of[i] == r)
        assert spans[0][0] == 0 and spans[-1][1] == used[r] <= 10
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # contiguous
    # first fit decreasing never uses more than 11/9 · OPT + 1 rows (Dósa 2007)
    assert len(used) <= 11 / 9 * np.ceil(sum(sizes) / 10) + 1
